#!/usr/bin/env bash
# The Node package (node/), end to end:
#   1. npm ci in node/: cmake-js builds the addon from the top-level CMakeLists.txt;
#   2. node --test node/test/ (in-process and, when the MQTT transport, mosquitto
#      and devicebound-hub are there, over MQTT);
#   3. the packaging check: npm pack, install the tarball into an empty project
#      in a temporary directory (it builds from the C++ sources it carries),
#      require it there and do one send -> receive -> complete.
# Only the npm registry is needed (cmake-js, node-addon-api, node-api-headers,
# and the test-only typescript). Builds with one job unless CMAKE_BUILD_PARALLEL_LEVEL
# says otherwise. Exits non-zero on the first failure.
#
# The MQTT tests need the devicebound-hub daemon: $DEVICEBOUND_HUB, else
# <build>/apps/devicebound-hub (<build> is $DEVICEBOUND_BUILD_PREFIX or build/,
# as in scripts/test.sh), else it is built here in build-node-hub/ when the
# C++ dependencies are installed (scripts/setup.sh). Without it, mosquitto or
# the broker plugin the MQTT suites skip, or fail with DEVICEBOUND_REQUIRE_ALL=1
# (scripts/test.sh sets it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-1}
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

step() { printf '\n--- test_node: %s\n' "$*"; }

for tool in node npm cmake; do
  command -v "$tool" >/dev/null || { echo "test_node: $tool is not installed" >&2; exit 1; }
done

# --- the daemon for the MQTT tests ------------------------------------------------------------
build=${DEVICEBOUND_BUILD_PREFIX:-build}
[[ "$build" == /* ]] || build="$root/$build"
if [[ -z "${DEVICEBOUND_HUB:-}" ]]; then
  if [[ -x "$build/apps/devicebound-hub" ]]; then
    DEVICEBOUND_HUB="$build/apps/devicebound-hub"
  elif [[ -f apps/CMakeLists.txt ]]; then
    step "building devicebound-hub for the MQTT tests (build-node-hub/)"
    if cmake -S . -B build-node-hub -DCMAKE_BUILD_TYPE=Release -DDEVICEBOUND_BUILD_TESTS=OFF \
      -DDEVICEBOUND_BUILD_EXAMPLES=OFF -DDEVICEBOUND_BUILD_BENCH=OFF -DDEVICEBOUND_BUILD_FUZZ=OFF \
      -DDEVICEBOUND_BUILD_TOOLS=OFF -DDEVICEBOUND_BUILD_BROKER_PLUGIN=OFF -DDEVICEBOUND_INSTALL=OFF \
      -DDEVICEBOUND_BUILD_APPS=ON >build-node-hub.log 2>&1 &&
      cmake --build build-node-hub --target devicebound-hub >>build-node-hub.log 2>&1; then
      DEVICEBOUND_HUB="$root/build-node-hub/apps/devicebound-hub"
    else
      echo "test_node: could not build devicebound-hub (see build-node-hub.log): MQTT tests will skip" \
        "(and fail under DEVICEBOUND_REQUIRE_ALL=1)"
    fi
    rm -f build-node-hub.log
  fi
fi
export DEVICEBOUND_HUB=${DEVICEBOUND_HUB:-}

# --- 1 and 2: the checkout ----------------------------------------------------------------------
cd "$root/node"
step "npm ci (builds the addon with cmake-js)"
npm ci
step "node --test"
node --test --test-timeout=120000 test/*.test.js

# --- 3: the tarball, installed elsewhere -----------------------------------------------------
step "npm pack"
work=$(mktemp -d "${TMPDIR:-/tmp}/devicebound-npm-XXXXXX")
trap 'rm -rf "$work"' EXIT
tarball=$(npm pack --silent --pack-destination "$work" | tail -n 1)
[[ -f "$work/$tarball" ]] || { echo "test_node: npm pack made no tarball" >&2; exit 1; }
[[ ! -e native ]] || { echo "test_node: postpack left node/native behind" >&2; exit 1; }

# It carries what the build needs and nothing else.
tar -tzf "$work/$tarball" | sed 's|^package/||' | sort >"$work/files"
for needed in package.json index.js index.d.ts CMakeLists.txt lib/native.js native/CMakeLists.txt \
  native/cmake/devicebound-own-targets.cmake native/include/devicebound/hub.hpp \
  native/bindings/node/CMakeLists.txt native/bindings/node/addon.cpp \
  native/cmake/devicebound-proton.cmake native/include/devicebound/transport/amqp.hpp; do
  grep -qx "$needed" "$work/files" || { echo "test_node: the tarball lacks $needed" >&2; exit 1; }
done
# No benchmark code either: bench.js and its addon (bindings/node/bench/) stay in the checkout.
if grep -E '^(test|examples|node_modules|build|scripts)/|^bench\.js$|^native/(tests|apps|python|bindings/python|bench)|bench' \
  "$work/files"; then
  echo "test_node: the tarball carries files the package does not need (above)" >&2
  exit 1
fi
echo "tarball $tarball: $(wc -l <"$work/files") files, $(du -k "$work/$tarball" | cut -f1) KiB"

# The installed addon must have the transports the checkout's has (AMQP links Proton).
expect_amqp=$(node -e "process.stdout.write(String(require('$root/node').withAmqp))")
expect_mqtt=$(node -e "process.stdout.write(String(require('$root/node').withMqtt))")
export DEVICEBOUND_EXPECT_AMQP=$expect_amqp DEVICEBOUND_EXPECT_MQTT=$expect_mqtt

step "install the tarball into an empty project (builds from source)"
mkdir "$work/app"
cd "$work/app"
npm init -y >/dev/null
npm install "$work/$tarball"
cat >check.js <<'EOF'
const db = require('devicebound');
(async () => {
  const hub = new db.Hub();
  await hub.addDevice('d');
  const device = hub.deviceClient('d');
  const service = hub.serviceClient();
  const received = new Promise((resolve) => device.once('message', resolve));
  await service.send('d', new db.Message('hello from a tarball', { messageId: 'm1' }));
  const m = await received;
  await device.complete(m);
  if (m.toString() !== 'hello from a tarball' || (await service.queueDepth('d')) !== 0) {
    throw new Error('round trip failed');
  }
  // The installed addon has no benchmark code: no export, no second addon.
  const native = require(require('node:path').join(
    require('node:path').dirname(require.resolve('devicebound/package.json')), 'lib', 'native.js'));
  const benchExports = Object.keys(native).filter((k) => /bench/i.test(k));
  if (benchExports.length > 0) throw new Error(`the installed addon exports ${benchExports}`);
  for (const [name, expected] of [['withAmqp', process.env.DEVICEBOUND_EXPECT_AMQP],
    ['withMqtt', process.env.DEVICEBOUND_EXPECT_MQTT]]) {
    if (String(db[name]) !== expected) throw new Error(`installed addon: ${name} is ${db[name]}, the checkout's ${expected}`);
  }
  await Promise.all([device.close(), service.close()]);
  console.log(`installed package ${db.version} (AMQP ${db.withAmqp}, MQTT ${db.withMqtt}): send -> receive -> complete ok`);
})().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
EOF
timeout 60 node check.js
if find node_modules/devicebound -name '*bench*' | grep . || grep -rl --include='*.node' benchInproc node_modules/devicebound; then
  echo "test_node: the installed package holds benchmark files (above)" >&2
  exit 1
fi
step "OK"
