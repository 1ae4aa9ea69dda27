#!/usr/bin/env bash
# Set up (idempotently) and show didgw at work: a gateway for one household,
# its devices registered by DID, one suspended, one re-keyed, the registry, and
# the tamper-evident record of it all, checked by a third party from an export, and
# anchored to a local ledger, with a receipt a household can verify on its own.
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

echo; echo "--- a sensor over MQTT, through a real mosquitto with dynamic security ---"
broker="$PWD/demo-state/mosquitto"
mkdir -p "$broker"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
plugin=""
for f in /usr/lib/*/mosquitto_dynamic_security.so /usr/lib/mosquitto_dynamic_security.so; do
    if [[ -e $f ]]; then plugin=$f; break; fi
done
admin_pw=$(python3 -c 'import secrets; print(secrets.token_urlsafe(16))')
gateway_pw=$(python3 -c 'import secrets; print(secrets.token_urlsafe(16))')
cat > "$broker/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
plugin $plugin
plugin_opt_config_file $broker/dynamic-security.json
persistence false
max_queued_messages 1000000
set_tcp_nodelay true
user $(id -un)
log_dest file $broker/mosquitto.log
CONF
mosquitto_ctrl dynsec init "$broker/dynamic-security.json" admin "$admin_pw" >/dev/null
mosquitto -c "$broker/mosquitto.conf" 2>>"$broker/mosquitto.log" & broker_pid=$!
gateway_pid=""
trap 'kill $gateway_pid $broker_pid 2>/dev/null; wait 2>/dev/null' EXIT
for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
# The operator's one-time set-up (configs/mosquitto/README.md): the policy and the gateway's account.
python -c 'import json; from gateway.auth import broker
print(json.dumps({"commands": broker.anonymous_policy_commands("didgw")
                               + broker.gateway_role_commands("didgw")}))' \
  | mosquitto_pub -h 127.0.0.1 -p "$port" -u admin -P "$admin_pw" -t '$CONTROL/dynamic-security/v1' -s
mosquitto_ctrl -h 127.0.0.1 -p "$port" -u admin -P "$admin_pw" dynsec createClient didgw -p "$gateway_pw" >/dev/null 2>&1
mosquitto_ctrl -h 127.0.0.1 -p "$port" -u admin -P "$admin_pw" dynsec addClientRole didgw didgw-gateway >/dev/null 2>&1
# The ledger: a local anvil dev chain (one block a second), its state kept in a file.
anvil_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
scripts/anvil/node_modules/.bin/anvil --host 127.0.0.1 --port "$anvil_port" --block-time 1 \
    --state demo-state/anvil-state.json --silent & anvil_pid=$!
trap 'kill $gateway_pid $broker_pid $anvil_pid 2>/dev/null; wait 2>/dev/null' EXIT
rpc="http://127.0.0.1:$anvil_port"
ledger=$(didgw init | sed -n 's/^Ledger account: //p')
for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$anvil_port") 2>/dev/null && break; sleep 0.1; done
echo "anvil listens on $rpc; the gateway's ledger account $ledger gets 1 ETH (anvil_setBalance)"
python -c 'import json, sys, urllib.request
body = {"jsonrpc": "2.0", "id": 1, "method": "anvil_setBalance", "params": [sys.argv[2], hex(10**18)]}
urllib.request.urlopen(urllib.request.Request(sys.argv[1], json.dumps(body).encode(),
                       {"Content-Type": "application/json"}), timeout=10).read()' "$rpc" "$ledger"
printf '[mqtt]\nport = %s\n[anchor]\nenabled = true\nrpc_url = "%s"\nevery_seconds = 2.0\nconfirmations = 1\n' \
    "$port" "$rpc" > demo-state/gateway.toml
echo "mosquitto listens on 127.0.0.1:$port; starting the gateway:"
DIDGW_MQTT_PASSWORD="$gateway_pw" didgw run --config demo-state/gateway.toml 2>&1 | sed 's/^/  [gateway] /' &
gateway_pid=$!
sleep 3
sensor=$(python firmware-sim/sensor.py --key "$keys/p1-meter.pem" --state demo-state/meter --print-did)
echo "the P1 meter ($sensor) authenticates and sends 5 signed readings:"
step python firmware-sim/sensor.py --broker "127.0.0.1:$port" --key "$keys/p1-meter.pem" \
    --state demo-state/meter --rate 5 --count 5 --gateway-did "$(didgw init | sed -n 's/^Gateway DID: //p')"
echo; echo "--- the record on the ledger ---"
sleep 4   # one anchoring cadence (2 s) and a block
step didgw anchor status --config demo-state/gateway.toml
step didgw anchor list
pkill -TERM -f "didgw run --config demo-state/gateway.toml" 2>/dev/null || true
wait $gateway_pid 2>/dev/null || true
step didgw chain verify
didgw chain show "$(($(didgw chain export | wc -l) - 1))" | sed -n '1,12p'
last=$(($(didgw chain export | wc -l) - 1))
step didgw receipt "$last" -o demo-state/receipt.json
echo "A household checks the receipt against the ledger, with no gateway and no database:"
step didgw verify-receipt demo-state/receipt.json --rpc "$rpc"
