#!/usr/bin/env bash
# Soak run of the real gateway: mixed traffic (verified, revoked, foreign-CA, certificate-less,
# malformed and plaintext clients) while CRLs are re-published and the configuration reloaded
# underneath, with RSS and descriptors sampled (tests/soak/soak.py; docs/reliability.md).
#   scripts/soak.sh [--build-dir DIR] [--duration SECONDS] [other tests/soak/soak.py options]
# Default: 600 s, build directory `build`; the summary goes to DIR/soak/soak.{txt,json}.
# Exits non-zero when a check failed.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=build
args=()
while (($#)); do
  case $1 in
    --build-dir)
      build_dir=$2
      shift 2
      ;;
    *)
      args+=("$1")
      shift
      ;;
  esac
done
scripts/install-deps.sh
scripts/build.sh "$build_dir"
exec python3 tests/soak/soak.py --bin "$build_dir/portcullis" --out "$build_dir/soak" "${args[@]}"
