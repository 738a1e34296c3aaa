#!/usr/bin/env bash
# The official Azure IoT SDKs, unchanged, against devicebound-hub (tests/sdk/):
#
#   scripts/test_sdk.sh [node|python|up|cluster]...     (default: node python up)
#
#   node    npm ci in tests/sdk (azure-iothub, azure-iot-device(-amqp/-mqtt/-http),
#           pinned in its package-lock.json), then node --test tests/sdk/node/*.test.js
#           but cluster.test.js
#           inside a private network namespace (`unshare -n`, loopback up):
#           Node's HTTPS clients (Registry, azure-iot-device-http) always use
#           port 443, so the HTTPS/registry tests run the hub on 443, 5671, 8883.
#   python  a venv with tests/sdk/requirements.txt (azure-iot-hub + uamqp,
#           azure-iot-device), then pytest tests/sdk/python inside a private
#           network namespace (`unshare -n`, loopback up): uamqp always uses
#           port 5671 and the Python device SDK 8883.
#   up      `devicebound up` (tests/sdk/up/): node --test tests/sdk/up/up.test.js on
#           free ports (Node service + device SDKs, restart, failure modes), then
#           pytest tests/sdk/up in a private network namespace (the Python device
#           SDK on 8883). Needs $DEVICEBOUND_CLI, else <build>/apps/devicebound
#           (it finds the hub and the plugin itself), and the node part's npm ci.
#   cluster node --test tests/sdk/node/cluster.test.js on free loopback ports (no
#           namespace; npm ci first if tests/sdk has no node_modules): PostgreSQL,
#           3 RabbitMQ nodes, haproxy and 2 `devicebound-hub --cluster --broker
#           rabbitmq`; hub and broker failover with the Node SDKs, ledgers printed.
#           Not in the default list (scripts/test.sh runs it as a stage of its own).
#           Needs rabbitmq-server, haproxy, PostgreSQL 15 (or DEVICEBOUND_PG_BINDIR), psql.
#
# Needs the daemon and the broker plugin: $DEVICEBOUND_HUB and
# $DEVICEBOUND_BROKER_PLUGIN, else <build>/apps/devicebound-hub and
# <build>/broker/devicebound_mosquitto_plugin.so (<build> is
# $DEVICEBOUND_BUILD_PREFIX or build/, as in scripts/test.sh); mosquitto,
# openssl, node/npm, python3 (+ venv), unshare and ip (util-linux, iproute2).
# One CA and a server certificate for localhost/127.0.0.1 are made per run
# (tests/support/make_test_certs.sh): Node's service SDK has no CA option, so
# NODE_EXTRA_CA_CERTS must name the CA before node starts.
#
# With DEVICEBOUND_REQUIRE_ALL=1 (scripts/test.sh sets it) a missing part
# (daemon, plugin, mosquitto, a namespace, the daemon's --https-listen) fails
# the tests instead of skipping.
# DEVICEBOUND_SDK_VENV names the venv to (re)use (default <build>/venv-sdk-tests).
# Exit status: non-zero if any step or test failed.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sdk="$root/tests/sdk"
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

