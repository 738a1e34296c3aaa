#!/usr/bin/env bash
# Runs the broker-level Python tests: the devicebound mosquitto plugin
# (test_broker_plugin.py; test_broker_registry.py for the hub's registry as its
# identity source) and the official Azure IoT Python device SDK against
# it over TLS (test_stock_sdk.py).
#
#   python/tests/run_broker_tests.sh [pytest args...]
#
# Builds the plugin into $DEVICEBOUND_BUILD_DIR (default build/) if needed,
# makes a virtualenv in $DEVICEBOUND_VENV (default <build dir>/venv-broker-tests)
# with requirements-broker.txt from PyPI, and runs pytest. Needs mosquitto,
# mosquitto-dev, openssl, python3-venv.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${DEVICEBOUND_BUILD_DIR:-$root/build}
[[ "$build" == /* ]] || build="$root/$build"
venv=${DEVICEBOUND_VENV:-$build/venv-broker-tests}

if [[ -z "${DEVICEBOUND_BROKER_PLUGIN:-}" ]]; then
  if [[ ! -f "$build/CMakeCache.txt" ]]; then
    cmake -S "$root" -B "$build" -G Ninja
  fi
  cmake --build "$build" --target devicebound_mosquitto_plugin -j "${DEVICEBOUND_JOBS:-2}"
  export DEVICEBOUND_BROKER_PLUGIN="$build/broker/devicebound_mosquitto_plugin.so"
fi

# The stock-SDK-with-daemon test uses this daemon; it is skipped when the file
# is missing, unless DEVICEBOUND_REQUIRE_HUB=1 (then it fails). With
# DEVICEBOUND_REQUIRE_ALL=1 (scripts/test.sh) every test that would skip for a
# missing part (the plugin, mosquitto, the daemon, azure-iot-device) fails instead.
export DEVICEBOUND_HUB_EXE=${DEVICEBOUND_HUB_EXE:-$build/apps/devicebound-hub}

stamp="$venv/.requirements-broker.txt"
if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$here/requirements-broker.txt" "$stamp"; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements-broker.txt"
  cp "$here/requirements-broker.txt" "$stamp"
fi

cd "$here"
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@" test_broker_plugin.py test_broker_registry.py test_stock_sdk.py
