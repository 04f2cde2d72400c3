#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a full test run: installs dependencies, builds,
# runs every unit and integration test, then runs them all again under AddressSanitizer and
# UndefinedBehaviorSanitizer, and gives each libFuzzer target a short run.
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
scripts/build.sh build-asan -DPORTCULLIS_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=Debug \
  -DPORTCULLIS_BENCH=OFF
# The integration tests run the sanitized binary too. A test that stops a gateway does not
# always look at its exit code, so every process writes its sanitizer report (an invalid
# access, undefined behaviour, a leak at exit) to a file here, and any report fails the run.
reports=$PWD/build-asan/sanitizer-reports
rm -rf "$reports"
mkdir -p "$reports"
export ASAN_OPTIONS="log_path=$reports/asan"
export UBSAN_OPTIONS="print_stacktrace=1:log_path=$reports/ubsan"
status=0
(cd build-asan && ctest --output-on-failure -j 2 --timeout 900) || status=$?
unset ASAN_OPTIONS UBSAN_OPTIONS
if [ -n "$(ls -A "$reports")" ]; then
  cat "$reports"/*
  echo "sanitizer reports in $reports" >&2
  status=1
fi
echo "sanitizer build and tests: $(( $(date +%s) - start )) s"
if [ "$status" -ne 0 ]; then exit "$status"; fi

start=$(date +%s)
scripts/fuzz.sh 30
echo "fuzzing: $(( $(date +%s) - start )) s"
