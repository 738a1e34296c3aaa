#!/usr/bin/env bash
# Installs everything devicebound needs to build and test, on Debian 12.
# Idempotent: installs only what is missing, and runs `apt-get update` only
# when something is. Works as root; otherwise uses sudo if available.
set -euo pipefail

packages=(
  # build
  cmake ninja-build g++ clang libclang-rt-14-dev clang-format
  # scripts/test.sh compiles through it: a second run on the same machine reuses the objects
  ccache
  # library dependencies
  libboost1.81-dev nlohmann-json3-dev
  # tests, fuzzing, benchmarks
  libgtest-dev librapidcheck-dev libbenchmark-dev
  # MQTT transport, its test broker, the broker plugin (SAS auth) and test certificates
  libpaho-mqtt-dev mosquitto mosquitto-dev libssl-dev openssl
  # AMQP 1.0 (codec, front door, transport): Qpid Proton C and C++
  libqpid-proton-cpp12-dev libqpid-proton11-dev
  # the official-SDK tests run Python's uamqp (port 5671) in a private network namespace
  iproute2 util-linux
  # Python package tests (venv) and the stock Azure IoT SDK test
  python3-venv
  # hub daemon, tools and stores
  libcli11-dev libspdlog-dev libfmt-dev libtomlplusplus-dev libsqlite3-dev
  # the PostgreSQL store (store/postgres.hpp, libpq) and the server its test starts
  libpq-dev postgresql-15
  # docs: the generated state diagram
  graphviz
  # RabbitMQ as the broker (docs/scale-out.md): tests start their own node on loopback
  rabbitmq-server
  # devicebound-hub --broker rabbitmq: its event consumer (AMQP 0-9-1, rabbitmq-c 0.11)
  librabbitmq-dev
  # the cluster stage and scripts/cluster-demo.sh: haproxy in front of the RabbitMQ nodes
  haproxy
)

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$package")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#packages[@]} packages already installed"
  exit 0
fi

sudo_cmd=()
if ((EUID != 0)); then
  if command -v sudo >/dev/null 2>&1; then
    sudo_cmd=(sudo)
  else
    echo "setup: need root or sudo to install: ${missing[*]}" >&2
    exit 1
  fi
fi

echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
# RUNLEVEL=1: invoke-rc.d starts no system service (postgresql, rabbitmq-server,
# mosquitto, haproxy) from the packages' install scripts; the tests start their own
# servers on free loopback ports and stop them by PID.
"${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
  apt-get install -y --no-install-recommends "${missing[@]}"
echo "setup: done"
