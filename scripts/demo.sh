#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a running demo: installs dependencies, builds,
# and starts `portcullis demo` (throwaway PKI, echo upstream, gateway) in ./demo-pki.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build
exec build/portcullis demo --dir "$PWD/demo-pki" "$@"
