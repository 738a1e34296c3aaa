#!/usr/bin/env bash
# Sets up everything, builds the quickstart example and runs it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

./scripts/setup.sh

if [[ ! -f examples/quickstart.cpp ]]; then
  echo "demo: examples/quickstart.cpp does not exist yet" >&2
  exit 1
fi

# Same configuration as stage (a) of scripts/test.sh, so the two share build/
# (or $DEVICEBOUND_BUILD_PREFIX, as in test.sh).
build=${DEVICEBOUND_BUILD_PREFIX:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" --target quickstart -j2

echo
echo "==> $build/examples/quickstart"
exec "$build/examples/quickstart" "$@"
