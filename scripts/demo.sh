#!/usr/bin/env bash
# Set up (idempotently), then show the whole of didgw for a minute: a private mosquitto
# and anvil, a gateway initialised from nothing, a fleet of MQTT sensors, a CoAP sensor,
# three households with P1 meters on ptys and their credentials, the local market, anchors
# on the ledger, a few attacks refused, and one household's receipt checked against the
# ledger. Everything runs on loopback in a temporary directory, removed afterwards; Ctrl-C
# stops it all. Extra arguments go to `didgw demo` (e.g. --seconds 30, --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --demo
exec .venv/bin/didgw demo "$@"
