#!/usr/bin/env bash
# Installs the devicebound Python package the way a user would -- `pip install .`
# from the checkout into a fresh virtualenv -- and runs its tests:
#
#   scripts/test_python.sh [pytest args...]
#
# 1. python3 -m venv (fresh each run, in a temporary directory unless
#    DEVICEBOUND_PY_VENV names one), then pip installs the test requirements from
#    PyPI (pytest, hypothesis; paho-mqtt because python/tests/conftest.py imports it).
# 2. pip install . : scikit-build-core builds the pybind11 extension from the
#    top-level CMakeLists.txt, here with -Werror on the binding (zero warnings).
#    The build tree build-py/ is reused between runs, so rebuilds are incremental.
# 3. The MQTT tests need mosquitto and devicebound-hub: $DEVICEBOUND_HUB_EXE, else
#    build/apps/devicebound-hub, else it is built into build-python-hub/. They are
#    required (DEVICEBOUND_REQUIRE_MQTT=1) unless DEVICEBOUND_REQUIRE_MQTT=0. With
#    DEVICEBOUND_REQUIRE_ALL=1 (scripts/test.sh) no test may skip for a missing part.
# 4. pytest python/tests (the package tests, test_py_*.py). The broker-plugin and
#    stock-SDK tests have their own runner (python/tests/run_broker_tests.sh) and
#    are left out unless DEVICEBOUND_PY_BROKER_TESTS=1. "No tests ran" is a failure.
# 5. With DEVICEBOUND_PY_SDIST=1, also builds an sdist and installs it into a second
#    fresh venv, and runs the tests against that install.
# 6. The benchmark: python/bench.py needs devicebound._bench, which the wheel does not
#    carry (4. checks that): reinstalls into the venv of 2. with
#    DEVICEBOUND_PYTHON_BENCH=ON, a development install, and runs a short bench.
#
# Needs (Debian 12): python3-venv (for a system python3), python3-dev, cmake,
# ninja-build, g++, libboost1.81-dev, nlohmann-json3-dev, libpaho-mqtt-dev,
# libssl-dev, mosquitto -- all in scripts/setup.sh except python3-venv/python3-dev.
# Exit status: non-zero if any step or any test failed.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
jobs=${CMAKE_BUILD_PARALLEL_LEVEL:-2}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
venv=${DEVICEBOUND_PY_VENV:-$work/venv}

step() { printf '\n--- test_python: %s\n' "$*"; }

new_venv() {
  rm -rf "$1"
  "$python" -m venv "$1"
  "$1/bin/python" -m pip install --quiet --disable-pip-version-check "pytest>=7" "hypothesis>=6" "paho-mqtt>=1.6.1"
}

# --- the daemon for the MQTT tests ------------------------------------------------------
if [[ -z "${DEVICEBOUND_HUB_EXE:-}" ]]; then
  if [[ -x "$root/build/apps/devicebound-hub" ]]; then
    export DEVICEBOUND_HUB_EXE="$root/build/apps/devicebound-hub"
  else
    step "building devicebound-hub for the MQTT tests (build-python-hub/)"
    cmake -S "$root" -B "$root/build-python-hub" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DDEVICEBOUND_BUILD_TESTS=OFF -DDEVICEBOUND_BUILD_EXAMPLES=OFF -DDEVICEBOUND_BUILD_BENCH=OFF \
      -DDEVICEBOUND_BUILD_FUZZ=OFF -DDEVICEBOUND_BUILD_TOOLS=OFF -DDEVICEBOUND_BUILD_BROKER_PLUGIN=OFF \
      -DDEVICEBOUND_INSTALL=OFF -DDEVICEBOUND_BUILD_APPS=ON
    cmake --build "$root/build-python-hub" --target devicebound-hub -j "$jobs"
    export DEVICEBOUND_HUB_EXE="$root/build-python-hub/apps/devicebound-hub"
  fi
fi
export DEVICEBOUND_REQUIRE_MQTT=${DEVICEBOUND_REQUIRE_MQTT:-1}

# --- tests --------------------------------------------------------------------------------
pytest_args=(-p no:cacheprovider -q -rs)
if [[ "${DEVICEBOUND_PY_BROKER_TESTS:-0}" != 1 ]]; then
  pytest_args+=(--ignore="$root/python/tests/test_broker_plugin.py"
                --ignore="$root/python/tests/test_stock_sdk.py")
fi

run_pytest() {
  local rc=0
  # From a directory outside the checkout: `import devicebound` must find the installed package.
  (cd "$work" && "$1/bin/python" -m pytest "${pytest_args[@]}" "$root/python/tests" "${@:2}") || rc=$?
  if ((rc == 5)); then
    echo "test_python: FAILED: pytest collected no tests" >&2
    return 1
  fi
  return "$rc"
}

step "fresh venv $venv ($("$python" --version))"
new_venv "$venv"

step "pip install $root"
CMAKE_BUILD_PARALLEL_LEVEL=$jobs "$venv/bin/python" -m pip install --disable-pip-version-check \
  -C cmake.define.DEVICEBOUND_WERROR=ON "$root"

step "pytest python/tests"
run_pytest "$venv" "$@"

if [[ "${DEVICEBOUND_PY_SDIST:-0}" == 1 ]]; then
  step "sdist: build it, install it into a fresh venv, test that install"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check build
  "$venv/bin/python" -m build --sdist --outdir "$work/dist" "$root"
  sdist=$(ls "$work/dist"/devicebound-*.tar.gz)
  tar -tzf "$sdist" | sed 's|^[^/]*/||' | sort > "$work/sdist-files"
  # bindings/python/ without its bench/ folder: the benchmark module is for development only.
  if grep -Ev '^(|PKG-INFO|pyproject.toml|README.md|CMakeLists.txt|cmake/.*|include/.*|bindings/python/[^/]+|python/devicebound/.*)$' \
      "$work/sdist-files"; then
    echo "test_python: FAILED: the sdist holds files it should not (above)" >&2
    exit 1
  fi
  new_venv "$work/venv-sdist"
  CMAKE_BUILD_PARALLEL_LEVEL=$jobs "$work/venv-sdist/bin/python" -m pip install --disable-pip-version-check \
    -C build-dir="$work/build-sdist" "$sdist"
  run_pytest "$work/venv-sdist" "$@"
fi

step "python/bench.py on a development install (DEVICEBOUND_PYTHON_BENCH=ON)"
CMAKE_BUILD_PARALLEL_LEVEL=$jobs "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  --force-reinstall --no-deps -C cmake.define.DEVICEBOUND_WERROR=ON \
  -C cmake.define.DEVICEBOUND_PYTHON_BENCH=ON "$root"
bench_out=$(cd "$work" && "$venv/bin/python" "$root/python/bench.py" --n 500 --repeat 1)
echo "$bench_out"
for word in "C++" "Python" "ratio"; do
  grep -qF "$word" <<<"$bench_out" || { echo "test_python: FAILED: bench.py printed no '$word'" >&2; exit 1; }
done

step "OK"
