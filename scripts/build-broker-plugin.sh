#!/usr/bin/env bash
# Build mosquitto's didgw plugin (broker-plugin/didgw_auth.c) into build/broker-plugin/.
# Needs gcc and the headers of Debian's mosquitto-dev, libmosquitto-dev, libssl-dev and
# libsodium-dev (scripts/setup.sh installs them). Rebuilds only when the source is newer than the library.
set -euo pipefail
cd "$(dirname "$0")/.."
src=broker-plugin/didgw_auth.c
out=build/broker-plugin/didgw_auth.so
if [[ -f "$out" && "$out" -nt "$src" && "$out" -nt "$0" ]]; then
    exit 0
fi
mkdir -p "$(dirname "$out")"
cc=${CC:-cc}
"$cc" -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -fPIC -shared \
    -fvisibility=default -o "$out.tmp" "$src" -lsodium -lcrypto
mv "$out.tmp" "$out"
echo "==> built $out"
