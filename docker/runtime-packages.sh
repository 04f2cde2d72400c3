#!/usr/bin/env bash
# Prints the Debian packages that provide the shared libraries BINARY loads, one per line, so a
# runtime image installs exactly those whatever the Debian release (package names change between
# releases; sonames tell the truth). Usage: docker/runtime-packages.sh BINARY
set -euo pipefail
binary=${1:?usage: runtime-packages.sh BINARY}
ldd "$binary" | awk '/=> \// {print $3}' | while read -r lib; do
  # dpkg records a file under the path its package ships; with merged /usr that may be the
  # /usr/lib or the /lib spelling of the same file.
  owner=""
  for candidate in "$lib" "$(readlink -f "$lib")" "/usr${lib}" "${lib#/usr}"; do
    owner=$(dpkg -S "$candidate" 2>/dev/null) && break
  done
  if [ -z "$owner" ]; then
    echo "runtime-packages.sh: no Debian package provides $lib" >&2
    exit 1
  fi
  echo "${owner%%:*}"
done | sort -u
