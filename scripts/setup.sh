#!/usr/bin/env bash
# Set up everything didgw needs on Debian 12 / Raspberry Pi OS (bookworm), then stop.
#   scripts/setup.sh          runtime: mosquitto and its didgw plugin, the Python venv in .venv
#                             with the pinned dependencies; no node, npm or local ledger
#   scripts/setup.sh --demo   also the local EVM dev chain the demo runs (anvil, from the npm
#                             package @foundry-rs/anvil: node and npm are installed for it)
#   scripts/setup.sh --dev    also the test tools, the tests' npm packages and anvil
# Idempotent: it installs only what is missing and skips pip/npm when nothing changed.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
DEV=0 DEMO=0
case "${1:-}" in
    --dev) DEV=1 DEMO=1 ;;
    --demo) DEMO=1 ;;
    "") ;;
    *) echo "usage: scripts/setup.sh [--dev | --demo]" >&2; exit 2 ;;
esac

say() { printf '==> %s\n' "$*"; }

as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else echo "need root to run: $*  (install sudo or run as root)" >&2; exit 1
    fi
}

# --- system packages: only those whose capability is missing ---------------
apt_missing=()
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || apt_missing+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_missing+=(python3-venv)
# The MQTT broker with its dynamic-security plugin, and its command-line clients.
command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || apt_missing+=(mosquitto)
command -v mosquitto_pub >/dev/null || apt_missing+=(mosquitto-clients)
# libcoap's CoAP client: the tests' peer that nobody here wrote (coap-client-notls).
command -v coap-client-notls >/dev/null || apt_missing+=(libcoap3-bin)
# The broker's didgw plugin (broker-plugin/) is compiled here against mosquitto's plugin
# headers and libsodium (checks the session tokens' HMAC): scripts/build-broker-plugin.sh,
# run below.
command -v cc >/dev/null || apt_missing+=(gcc libc6-dev)
[[ -f /usr/include/mosquitto_plugin.h ]] || apt_missing+=(mosquitto-dev)
[[ -f /usr/include/mosquitto.h ]] || apt_missing+=(libmosquitto-dev)
[[ -f /usr/include/sodium.h ]] || apt_missing+=(libsodium-dev)
# node and npm install anvil, the local ledger of the demo and the tests (and the tests' own
# npm packages); a gateway that anchors to a real ledger needs neither.
if [[ $DEMO -eq 1 ]]; then
    command -v node >/dev/null || apt_missing+=(nodejs)
    command -v npm >/dev/null || apt_missing+=(npm)
fi
# The tests check the shipped systemd units with systemd-analyze, and the broker's TLS
# certificates with OpenSSL's command-line tools.
if [[ $DEV -eq 1 ]]; then
    command -v systemd-analyze >/dev/null || apt_missing+=(systemd)
    command -v openssl >/dev/null || apt_missing+=(openssl)
    # The web pages' tests drive Debian's Chromium with Playwright (pip, no browser download).
    [[ -x /usr/bin/chromium ]] || apt_missing+=(chromium)
    # zbarimg reads the QR codes the pages draw, as a phone's camera would.
    command -v zbarimg >/dev/null || apt_missing+=(zbar-tools)
    # The Debian package's test builds it (dpkg-deb, dpkg-buildflags) and asks lintian.
    command -v dpkg-buildflags >/dev/null || apt_missing+=(dpkg-dev)
    command -v lintian >/dev/null || apt_missing+=(lintian)
    # mbpoll (libmodbus) reads the SunSpec inverter simulator over Modbus TCP and RTU: the
    # tests' Modbus peer that nobody here wrote.
    command -v mbpoll >/dev/null || apt_missing+=(mbpoll)
