#!/usr/bin/env bash
# Set up (idempotently) and show didgw at work: a gateway for one household,
# its devices registered by DID, one suspended, one re-keyed, and the registry.
# Everything lives in ./demo-state, recreated on each run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

export DIDGW_STATE_DIR="$PWD/demo-state/gateway"
export PATH="$PWD/.venv/bin:$PATH"
keys="$PWD/demo-state/device-keys"
rm -rf demo-state && mkdir -p "$keys"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@" 2>&1; }
newdid() { didgw did new -o "$keys/$1.pem" 2>/dev/null; }

step didgw init
household=$(newdid household)
meter=$(newdid p1-meter)
inverter=$(newdid roof-inverter)
sensor=$(newdid cellar-sensor)
inverter_new=$(newdid roof-inverter-2)
echo
echo "device keys (PKCS#8, mode 0600) are in $keys:"
ls -l "$keys"

step didgw device register "$meter" --name "P1 smart meter" --kind meter \
    --owner "$household" --topic "home/meter/#" --capability reading --by fm:demo
step didgw device register "$inverter" --name "roof PV inverter" --kind inverter \
    --owner "$household" --topic "home/pv/#" --capability reading --meta vendor=acme --by fm:demo
step didgw device register "$sensor" --name "cellar temperature" --kind sensor \
    --topic "home/cellar/#" --by fm:demo
step didgw device suspend "$sensor" --reason "battery swap" --by fm:demo
step didgw device rotate "$inverter" "$inverter_new" --reason "scheduled key rotation" --by fm:demo

echo; echo "--- what the gateway refuses, and why ---"
step didgw device register "$meter" --name "P1 again" --kind meter || true
step didgw device suspend "$inverter" --reason "oops" || true
step didgw device register did:key:z6MkBAD0 --name "typo" --kind sensor || true

step didgw device show "$inverter_new"
step didgw did resolve "$meter"
step didgw device list
