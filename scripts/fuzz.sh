#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each for a bounded time on a
# copy of its checked-in seed corpus: scripts/fuzz.sh [SECONDS_PER_TARGET] (default 60).
# A crash leaves its input in build-fuzz/findings/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
scripts/install-deps.sh
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DPORTCULLIS_FUZZ=ON -DPORTCULLIS_TESTS=OFF >/dev/null
targets=()
for source in tests/fuzz/*_fuzz.cpp; do targets+=("$(basename "$source" .cpp)"); done
cmake --build build-fuzz -j "$(nproc)" --target "${targets[@]}"
for target in "${targets[@]}"; do
  corpus=build-fuzz/corpus/$target
  findings=build-fuzz/findings/$target
  mkdir -p "$corpus" "$findings"
  cp -n "tests/fuzz/corpus/${target%_fuzz}/"* "$corpus/" 2>/dev/null || true
  echo "fuzzing $target for ${seconds}s"
  # An input taking over 10 s, or 2 GiB, is a finding too.
  "build-fuzz/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$findings/" "$corpus" 2>&1 |
    grep -E "^(#[0-9]+[[:space:]]+(DONE|INITED)|stat::|==[0-9]+==ERROR|SUMMARY)" || true
  if ls "$findings"/crash-* "$findings"/leak-* "$findings"/timeout-* "$findings"/oom-* \
    >/dev/null 2>&1; then
    echo "$target: findings in $findings" >&2
    exit 1
  fi
done
