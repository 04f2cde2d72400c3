#!/usr/bin/env bash
# Builds everything with ThreadSanitizer (build-tsan) and runs the concurrency-heavy tests: the
# revocation unit tests (index publication under concurrent lookups), the OCSP client (shared
# cache, queries shared by concurrent connections), the CRL integration tests
# whose refresher swaps indexes under live connections, reloads under load, resumption (the
# session cache the io threads share), and the upstream pool. Any data race fails the run. scripts/tsan.sh [extra ctest arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

start=$(date +%s)
# -O1 keeps the instrumented gateway fast enough for the tests' deadlines; -g1 (line tables only)
# is enough for the reports' stacks and compiles much faster than full debug information.
scripts/build.sh build-tsan -DPORTCULLIS_SANITIZE=thread -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1" -DPORTCULLIS_BENCH=OFF
echo "thread sanitizer build: $(( $(date +%s) - start )) s"

# Every process (the unit tests, each gateway an integration test starts) writes its reports to
# a file here: a test that stops a gateway does not always look at its exit code.
reports=$PWD/build-tsan/sanitizer-reports
rm -rf "$reports"
mkdir -p "$reports"
export TSAN_OPTIONS="log_path=$reports/tsan second_deadlock_stack=1"
start=$(date +%s)
status=0
(cd build-tsan && ctest --output-on-failure -j 2 --timeout 900 \
  -R '^(unit\.revocation\.|integration\.test_(crl_revocation|crl_policy|ocsp_client|operations|resumption|upstreams)$)' \
  "$@") || status=$?
echo "thread sanitizer tests: $(( $(date +%s) - start )) s"
if [ -n "$(ls -A "$reports")" ]; then
  cat "$reports"/*
  echo "thread sanitizer reports in $reports" >&2
  status=1
fi
exit "$status"
