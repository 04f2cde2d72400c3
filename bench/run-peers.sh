#!/usr/bin/env bash
# portcullis, NGINX and HAProxy side by side on 127.0.0.1: installs what it uses, builds a
# Release tree (build-bench) unless --build DIR names one, runs bench/peers.py with the same
# options (see bench/peers.py --help) and draws the chart. Results land in bench/results/ (--out).
#   bench/run-peers.sh [--quick] [--duration S] [--workers N] [--gateways a,b] [--profile S] ...
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(nginx haproxy gnuplot-nox openssl python3 cmake ninja-build g++ linux-perf)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  as_root=()
  if [[ $(id -u) != 0 ]]; then
    command -v sudo >/dev/null || { echo "run-peers.sh: install ${missing[*]} as root" >&2; exit 1; }
    as_root=(sudo)
  fi
  # Only the binaries are used; the packaged services are not started here.
  "${as_root[@]}" apt-get update
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "${missing[@]}"
fi

out=bench/results
build=
profile=
prev=
for arg in "$@"; do
  case $prev in
    --out) out=$arg ;;
    --build) build=$arg ;;
    --profile) profile=$arg ;;
  esac
  prev=$arg
done
if [[ -z $build ]]; then
  nice -n 10 scripts/build.sh build-bench -DCMAKE_BUILD_TYPE=Release -DPORTCULLIS_TESTS=OFF
fi
# 10,000 idle connections need more descriptors than the usual 1024, in every process.
ulimit -n "$(ulimit -Hn)"
# nginx and haproxy live in /usr/sbin, which a user's PATH may lack.
PATH=$PATH:/usr/sbin python3 bench/peers.py "$@"
if [[ -z $profile ]]; then
  gnuplot -e "dat='$out/chart.dat'; out='$out/chart.png'" bench/chart.gp
  echo "chart: $out/chart.png"
fi
