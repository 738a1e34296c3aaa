#!/usr/bin/env bash
# Compile cost of the public headers, measured in one run (issue 10):
#   every  - a TU that includes every public header
#   clients - a TU with device_client.hpp + service_client.hpp + transport/mqtt.hpp
# Each TU has an empty main and is compiled with `g++ -std=c++20 -O2 -c`; wall
# CPU time (user + system: wall time on a shared machine measures the
# neighbours) and peak memory come from GNU time. Pass extra include roots to compare
# trees in the same run (e.g. an older checkout): the first is the baseline.
#   bench/compile_cost.sh [ROOT ...]     (default: this checkout)
# Absolute times swing by a third between runs on a loaded machine: compare the
# ratios printed by one run, not figures from different runs.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
roots=("$@")
((${#roots[@]})) || roots=("$here")
reps=${DEVICEBOUND_COMPILE_REPS:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cxx=${CXX:-g++}

measure() { # measure <root> <tu> -> "seconds peak_kib" (best of $reps)
  local best_s="" best_k="" s k u sy i
  for ((i = 0; i < reps; i++)); do
    /usr/bin/time -f '%U %S %M' -o "$work/t" \
      "$cxx" -std=c++20 -O2 -c -I"$1/include" "$2" -o "$work/o.o"
    read -r u sy k <"$work/t"
    s=$(awk -v u="$u" -v sy="$sy" 'BEGIN{printf "%.2f", u + sy}')
    if [[ -z "$best_s" ]] || awk "BEGIN{exit !($s < $best_s)}"; then best_s=$s; fi
    if [[ -z "$best_k" ]] || ((k < best_k)); then best_k=$k; fi
  done
  echo "$best_s $best_k"
}

printf '%-40s %-8s %9s %9s\n' root tu cpu_s peak_MB
declare -A sec
for root in "${roots[@]}"; do
  every="$work/every_$(echo "$root" | tr / _).cpp"
  clients="$work/clients_$(echo "$root" | tr / _).cpp"
  (cd "$root/include" && find devicebound -name '*.hpp' -not -path '*/detail/*' | sort |
    sed 's/.*/#include <&>/') >"$every"
  echo 'int main() {}' >>"$every"
  printf '%s\n' '#include <devicebound/device_client.hpp>' \
    '#include <devicebound/service_client.hpp>' '#include <devicebound/transport/mqtt.hpp>' \
    'int main() {}' >"$clients"
  for tu in every clients; do
    file=$every; [[ $tu == clients ]] && file=$clients
    read -r s k < <(measure "$root" "$file")
    sec["$root/$tu"]=$s
    printf '%-40s %-8s %9s %9d\n' "$root" "$tu" "$s" "$((k / 1024))"
  done
  awk -v c="${sec[$root/clients]}" -v e="${sec[$root/every]}" \
    'BEGIN{printf "%-40s clients/every = %.2f\n", "", c / e}'
done
if ((${#roots[@]} > 1)); then
  base=${roots[0]}
  for root in "${roots[@]:1}"; do
    awk -v a="${sec[$root/every]}" -v b="${sec[$base/every]}" -v r="$root" \
      'BEGIN{printf "every-header TU: %s / baseline = %.2f\n", r, a / b}'
  done
fi