fi
# The arm64 package (scripts/build-deb.sh arm64): the cross compiler, the C library's arm64
# headers (the compiler only recommends them, and apt here installs no recommendations) and
# the plugin's arm64 libraries; its test runs that package's didgw under qemu-user on an
# arm64 python3.11, whose standard library comes from the arm64 multiarch packages (beside
# the amd64 ones).
arm64_libs=(libc6-dev:arm64 libsodium-dev:arm64 libpython3.11-stdlib:arm64 zlib1g:arm64 libexpat1:arm64)
if [[ $DEV -eq 1 && $(dpkg --print-architecture 2>/dev/null) == amd64 ]]; then
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        as_root dpkg --add-architecture arm64
    fi
    command -v aarch64-linux-gnu-gcc >/dev/null || apt_missing+=(gcc-aarch64-linux-gnu)
    command -v qemu-aarch64-static >/dev/null || apt_missing+=(qemu-user-static)
    for lib in "${arm64_libs[@]}"; do
        dpkg-query -W -f '${Status}' "$lib" 2>/dev/null | grep -q 'ok installed' || apt_missing+=("$lib")
    done
fi
if [[ ${#apt_missing[@]} -gt 0 ]]; then
    say "installing system packages: ${apt_missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}"
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "didgw needs Python 3.11 or newer; $(python3 --version) found" >&2; exit 1; }

# The arm64 python3.11 itself (python3.11-minimal:arm64 cannot be installed beside the
# amd64 one): its package unpacked into build/arm64-python, for the arm64 package's test.
if [[ $DEV -eq 1 && $(dpkg --print-architecture 2>/dev/null) == amd64 ]] \
    && [[ ! -x build/arm64-python/usr/bin/python3.11 ]]; then
    say "unpacking an arm64 python3.11 into build/arm64-python"
    dl=$(mktemp -d) && chmod 0755 "$dl" && { chown _apt "$dl" 2>/dev/null || true; }
    (cd "$dl" && apt-get download -qq python3.11-minimal:arm64)
    mkdir -p build && dpkg-deb -x "$dl"/python3.11-minimal_*_arm64.deb build/arm64-python
    rm -rf "$dl"
fi

# --- mosquitto's didgw plugin ----------------------------------------------------
scripts/build-broker-plugin.sh

# --- Python environment ----------------------------------------------------
extras="" stamp=.venv/.didgw-setup
if [[ $DEV -eq 1 ]]; then extras="[dev]" stamp=.venv/.didgw-setup-dev; fi
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [[ ! -x .venv/bin/python ]]; then
    say "creating virtual environment in .venv"
    python3 -m venv .venv
fi
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    say "installing didgw and its pinned dependencies${extras:+ (with test tools)}"
    .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".$extras"
    rm -f .venv/.didgw-setup .venv/.didgw-setup-dev
    echo "$want" > "$stamp"
fi

# --- npm packages of the tests -----------------------------------------------
# didkey-js: a reference did:key implementation; oid4vc-js: an OpenID4VCI/OpenID4VP wallet;
# a11y: axe-core, which the browser tests inject into the pages.
if [[ $DEV -eq 1 ]]; then
    for js in tests/interop/didkey-js tests/interop/oid4vc-js tests/a11y; do
        lock=$(sha256sum "$js/package-lock.json" | cut -d' ' -f1)
        if [[ "$(cat "$js/node_modules/.didgw-lock" 2>/dev/null)" != "$lock" ]]; then
            say "installing the npm packages of $js (npm ci)"
            npm ci --prefix "$js" --no-audit --no-fund --loglevel=error
            echo "$lock" > "$js/node_modules/.didgw-lock"
        fi
    done
fi
# --- the local EVM dev chain (anvil): a static binary shipped in npm packages ----------
# package.json pins @foundry-rs/anvil exactly, and it pins its per-platform binary package
# exactly, so no lock file is kept: one would list only the platform it was made on.
anvil_dir=scripts/anvil
pin=$(sha256sum "$anvil_dir/package.json" | cut -d' ' -f1)
if [[ $DEMO -eq 1 ]] && { [[ "$(cat "$anvil_dir/node_modules/.didgw-pin" 2>/dev/null)" != "$pin" ]] \
    || [[ ! -x "$anvil_dir/node_modules/.bin/anvil" ]]; }; then
    say "installing the local dev chain, anvil (npm install)"
    npm install --prefix "$anvil_dir" --no-package-lock --no-audit --no-fund --loglevel=error
    echo "$pin" > "$anvil_dir/node_modules/.didgw-pin"
fi
say "ready: $ROOT/.venv/bin/didgw"
