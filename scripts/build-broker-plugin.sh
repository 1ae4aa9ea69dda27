#!/usr/bin/env bash
# Build mosquitto's didgw plugin (broker-plugin/didgw_auth.c):
#   scripts/build-broker-plugin.sh [OUT]   (default OUT: build/broker-plugin/didgw_auth.so)
# Needs gcc and the headers of Debian's mosquitto-dev, libmosquitto-dev and
# libsodium-dev (scripts/setup.sh installs them). CC picks the compiler (the Debian
# package's arm64 build: aarch64-linux-gnu-gcc), CFLAGS and LDFLAGS are added (its
# hardening flags, from dpkg-buildflags). Rebuilds only when the source is newer than the library.
set -euo pipefail
cd "$(dirname "$0")/.."
src=broker-plugin/didgw_auth.c
out=${1:-build/broker-plugin/didgw_auth.so}
if [[ -f "$out" && "$out" -nt "$src" && "$out" -nt "$0" ]]; then
    exit 0
fi
mkdir -p "$(dirname "$out")"
cc=${CC:-cc}
# shellcheck disable=SC2086 # the flags are words
"$cc" -std=c11 -D_GNU_SOURCE -O2 ${CFLAGS:-} -Wall -Wextra -Werror -fPIC -shared \
    -fvisibility=default ${LDFLAGS:-} -o "$out.tmp" "$src" -lsodium
mv "$out.tmp" "$out"
echo "==> built $out"
