#!/usr/bin/env bash
# Sets up everything and runs every test:
#   (a) release  Release build in build/, all ctests
#   (b) asan     AddressSanitizer + UBSan build (clang) in build-asan/ (no benchmarks,
#                no packaging tests and none of the tests that only run the
#                compiler: those are proven in (a)), all other ctests
#   (c) fuzz     clang libFuzzer build in build-fuzz/, each fuzzer run for
#                10 s (at most 1,000,000 inputs) from a copy of its corpus (only if fuzz/*_fuzz.cpp exist)
#   (d) python   pip install . (and the sdist) into fresh venvs, pytest python/tests
#   (e) broker   the mosquitto plugin and a stock Azure IoT Python device SDK
#   (f) node     npm ci + node --test in node/, npm pack -> install elsewhere
#   (g) sdk      the official Azure IoT SDKs (npm, PyPI; pinned in tests/sdk/)
#                against devicebound-hub: scripts/test_sdk.sh
#   (h) cluster  the scale-out parts on real engines started by the tests
#                (ctest labels postgres, rabbitmq, cluster: PostgreSQL 15,
#                RabbitMQ 3.10; docs/scale-out.md), on the Release build of (a),
#                then the official Node SDKs against a 3-node RabbitMQ cluster,
#                haproxy, PostgreSQL and two hub instances (test_sdk.sh cluster).
#                Skipped only with --quick, and then reported as skipped.
# Usage: scripts/test.sh [--quick]
# Build directories default to build/, build-asan/ and build-fuzz/; set
# DEVICEBOUND_BUILD_PREFIX=<dir> to use <dir>, <dir>-asan and <dir>-fuzz instead.
# DEVICEBOUND_REQUIRE_ALL=1 (exported here unless set): CI installs every part the
# tests use (mosquitto, devicebound-hub, the broker plugin, the stock device SDK,
# typescript), so a C++, Python or Node test that would skip itself for a missing
# part fails instead, naming the part.
# Every C and C++ compile (ours, pip's and cmake-js's builds) goes through ccache
# when it is installed (setup.sh installs it), with the checkout as its base
# directory, so a later run -- from any clone -- reuses what an earlier one built;
# DEVICEBOUND_CCACHE=0 turns that off.
# Every stage runs even if an earlier one failed; the last line is a summary and
# the exit status is non-zero if any stage failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)

quick=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -h | --help)
      sed -n '2,/^set -uo/p' "$0" | sed '$d'
      exit 0
      ;;
    *)
      echo "test.sh: unknown argument '$arg' (usage: scripts/test.sh [--quick])" >&2
      exit 2
      ;;
  esac
done

