#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a full test run: installs dependencies, builds,
# runs every unit and integration test, then runs the unit tests again under AddressSanitizer
# and UndefinedBehaviorSanitizer, and gives each libFuzzer target a short run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

start=$(date +%s)
scripts/build.sh build
echo "build: $(( $(date +%s) - start )) s"

start=$(date +%s)
(cd build && ctest --output-on-failure -j 2 --timeout 900)
echo "tests: $(( $(date +%s) - start )) s"

start=$(date +%s)
scripts/build.sh build-asan -DPORTCULLIS_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=Debug
(cd build-asan && ctest --output-on-failure -j 2 -R '^unit\.')
echo "sanitizer build and unit tests: $(( $(date +%s) - start )) s"

start=$(date +%s)
scripts/fuzz.sh 30
echo "fuzzing: $(( $(date +%s) - start )) s"
