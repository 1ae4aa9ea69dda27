#!/usr/bin/env bash
# Set up (idempotently) and show didgw at work: a gateway for one household,
# its devices registered by DID, one suspended, one re-keyed, the registry, and
# the tamper-evident record of it all, checked by a third party from an export.
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

echo; echo "--- the tamper-evident record ---"
step didgw chain note "P1 meter sealed by the grid operator" --by fm:demo
step didgw chain show 0
printf '\n\033[1m$ didgw chain checkpoint > demo-state/checkpoint.txt\033[0m\n'
didgw chain checkpoint > demo-state/checkpoint.txt
cat demo-state/checkpoint.txt
step didgw chain proof 2
step didgw chain consistency 3 7
step didgw chain erase 6 --reason "household asked to delete the note" --by fm:demo
step didgw chain export -o demo-state/record.jsonl
step didgw chain verify
echo; echo "A third party checks the export against the signed checkpoint, with no database:"
step didgw chain verify --export demo-state/record.jsonl --checkpoint demo-state/checkpoint.txt
