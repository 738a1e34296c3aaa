#!/usr/bin/env bash
# A devicebound cluster on this machine, loopback only (docs/scale-out.md):
#
#   scripts/cluster-demo.sh
#
# starts PostgreSQL, 3 RabbitMQ nodes (clustered, quorum MQTT sessions), haproxy,
# 2 `devicebound-hub --cluster --broker rabbitmq` instances, Node SDK devices
# (azure-iot-device-mqtt through haproxy) and a back end (azure-iothub over the
# hubs' AMQP doors) sending C2D messages; then kills (kill -9) hub a and the
# RabbitMQ node the devices are on, each under load, and prints what happened:
# sent, acknowledged, received, lost, duplicates, feedback, takeover times.
# Everything it starts is stopped by PID at the end, on Ctrl-C and on error
# (tests/sdk/node/cluster_demo.js). About a minute.
#
# Needs: the daemon ($DEVICEBOUND_HUB, else <build>/apps/devicebound-hub, built
# with libpq and librabbitmq), rabbitmq-server, haproxy, PostgreSQL 15
# (DEVICEBOUND_PG_BINDIR), psql, openssl, node/npm (npm ci in tests/sdk if needed).
# DEVICEBOUND_DEMO_DEVICES, DEVICEBOUND_DEMO_PARTITIONS, DEVICEBOUND_DEMO_LEASE_TTL,
# DEVICEBOUND_SDK_KEEP=1 (keep the logs): see cluster_demo.js.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sdk="$root/tests/sdk"
build=${DEVICEBOUND_BUILD_PREFIX:-build}
[[ "$build" == /* ]] || build="$root/$build"
export DEVICEBOUND_HUB=${DEVICEBOUND_HUB:-$build/apps/devicebound-hub}
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

work=$(mktemp -d "${TMPDIR:-/tmp}/devicebound-cluster-demo-XXXXXX")
demo=0
finish() {
  local rc=$?
  if ((demo > 0)) && kill -0 "$demo" 2>/dev/null; then
    kill -TERM "$demo" 2>/dev/null || true # it stops what it started, by PID
    wait "$demo" 2>/dev/null || true
  fi
  # last resort: what it started and did not stop (it died), by PID
  if [[ -f "$work/pids" ]]; then
    local pid name comm want
    while read -r pid name; do
      case "$name" in
        hub-*) want=devicebound-hub ;;
        rabbit*-beam) want=beam.smp ;;
        rabbit*) want=sh ;;
        *) want=$name ;;
      esac
      comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
      if [[ "$comm" == "$want" ]]; then # still ours (not a PID reused meanwhile)
        echo "cluster-demo: stopping $name (pid $pid), left running"
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done <"$work/pids"
  fi
  if [[ "${DEVICEBOUND_SDK_KEEP:-}" == 1 ]]; then echo "cluster-demo: kept $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

bash "$root/tests/support/make_test_certs.sh" "$work/certs" >/dev/null 2>&1 ||
  { echo "cluster-demo: could not make the certificates (openssl?)" >&2; exit 1; }
if [[ ! -d "$sdk/node_modules/azure-iothub" ]]; then
  echo "cluster-demo: npm ci in tests/sdk"
  (cd "$sdk" && npm ci --no-audit --no-fund >/dev/null)
fi
# azure-iothub has no CA option: the CA must be in NODE_EXTRA_CA_CERTS before node starts.
# TMPDIR: the stack's directory (logs, data) inside $work, removed with it; PostgreSQL's
# user must be able to enter it.
chmod 755 "$work"
TMPDIR="$work" DEVICEBOUND_SDK_CERTS="$work/certs" NODE_EXTRA_CA_CERTS="$work/certs/ca.crt" \
  DEVICEBOUND_CLUSTER_PIDFILE="$work/pids" \
  node "$sdk/node/cluster_demo.js" &
demo=$!
set +e
wait "$demo"
rc=$?
demo=0
exit "$rc"