build=${DEVICEBOUND_BUILD_PREFIX:-build}
[[ "$build" == /* ]] || build="$root/$build"
export DEVICEBOUND_HUB=${DEVICEBOUND_HUB:-$build/apps/devicebound-hub}
export DEVICEBOUND_BROKER_PLUGIN=${DEVICEBOUND_BROKER_PLUGIN:-$build/broker/devicebound_mosquitto_plugin.so}
venv=${DEVICEBOUND_SDK_VENV:-$build/venv-sdk-tests}

step() { printf '\n--- test_sdk: %s\n' "$*"; }

parts=("$@")
((${#parts[@]})) || parts=(node python up)

work=$(mktemp -d "${TMPDIR:-/tmp}/devicebound-sdk-XXXXXX")
trap 'rm -rf "$work"' EXIT
step "certificates for localhost/127.0.0.1 in $work/certs"
bash "$root/tests/support/make_test_certs.sh" "$work/certs" >/dev/null 2>&1 ||
  { echo "test_sdk: could not make the test certificates (openssl?)" >&2; exit 1; }
export DEVICEBOUND_SDK_CERTS="$work/certs"

failed=()

run_node() {
  step "npm ci in tests/sdk"
  (cd "$sdk" && npm ci --no-audit --no-fund) || return 1
  local node_test=(node --test --test-concurrency=1 --test-timeout=300000)
  # every file but the cluster's (the `cluster` part runs it)
  local files=() f
  for f in "$sdk"/node/*.test.js; do
    [[ "$(basename "$f")" == cluster.test.js ]] || files+=("node/$(basename "$f")")
  done
  if unshare -n true 2>/dev/null && command -v ip >/dev/null; then
    step "node --test tests/sdk/node in a private network namespace"
    # The HTTPS and registry tests need IoT Hub's own ports (443, 5671, 8883):
    # Node's HTTPS clients take no port (SPEC 12.10). The other tests use free ports.
    (cd "$sdk" && NODE_EXTRA_CA_CERTS="$DEVICEBOUND_SDK_CERTS/ca.crt" DEVICEBOUND_SDK_NETNS=1 \
      unshare -n bash -c 'ip link set lo up && exec "$@"' bash "${node_test[@]}" "${files[@]}")
  else
    step "node --test tests/sdk/node: no private network namespace here (unshare -n failed)"
    (cd "$sdk" && NODE_EXTRA_CA_CERTS="$DEVICEBOUND_SDK_CERTS/ca.crt" "${node_test[@]}" "${files[@]}")
  fi
}

# The cluster (tests/sdk/node/cluster.test.js): free loopback ports, no namespace.
run_cluster() {
  if [[ ! -d "$sdk/node_modules/azure-iothub" ]]; then
    step "npm ci in tests/sdk (for cluster)"
    (cd "$sdk" && npm ci --no-audit --no-fund) || return 1
  fi
  step "node --test tests/sdk/node/cluster.test.js"
  (cd "$sdk" && NODE_EXTRA_CA_CERTS="$DEVICEBOUND_SDK_CERTS/ca.crt" \
    node --test --test-concurrency=1 --test-timeout=600000 node/cluster.test.js)
}

run_python() {
  local stamp="$venv/.requirements.txt"
  if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$sdk/requirements.txt" "$stamp"; then
    step "venv $venv with tests/sdk/requirements.txt"
    rm -rf "$venv"
    python3 -m venv "$venv" || return 1
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$sdk/requirements.txt" || return 1
    cp "$sdk/requirements.txt" "$stamp"
  fi
  local pytest=("$venv/bin/python" -m pytest -p no:cacheprovider -q -rs "$sdk/python")
  local rc=0
  if unshare -n true 2>/dev/null && command -v ip >/dev/null; then
    step "pytest tests/sdk/python in a private network namespace"
    # Everything -- mosquitto, devicebound-hub, the SDKs -- runs in there.
    DEVICEBOUND_SDK_NETNS=1 unshare -n bash -c 'ip link set lo up && exec "$@"' bash "${pytest[@]}" || rc=$?
  else
    step "pytest tests/sdk/python: no private network namespace here (unshare -n failed)"
    "${pytest[@]}" || rc=$?
  fi
  if ((rc == 5)); then
    echo "test_sdk: FAILED: pytest collected no tests" >&2
    return 1
  fi
  return "$rc"
}

# `devicebound up` (issue 13): it makes its own CA and state, so it needs none of the above.
run_up() {
  export DEVICEBOUND_CLI=${DEVICEBOUND_CLI:-$build/apps/devicebound}
  if [[ ! -d "$sdk/node_modules/azure-iothub" ]]; then
    step "npm ci in tests/sdk (for up)"
    (cd "$sdk" && npm ci --no-audit --no-fund) || return 1
  fi
  local rc=0
  step "node --test tests/sdk/up"
  (cd "$sdk" && node --test --test-concurrency=1 --test-timeout=300000 up/up.test.js) || rc=1
  if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$sdk/requirements.txt" "$venv/.requirements.txt"; then
    step "venv $venv with tests/sdk/requirements.txt (for up)"
    rm -rf "$venv"
    python3 -m venv "$venv" || return 1
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$sdk/requirements.txt" || return 1
    cp "$sdk/requirements.txt" "$venv/.requirements.txt"
  fi
  local pytest=("$venv/bin/python" -m pytest -p no:cacheprovider -q -rs "$sdk/up")
  if unshare -n true 2>/dev/null && command -v ip >/dev/null; then
    step "pytest tests/sdk/up in a private network namespace"
    DEVICEBOUND_SDK_NETNS=1 unshare -n bash -c 'ip link set lo up && exec "$@"' bash "${pytest[@]}" || rc=1
  else
    step "pytest tests/sdk/up: no private network namespace here (unshare -n failed)"
    "${pytest[@]}" || rc=1
  fi
  return "$rc"
}

for part in "${parts[@]}"; do
  case "$part" in
    node) run_node || failed+=(node) ;;
    python) run_python || failed+=(python) ;;
    up) run_up || failed+=(up) ;;
    cluster) run_cluster || failed+=(cluster) ;;
    *) echo "test_sdk: unknown part '$part' (node, python, up, cluster)" >&2; exit 2 ;;
  esac
done

if ((${#failed[@]})); then
  step "FAILED: ${failed[*]}"
  exit 1
fi
step "OK"
