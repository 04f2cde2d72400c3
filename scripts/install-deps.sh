#!/usr/bin/env bash
# Installs what building, testing and running portcullis needs on Debian 12 (run as root).
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config
  libboost1.81-dev libboost-json1.81-dev libboost-program-options1.81-dev libboost-url1.81-dev
  libssl-dev openssl libyaml-cpp-dev libspdlog-dev catch2 libsystemd-dev
  libgoogle-perftools-dev      # tcmalloc_minimal, the gateway's allocator
  curl python3 python3-yaml ca-certificates procps
  systemd yamllint shellcheck  # packaging checks: systemd-analyze verify, YAML and shell lint
  clang libclang-rt-14-dev     # libFuzzer targets (scripts/fuzz.sh)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