jobs=2
export DEVICEBOUND_REQUIRE_ALL=${DEVICEBOUND_REQUIRE_ALL:-1}
build=${DEVICEBOUND_BUILD_PREFIX:-build}
[[ "$build" == /* ]] || build="$root/$build"
ctest_args=(--output-on-failure -j "$jobs" --timeout 600 --no-tests=error)

passed=()
failed=()
skipped=()

banner() { printf '\n==================== %s ====================\n' "$*"; }

# run_stage <name> <function>: runs the function in a subshell with `set -e`,
# times it and records the outcome. Exit status 77 means "skipped".
run_stage() {
  local name=$1 fn=$2 start rc
  banner "$name"
  start=$SECONDS
  (
    set -euo pipefail
    "$fn"
  )
  rc=$?
  if ((rc == 0)); then
    passed+=("$name")
    echo "--- $name: PASS ($((SECONDS - start))s)"
  elif ((rc == 77)); then
    skipped+=("$name")
    echo "--- $name: SKIP"
  else
    failed+=("$name")
    echo "--- $name: FAIL (exit $rc, $((SECONDS - start))s)"
  fi
}

stage_release() {
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
  cmake --build "$build" -j "$jobs"
  ctest --test-dir "$build" "${ctest_args[@]}" -LE "$cluster_labels"
}

# The tests that start PostgreSQL or RabbitMQ: their own stage (h).
cluster_labels='postgres|rabbitmq|cluster'

stage_asan() {
  # Debug keeps assert() live next to the sanitizers. clang, not the Release
  # build's g++: a second compiler's warnings (-Werror) and sanitizers, and it
  # builds this tree at -O0 in well under half g++'s time (68 s against 160 s
  # for the heaviest test file).
  if [[ -f "$build-asan/CMakeCache.txt" ]] &&
    ! grep -q '^CMAKE_CXX_COMPILER:[A-Z]*=.*clang++' "$build-asan/CMakeCache.txt"; then
    rm -rf "$build-asan"  # configured with another compiler by an older test.sh
  fi
  cmake -S . -B "$build-asan" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
    -DDEVICEBOUND_SANITIZE=address,undefined -DDEVICEBOUND_BUILD_BENCH=OFF
  cmake --build "$build-asan" -j "$jobs"
  ASAN_OPTIONS=detect_leaks=1:detect_stack_use_after_return=1:strict_init_order=1 \
    UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir "$build-asan" "${ctest_args[@]}" \
    -LE 'packaging|compile_fail|compile_pass|include_boundary'
}

stage_fuzz() {
  local sources=(fuzz/*_fuzz.cpp)
  if [[ ! -e "${sources[0]}" ]]; then
    echo "no fuzz/*_fuzz.cpp yet"
    return 77
  fi
  local targets=() source
  for source in "${sources[@]}"; do
    targets+=("$(basename "$source" .cpp)")
  done

  cmake -S . -B "$build-fuzz" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_COMPILER=clang++ -DDEVICEBOUND_LIBFUZZER=ON -DDEVICEBOUND_BUILD_FUZZ=ON \
    -DDEVICEBOUND_BUILD_TESTS=OFF -DDEVICEBOUND_BUILD_EXAMPLES=OFF \
    -DDEVICEBOUND_BUILD_BENCH=OFF -DDEVICEBOUND_BUILD_TOOLS=OFF -DDEVICEBOUND_INSTALL=OFF
  cmake --build "$build-fuzz" -j "$jobs" --target "${targets[@]}"

  local work target corpus fuzz_failed=0
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  for target in "${targets[@]}"; do
    echo "--- fuzzing $target"
    corpus="$work/$target/corpus"
    mkdir -p "$corpus" "$build-fuzz/artifacts/$target"
    # libFuzzer writes new inputs into the corpus directory: give it a copy.
    if [[ -d "fuzz/corpus/$target" ]]; then
      cp -R "fuzz/corpus/$target/." "$corpus/"
    fi
    local extra=()
    if [[ -f "fuzz/$target.dict" ]]; then
      extra+=("-dict=fuzz/$target.dict")
    fi
    if ! "$build-fuzz/fuzz/$target" -runs=1000000 -max_total_time=10 -timeout=30 \
      -print_final_stats=1 "-artifact_prefix=$build-fuzz/artifacts/$target/" "${extra[@]}" \
      "$corpus"; then
      echo "fuzz: $target FAILED; crashing input under $build-fuzz/artifacts/$target/"
      fuzz_failed=1
    fi
  done
  return "$fuzz_failed"
}

stage_python() {
  # pip install . into a fresh venv (and the sdist into another), then pytest
  # python/tests, MQTT tests against the daemon built in (a).
  DEVICEBOUND_HUB_EXE="$build/apps/devicebound-hub" DEVICEBOUND_PY_SDIST=1 \
    CMAKE_BUILD_PARALLEL_LEVEL=$jobs ./scripts/test_python.sh
}

stage_broker() {
  # The mosquitto plugin, and the official Azure IoT Python device SDK over TLS
  # receiving from the daemon.
  DEVICEBOUND_REQUIRE_HUB=1 DEVICEBOUND_BUILD_DIR="$build" \
    DEVICEBOUND_HUB_EXE="$build/apps/devicebound-hub" ./python/tests/run_broker_tests.sh
}

stage_node() {
  # npm ci (cmake-js builds the addon), node --test, then npm pack and install
  # the tarball into an empty project elsewhere.
  DEVICEBOUND_HUB="$build/apps/devicebound-hub" \
    DEVICEBOUND_BROKER_PLUGIN="$build/broker/devicebound_mosquitto_plugin.so" \
    CMAKE_BUILD_PARALLEL_LEVEL=$jobs ./scripts/test_node.sh
}

stage_sdk() {
  # The official Azure SDKs, unchanged: Node azure-iothub (Client, Registry) and
  # device SDKs (AMQP, MQTT, HTTPS), Python azure-iot-hub (registry, HTTPS
  # feedback, purge, AMQP sends), each in a private network namespace (IoT Hub's
  # fixed ports 443, 5671, 8883).
  DEVICEBOUND_HUB="$build/apps/devicebound-hub" \
    DEVICEBOUND_BROKER_PLUGIN="$build/broker/devicebound_mosquitto_plugin.so" \
    DEVICEBOUND_SDK_VENV="$build/venv-sdk-tests" ./scripts/test_sdk.sh
}

stage_cluster() {
  if ((quick)); then
    echo "cluster: skipped because --quick was given"
    return 77
  fi
  # The Release build of stage (a); builds it if (a) did not run to the end.
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
  cmake --build "$build" -j "$jobs"
  local status=0
  ctest --test-dir "$build" "${ctest_args[@]}" -L "$cluster_labels" || status=1
  # the official Node SDKs against two hub instances, a 3-node RabbitMQ cluster
  # behind haproxy and PostgreSQL: broker and hub failover (tests/sdk/node/cluster.test.js)
  DEVICEBOUND_HUB="$build/apps/devicebound-hub" \
    DEVICEBOUND_BROKER_PLUGIN="$build/broker/devicebound_mosquitto_plugin.so" \
    DEVICEBOUND_SDK_VENV="$build/venv-sdk-tests" ./scripts/test_sdk.sh cluster || status=1
  return $status
}

total_start=$SECONDS
if ! ./scripts/setup.sh; then
  echo "test.sh: FAILED: setup.sh could not install the build dependencies"
  exit 1
fi
if [[ "${DEVICEBOUND_CCACHE:-1}" != 0 ]] && command -v ccache >/dev/null; then
  # CMake (3.17+) takes these as every project's default launchers.
  export CMAKE_CXX_COMPILER_LAUNCHER=ccache CMAKE_C_COMPILER_LAUNCHER=ccache
  export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$root} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
  export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-20G}
fi

run_stage release stage_release
run_stage asan stage_asan
run_stage fuzz stage_fuzz
run_stage python stage_python
run_stage broker stage_broker
run_stage node stage_node
run_stage sdk stage_sdk
run_stage cluster stage_cluster

join() { local IFS=,; echo "${*:-none}"; }
echo
echo "test.sh: $([[ ${#failed[@]} -eq 0 ]] && echo OK || echo FAILED) in $((SECONDS - total_start))s -" \
  "passed: $(join "${passed[@]}"); failed: $(join "${failed[@]}"); skipped: $(join "${skipped[@]}")"
echo "stages: ${#passed[@]} passed, ${#failed[@]} failed, ${#skipped[@]} skipped"
((${#failed[@]} == 0))
