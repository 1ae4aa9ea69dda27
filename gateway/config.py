"""The gateway's configuration: one TOML file, one schema, every key defaulted.

The dataclasses below *are* the schema: each field has a type, a default, a
line of documentation and, where a value can be impossible, a check. The same
schema validates a file (:func:`load_config`), renders the commented example
``configs/gateway.toml`` (:func:`render_example`, ``didgw config example``) and
so cannot drift from it. Errors name the file, the key and the reason, and are
raised before anything touches the gateway's state. A key that moved to another
section (:data:`MOVED`) is still read where it was, with a warning naming its new
place.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import socket
import tomllib
import typing
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.files import secret_file_problem

log = logging.getLogger(__name__)

Check = Callable[[Any], str | None]  # returns the reason a value is impossible, or None


def _setting(default: Any, doc: str, check: Check | None = None) -> Any:
    return field(default=default, metadata={"doc": doc, "check": check})


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _not_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _http_url(value: str) -> str | None:
    if not value:
        return None
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "must be an http:// or https:// URL, or empty"
    return None


def _existing_file(value: str) -> str | None:
    return None if not value or Path(value).is_file() else "file not found"


def _ca_file(value: str) -> str | None:
    """A PEM file of certificate authorities: it exists and OpenSSL loads it (a bare context,
    so only this file is read, not the system's trust store)."""
    if not value:
        return None
    if not Path(value).is_file():
        return "file not found"
    import ssl  # here: every command reads the configuration, few need ssl

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=value)
    except (OSError, ssl.SSLError) as exc:
        return f"not a PEM file of CA certificates ({exc})"
    return None


def _secret_file(value: str) -> str | None:
    """A file holding a password or passphrase: it exists and only its owner may read it."""
    return secret_file_problem(value) if value else None


def _between(low: int, high: int) -> Check:
    def check(value: int) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high}"

    return check


def _seconds_between(low: float, high: float) -> Check:
    def check(value: float) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high}"

    return check


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost): a server
    bound there, or a peer there, is out of reach of every other machine. Any other name
    may resolve to anything, so it counts as not loopback."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):  # RFC 6761
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


def _listening_where(host: str) -> str:
    """Where a server bound to ``host`` (not loopback) can be reached from, in words."""
    name = host.strip().strip("[]")
    if name in ("", "0.0.0.0", "::", "::ffff:0.0.0.0"):  # noqa: S104 - naming it, not binding
        return "every interface of this machine"
    return "an address other machines can reach"


@dataclass(frozen=True)
class _Section:
    def cross_checks(self) -> list[tuple[str, str]]:
        """(key, reason) for values that are impossible together; each key alone was fine."""
        return []

    def exposures(self) -> list[tuple[str, str]]:
        """(key, why) for values that are valid but let other machines reach something an
        operator should know about (a server off loopback, a secret sent in clear): the
        exposure warnings, collected by :meth:`Config.warnings`. A section whose settings can
        expose the gateway overrides this with its rules."""
        return []


@dataclass(frozen=True)
class GatewaySection(_Section):
    """Where the gateway keeps its state."""

    state_dir: str = _setting(
        "",
        "Directory for the gateway key and database. Empty: $STATE_DIRECTORY (set by "
        "systemd's StateDirectory=), else ~/.local/state/didgw. The --state-dir option "
        "and $DIDGW_STATE_DIR take precedence over this key.",
    )
    quota_mb: int = _setting(
        0,
        "Largest size of the database (with its write-ahead log), in MB, before readings are "
        "refused (storage_full; devices keep them and send them again). 0: no quota.",
        _between(0, 10_000_000),
    )
    min_free_mb: int = _setting(
        64,
        "Refuse readings (storage_full) when the state directory's file system has less free "
        "space than this, in MB, so the card never fills up under the database.",
        _between(0, 10_000_000),
    )


@dataclass(frozen=True)
class KeysSection(_Section):
    """How the gateway's private keys are protected at rest."""

    passphrase_file: str = _setting(
        "",
        "File whose content (one line) encrypts the gateway key. Empty: use "
        "$DIDGW_KEY_PASSPHRASE if set, else the key is stored unencrypted, protected "
        "by its 0600 file mode. Setting both is an error. The file must be readable by its "
        "owner alone (chmod 600), as the keys are.",
        _secret_file,
    )


@dataclass(frozen=True)
class ResolverSection(_Section):
    """How DIDs other than did:key are resolved, and how long answers are trusted."""

    did_web: bool = _setting(True, "Resolve did:web DIDs over HTTPS.")
    universal_resolver: str = _setting(
        "",
        "Base URL of a DIF Universal Resolver (GET {base}/1.0/identifiers/{did}) used for "
        "every method other than did:key and did:web. Empty: no other methods.",
        _http_url,
    )
    timeout: float = _setting(
        5.0,
        "Seconds a whole did:web, resolver or status-list fetch may take (connecting, TLS, "
        "the answer), however slowly the server sends it; past that the source counts as "
        "unreachable.",
        _positive,
    )
    max_document_bytes: int = _setting(
        65536, "Largest DID document accepted, in bytes.", _between(1024, 16 * 1024 * 1024)
    )
    cache_ttl: float = _setting(
        3600.0,
        "Seconds a fetched DID document is used without asking its source again.",
        _not_negative,
    )
    cache_max_stale: float = _setting(
        86400.0,
        "While the source is unreachable, a cached document is still used until it is "
        "this many seconds old; after that resolution fails closed. Must be >= cache_ttl.",
        _not_negative,
    )
    ca_file: str = _setting(
        "",
        "Extra PEM file of certificate authorities trusted for did:web and the resolver "
        "(a building's private PKI). Empty: the system's trust store only.",
        _ca_file,
    )
    allow_http_localhost: bool = _setting(
        False,
        "Fetch did:web documents of localhost / 127.0.0.1 / [::1] over plain HTTP. For "
        "tests and demos; never needed in production.",
    )

    def cross_checks(self) -> list[tuple[str, str]]:
        if self.cache_max_stale < self.cache_ttl:
            return [("cache_max_stale", "must be greater than or equal to cache_ttl")]
        return []


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "must be a TCP port (1-65535)"


def _topic_prefix(value: str) -> str | None:
    from gateway.auth.broker import check_prefix  # the topic layout is defined there

    try:
        check_prefix(value)
    except ConfigError:
        return "must be one or more topic levels without '+', '#' or a leading '$'"
    return None


@dataclass(frozen=True)
class MqttSection(_Section):
    """The MQTT broker (mosquitto with its dynamic-security plugin) devices talk through."""

    enabled: bool = _setting(True, "Serve devices over MQTT when the gateway runs.")
    host: str = _setting("127.0.0.1", "Broker host the gateway connects to (its admin listener).")
    port: int = _setting(1883, "Broker port.", _port)
    username: str = _setting(
        "didgw",
        "The gateway's broker account: it administers dynamic security and reads devices' "
        "topics (its set-up: configs/mosquitto/README.md).",
    )
    password_file: str = _setting(
        "",
        "File holding that account's password, readable by its owner alone (chmod 600). "
        "Empty: $DIDGW_MQTT_PASSWORD.",
        _secret_file,
    )
    prefix: str = _setting("didgw", "First level of every didgw topic.", _topic_prefix)
    session_seconds: int = _setting(
        3600,
        "How long a device's broker session token lasts after it authenticates (devices "
        "renew before).",
        _between(10, 604800),
    )
    token_dir: str = _setting(
        "",
        "Where the gateway writes what the broker's didgw plugin reads: the broker's copy "
        "of its session-token key (token.key, 0640) and the deny file (deny). The broker's "
        "group must be able to read it (configs/mosquitto/README.md). Empty: broker/ in the state "
        "directory (a broker run as the gateway's own user: the demo, the tests).",
    )
    verify_workers: int = _setting(
        -1,
        "Reading worker processes, sharing the readings through an MQTT shared "
        "subscription; each verifies, records and acknowledges the readings it gets. -1: one "
        "per CPU core (none on a single core); 0: the main process does it all.",
        _between(-1, 64),
    )
    tls: bool = _setting(
        False,
        "Connect to the broker over TLS, checking its certificate against ca_file and its "
        "name against host. Needed when host is not this machine: the gateway's account "
        "administers the broker, and every reading passes over this connection.",
    )
    ca_file: str = _setting(
        "",
        "With tls: PEM file of the certificate authorities that may sign the broker's "
        "certificate. Empty: the gateway's own (tls/ca.crt in the state directory, made by "
        "didgw init).",
        _existing_file,
    )
    cert_file: str = _setting(
        "",
        "With tls: a client certificate (PEM) to present, for a broker that asks for one "
        "(mosquitto's require_certificate). Empty: none.",
        _existing_file,
    )
    key_file: str = _setting(
        "",
        "The private key of cert_file (PEM, not encrypted; refused when group or others may "
        "read it).",
        _existing_file,
    )

    def cross_checks(self) -> list[tuple[str, str]]:
        if bool(self.cert_file) != bool(self.key_file):
            return [("key_file", "cert_file and key_file go together: set both or neither")]
        if (self.ca_file or self.cert_file) and not self.tls:
            key = "ca_file" if self.ca_file else "cert_file"
            return [(key, "is only used with tls = true")]
        return []

    def exposures(self) -> list[tuple[str, str]]:
        if not self.enabled or self.tls or is_loopback(self.host):
            return []
        return [
            (
                "host",
                f"{self.host!r} is not this machine and tls is off: the gateway's broker "
                "password (its account administers the broker) and every reading cross the "
                "network in clear. Set [mqtt] tls = true (port 8883, docs/operations.md, "
                '"TLS for devices"), or run the broker on this machine.',
            )
        ]


@dataclass(frozen=True)
class TlsSection(_Section):
    """The broker's TLS certificate, issued by the gateway's own certificate authority."""

    broker_dir: str = _setting(
        "",
        "Where didgw tls issue and didgw tls renew write the broker's certificate chain "
        "(broker.crt) and key (broker.key, mode 0600): mosquitto's certfile and keyfile. "
        "Empty: tls/ in the state directory.",
    )
    broker_days: int = _setting(
        90, "How long a broker certificate is valid, in days.", _between(2, 825)
    )
    renew_before_days: int = _setting(
        30,
        "didgw tls renew (daily, from systemd/didgw-tls-renew.timer) issues a new broker "
        "certificate once the current one expires within this many days.",
        _between(1, 824),
    )
    broker_owner: str = _setting(
        "",
        "User who is given broker.crt and broker.key, so that mosquitto can still read them "
        "after it has dropped root (Debian: mosquitto). Needs root. Empty: left as created.",
    )
    broker_pid_file: str = _setting(
        "",
        "mosquitto's pid file: after a new certificate is written, the broker is sent SIGHUP "
        "and serves it without a restart (Debian: /run/mosquitto/mosquitto.pid). Empty: the "
        "broker is not told.",
    )

    def cross_checks(self) -> list[tuple[str, str]]:
        if self.renew_before_days >= self.broker_days:
            return [("renew_before_days", "must be less than broker_days")]
        return []


@dataclass(frozen=True)
class DevicesSection(_Section):
    """Devices over MQTT and CoAP alike: how far their clocks may be off, how late readings come."""

    clock_skew_seconds: int = _setting(
        300,
        "How far a device's clock may be from the gateway's: an authentication response further "
        "off, or a reading further ahead, is refused (clock_skew). People's wallets get the "
        "same tolerance.",
        _between(1, 86400),
    )
    max_reading_age_seconds: int = _setting(
        86400,
        "Oldest reading accepted: devices queue readings while the broker or the gateway is "
        "down and deliver them late. At least clock_skew_seconds.",
        _between(60, 31 * 86400),
    )


@dataclass(frozen=True)
class CoapSection(_Section):
    """Constrained devices over CoAP (UDP); their clock window is in [devices]."""

    enabled: bool = _setting(False, "Serve devices over CoAP when the gateway runs.")
    host: str = _setting(
        "127.0.0.1",
        "Address the CoAP server listens on. Loopback unless you say otherwise: set the "
        "gateway's LAN address (or :: for every interface) for real devices. Any other "
        "address is an exposure warning (config check, and the log at start): readings "
        "travel unencrypted over CoAP.",
        lambda v: None if v else "must not be empty",
    )
    port: int = _setting(5683, "UDP port (5683 is CoAP's).", _port)
    session_seconds: int = _setting(
        3600,
        "How long a device's CoAP session lasts after it authenticates; readings outside a "
        "session are refused with 4.01.",
        _between(10, 604800),
    )
    max_request_bytes: int = _setting(
        16384,
        "Largest request body accepted, block-wise transfers reassembled; larger: 4.13.",
        _between(256, 1024 * 1024),
    )
    max_partial_uploads: int = _setting(
        64,
        "Block-wise requests being received at once, from all peers (4 at most per peer "
        "address: its next one replaces its oldest). More: 5.03 with Max-Age. Memory for "
        "them is at most this times max_request_bytes.",
        _between(1, 100_000),
    )
    partial_upload_seconds: int = _setting(
        60,
        "A block-wise request whose next block has not come for this long is dropped; a "
        "block after that is answered 4.08 (Request Entity Incomplete: start again).",
        _between(1, 3600),
    )
    peer_rate: float = _setting(
        50.0,
        "Requests per second each peer address may make (a token bucket); more: 4.29 with Max-Age.",
        _positive,
    )
    peer_burst: int = _setting(
        100, "How many requests a peer may make at once above peer_rate.", _between(1, 1_000_000)
    )
    max_in_flight: int = _setting(
        2000,
        "Readings being verified or recorded at once before the gateway answers 5.03 "
        "(Service Unavailable) with Max-Age: devices come back later.",
        _between(1, 1_000_000),
    )
    retry_after_seconds: int = _setting(
        2, "Max-Age of a 5.03 or 4.29: when the device should try again.", _between(1, 3600)
    )
    receive_buffer_bytes: int = _setting(
        4 * 1024 * 1024,
        "Kernel receive buffer of the server socket, so that bursts from many devices are "
        "not dropped (raised above net.core.rmem_max only when running as root).",
        _between(65536, 256 * 1024 * 1024),
    )

    def exposures(self) -> list[tuple[str, str]]:
        if not self.enabled or is_loopback(self.host):
            return []
        return [
            (
                "host",
                f'CoAP is served on {_listening_where(self.host)} ("{self.host}"): any host that '
                "can reach it may send requests, and readings travel unencrypted (no DTLS or "
                "OSCORE: docs/protocol/coap.md#confidentiality). Serve CoAP only on a network "
                "segment you trust, or let a firewall admit only your devices to this UDP port.",
            )
        ]


@dataclass(frozen=True)
class AnchorSection(_Section):
    """Anchoring the record's checkpoints to a ledger (an EVM chain over JSON-RPC)."""

    enabled: bool = _setting(
        False,
        "Anchor checkpoints while the gateway runs. The ledger account (keys/ledger.pem, "
        "created by didgw init) must hold enough for the fees.",
    )
    backend: str = _setting(
        "evm",
        "Ledger backend. evm: any EVM chain over JSON-RPC (Ethereum, Besu, Quorum, anvil).",
        lambda v: None if v == "evm" else "must be evm",
    )
    rpc_url: str = _setting(
        "http://127.0.0.1:8545",
        "JSON-RPC endpoint of a ledger node (the node needs no keys: the gateway signs).",
        lambda v: None if v and _http_url(v) is None else "must be an http:// or https:// URL",
    )
    chain_id: int = _setting(
        31337,
        "Chain id the node must report; anything else is refused (31337: a local anvil).",
        _positive,
    )
    every_entries: int = _setting(
        10000, "Take and anchor a checkpoint once this many entries are new.", _positive
    )
    every_seconds: float = _setting(
        60.0,
        "Or once this many seconds have passed since the last checkpoint, if any entry is "
        "new. Nothing new: nothing is sent.",
        _positive,
    )
    confirmations: int = _setting(
        2,
        "Blocks (the including block counts as 1) before an anchor counts as anchored.",
        _between(1, 1000),
    )
    max_fee_gwei: float = _setting(
        50.0,
        "Cap on the fee per gas (EIP-1559 max fee), in gwei: above it anchors wait.",
        _positive,
    )
    priority_fee_gwei: float = _setting(
        1.0, "Tip per gas offered to the block producer, in gwei.", _not_negative
    )
    watch_blocks: int = _setting(
        64,
        "After an anchor counts as confirmed, it is checked again with each new block until "
        "its block is this deep: a re-organisation that moved it is noted, one that removed "
        "it sends the same transaction again. 0: not watched.",
        _between(0, 100_000),
    )
    replace_after_seconds: float = _setting(
        120.0,
        "An anchor transaction the node holds but has not mined after this long is replaced: "
        "same nonce, fees raised by at least 12.5 %, never above max_fee_gwei. One priced "
        "out by the base fee is replaced at once.",
        _positive,
    )
    rpc_timeout: float = _setting(5.0, "Seconds to wait for the node's answer.", _positive)
    poll_seconds: float = _setting(
        1.0, "How often the anchoring loop looks at the record and the ledger.", _positive
    )

    def cross_checks(self) -> list[tuple[str, str]]:
        if self.priority_fee_gwei > self.max_fee_gwei:
            return [("priority_fee_gwei", "must not be above max_fee_gwei")]
        return []


@dataclass(frozen=True)
class MetricsSection(_Section):
    """Prometheus metrics of the running gateway (also what ``didgw status`` reads)."""

    enabled: bool = _setting(True, "Serve metrics over HTTP while the gateway runs.")
    host: str = _setting(
        "127.0.0.1",
        "Address to serve them on (loopback: only this machine may read them). They are "
        "served without authentication: any other address is an exposure warning (config "
        "check, and the log at start).",
    )
    port: int = _setting(9464, "Port to serve them on.", _port)

    def exposures(self) -> list[tuple[str, str]]:
        if not self.enabled or is_loopback(self.host):
            return []
        return [
            (
                "host",
                f'the metrics are served on {_listening_where(self.host)} ("{self.host}"), '
                "without authentication: anyone who can reach the port reads the gateway's "
                "figures (devices by status, readings and refusals, connections, anchoring). "
                "Keep 127.0.0.1, or let a firewall or an authenticating proxy decide who reads "
                "them.",
            )
        ]


@dataclass(frozen=True)
class MeterSection(_Section):
    """Smart meters on a serial line (DSMR P1, every variant), read and vouched for."""

    enabled: bool = _setting(
        False,
        "Read every enrolled meter (didgw meter enroll) while the gateway runs, and put its "
        "readings on the record signed by the meter key the gateway holds.",
    )
    baudrate: int = _setting(
        115200,
        "Serial speed; DSMR 4 and 5 say 115200, DSMR 2.2, 3 and EasyMeter's Q3D 9600.",
        _between(300, 4_000_000),
    )
    bytesize: int = _setting(
        8, "Data bits per character; DSMR 4 and 5 say 8, DSMR 2.2 and 3 say 7.", _between(5, 8)
    )
    parity: str = _setting(
        "N",
        "Parity: N (none, DSMR 4 and 5), E (even, DSMR 2.2, 3 and the Q3D at 9600 7E1) or O.",
        lambda v: None if v in ("N", "E", "O") else "must be N, E or O",
    )
    stopbits: int = _setting(1, "Stop bits; DSMR 5.0 says 1.", _between(1, 2))
    read_timeout: float = _setting(
        0.1, "Seconds a read waits for bytes before looking again.", _positive
    )
    reconnect_seconds: float = _setting(
        2.0,
        "After the port fails or vanishes (cable unplugged, USB adapter gone), seconds "
        "between attempts to open it again.",
        _positive,
    )
    record_every_seconds: float = _setting(
        10.0,
        "At most one reading per meter on the record this often (a meter sends a telegram "
        "every second). 0: every telegram.",
        _not_negative,
    )


@dataclass(frozen=True)
class InverterSection(_Section):
    """Solar inverters over SunSpec Modbus (TCP or RTU), read by the gateway and vouched for."""

    enabled: bool = _setting(
        False,
        "Read every enrolled, active inverter (didgw inverter enroll) while the gateway runs, "
        "and put its readings on the record signed by the inverter key the gateway holds.",
    )
    poll_seconds: float = _setting(
        10.0,
        "Read each inverter this often; each good read is one reading on the record (the "
        "meters' record_every_seconds, for production).",
        _seconds_between(0.1, 86400),
    )
    timeout_seconds: float = _setting(
        2.0,
        "Seconds a Modbus request waits for the inverter's answer; no answer is counted "
        "(no_answer) and the connection is made again at the next poll.",
        _seconds_between(0.05, 60),
    )
    reconnect_seconds: float = _setting(
        5.0,
        "After an inverter did not answer or its link failed, seconds before trying again.",
        _positive,
    )


@dataclass(frozen=True)
class MarketSection(_Section):
    """The local market where households trade solar surplus, settled against their meters."""

    enabled: bool = _setting(
        False,
        "Take households' orders over MQTT, clear every interval, settle it against the "
        "meters once their readings are in.",
    )
    interval_seconds: int = _setting(
        900,
        "Length of a trading interval (orders name its start; it clears at its start).",
        _between(1, 86400),
    )
    max_ahead_intervals: int = _setting(
        96, "How many intervals ahead an order may be placed.", _between(1, 10000)
    )
    retail_price: int = _setting(
        300,
        "Grid import price in milli-euro per kWh (300: EUR 0.30/kWh): what a shortfall and "
        "any import beyond what was bought cost.",
        _not_negative,
    )
    feed_in_price: int = _setting(
        80,
        "Feed-in tariff in milli-euro per kWh: what export beyond what was sold, and energy "
        "bought but not used, earn.",
        _not_negative,
    )
    production_tolerance_wh: int = _setting(
        100,
        "A household with enrolled inverters is credited, per interval, with metered export "
        "up to its inverters' production plus this many Wh; export beyond it is held, not "
        "paid (docs/market.md, Settlement).",
        _between(0, 10**9),
    )
    max_order_wh: int = _setting(100_000, "Largest order quantity, in Wh.", _between(1, 10**9))
    max_price: int = _setting(
        5000, "Highest order price, in milli-euro per kWh.", _between(1, 10**7)
    )
    tick_seconds: float = _setting(
        0.2, "How often the market looks for intervals to clear and settle.", _positive
    )

    def cross_checks(self) -> list[tuple[str, str]]:
        if self.feed_in_price > self.retail_price:
            return [("feed_in_price", "must not be above retail_price")]
        return []


@dataclass(frozen=True)
class HomeAssistantSection(_Section):
    """Home Assistant MQTT discovery for the households that opted in (didgw homeassistant)."""

    enabled: bool = _setting(
        False,
        "Publish the discovery message and the states of every household that opted in "
        "(needs [mqtt]); docs/homeassistant.md.",
    )
    state_every_seconds: float = _setting(
        10.0,
        "A household's state goes out when it changed, at most this often.",
        lambda v: None if 1 <= v <= 3600 else "must be between 1 and 3600",
    )
    poll_seconds: float = _setting(
        1.0,
        "How often the gateway looks for changes (readings, orders, statements, opt-ins).",
        lambda v: None if 0.1 <= v <= 60 else "must be between 0.1 and 60",
    )


@dataclass(frozen=True)
class CredentialsSection(_Section):
    """Verifiable credentials: what the gateway issues, its revocation list, people's sessions."""

    enabled: bool = _setting(
        True,
        "When the gateway runs: publish the revocation list (MQTT, retained) and let people "
        "authenticate with credential presentations (the wallet protocol: "
        "docs/protocol/people.md).",
    )
    validity_days: int = _setting(
        365, "How long a credential the gateway issues is valid.", _between(1, 3650)
    )
    status_list_url: str = _setting(
        "",
        "The id of the gateway's revocation list (statusListCredential in its credentials). "
        "Empty: urn:didgw:status-list:<gateway DID>.",
    )
    status_valid_seconds: int = _setting(
        86400,
        "validUntil of each signed revocation list: a verifier holding an older copy fails "
        "closed. The running gateway re-signs the list at half this age and on every "
        "revocation.",
        _between(60, 31 * 86400),
    )
    presentation_max_age_seconds: int = _setting(
        300,
        "A key-binding JWT older than this (its iat) is refused.",
        _between(10, 3600),
    )
    session_seconds: int = _setting(
        3600,
        "How long a person's broker account lasts after a presentation.",
        _between(10, 86400),
    )


@dataclass(frozen=True)
class HttpSection(_Section):
    """People's front door: issuance, sign-in, pages and the JSON API, over HTTP(S)."""

    enabled: bool = _setting(True, "Serve HTTP while the gateway runs.")
    host: str = _setting(
        "127.0.0.1",
        "Address to listen on. Loopback may be plain HTTP; any other address is served over "
        "HTTPS only (cert_file and key_file, or a certificate the gateway's own certificate "
        "authority issues for public_url's host at start).",
    )
    port: int = _setting(8443, "Port to listen on.", _port)
    cert_file: str = _setting(
        "",
        "The server's certificate chain (PEM), for a certificate from another authority. "
        "Empty: plain HTTP on loopback, else one issued by the gateway's certificate "
        "authority (tls/http.crt in the state directory, renewed at start when due).",
        _existing_file,
    )
    key_file: str = _setting(
        "", "The private key of cert_file (PEM), readable by its owner alone.", _secret_file
    )
    public_url: str = _setting(
        "",
        "The address wallets and browsers use to reach this server (scheme, host, port): the "
        "credential issuer's identifier, where wallets post presentations, the passkeys' "
        "relying party (its host must be a name, not an address, for passkeys). Empty: "
        "http://localhost:<port> on loopback, else https://<host>:<port>.",
        _http_url,
    )
    session_idle_minutes: int = _setting(
        30, "A signed-in session ends after this long without a request.", _between(1, 1440)
    )
    session_hours: int = _setting(
        12, "A signed-in session ends this long after sign-in, in use or not.", _between(1, 720)
    )
    source_rate: float = _setting(
        5.0,
        "Requests per second one address may make to the endpoints that need no sign-in "
        "(sign-in, issuance, metadata), after a burst of source_burst; more are answered "
        "429 with Retry-After.",
        _positive,
    )
    source_burst: int = _setting(30, "See source_rate.", _between(1, 100_000))
    max_pending_logins: int = _setting(
        1024,
        "Sign-in requests waiting for a wallet's answer, at most (each lives 5 minutes); "
        "past it a new sign-in is refused (503) rather than an old one forgotten.",
        _between(16, 1_000_000),
    )
    response_mode: str = _setting(
        "direct_post.jwt",
        "How a wallet sends its answer to a sign-in (OpenID4VP): direct_post.jwt encrypts "
        "it to a key made for that one sign-in, so the personal data it discloses is "
        "readable by the gateway alone, past any TLS proxy or log in between; direct_post "
        "sends it in the clear inside TLS, for wallets that cannot encrypt.",
        lambda v: (
            None
            if v in ("direct_post.jwt", "direct_post")
            else 'must be "direct_post.jwt" or "direct_post"'
        ),
    )
    demo_links: bool = _setting(
        False,
        "Serve one-time sign-in links (/demo/link/...), for didgw demo only: a signed-in "
        "person may turn her session into a link that hands it to the first browser that "
        "opens it within 10 minutes. Off loopback it is an exposure warning.",
    )

    def cross_checks(self) -> list[tuple[str, str]]:
        if bool(self.cert_file) != bool(self.key_file):
            return [("cert_file", "cert_file and key_file are set together or not at all")]
        return []

    def exposures(self) -> list[tuple[str, str]]:
        if not self.enabled or is_loopback(self.host):
            return []
        found: list[tuple[str, str]] = []
        if self.demo_links:
            found.append(
                (
                    "demo_links",
                    "one-time sign-in links (a demo's) are served to other machines: whoever "
                    "reads such a link first is signed in as the person who made it; turn "
                    "demo_links off outside didgw demo.",
                )
            )
        return [
            *found,
            (
                "host",
                f"people's front door is served over HTTPS on {_listening_where(self.host)} "
                f'("{self.host}"): sign-in, credential issuance and the API can be reached by '
                "other machines (each is rate-limited per address and needs a credential, a "
                "passkey or an API token to do anything).",
            ),
        ]

    def tls(self) -> bool:
        """HTTPS: an operator's certificate, or any address other than loopback."""
        return bool(self.cert_file) or not is_loopback(self.host)

    def base_url(self) -> str:
        """``public_url`` without a trailing slash, or what it defaults to."""
        if self.public_url:
            return self.public_url.rstrip("/")
        if not self.tls():
            return f"http://localhost:{self.port}"
        name = self.host.strip("[]")
        if name in ("", "0.0.0.0", "::"):  # noqa: S104 - naming it, not binding
            name = socket.gethostname()
        return f"https://{name if ':' not in name else f'[{name}]'}:{self.port}"


@dataclass(frozen=True)
class Config:
    """The whole configuration, and the file it came from."""

    gateway: GatewaySection = field(default_factory=GatewaySection)
    keys: KeysSection = field(default_factory=KeysSection)
    resolver: ResolverSection = field(default_factory=ResolverSection)
    mqtt: MqttSection = field(default_factory=MqttSection)
    tls: TlsSection = field(default_factory=TlsSection)
    devices: DevicesSection = field(default_factory=DevicesSection)
    coap: CoapSection = field(default_factory=CoapSection)
    anchor: AnchorSection = field(default_factory=AnchorSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    meter: MeterSection = field(default_factory=MeterSection)
    inverter: InverterSection = field(default_factory=InverterSection)
    market: MarketSection = field(default_factory=MarketSection)
    homeassistant: HomeAssistantSection = field(default_factory=HomeAssistantSection)
    credentials: CredentialsSection = field(default_factory=CredentialsSection)
    http: HttpSection = field(default_factory=HttpSection)
    source: str = "(built-in defaults)"
    #: what the file still says the old way (see :data:`MOVED`), one sentence each
    deprecations: tuple[str, ...] = ()

    def warnings(self) -> list[tuple[str, str]]:
        """The exposure warnings: ("section.key", why) for each valid setting that lets other
        machines reach what they should not by default (each section's ``exposures()``).
        ``didgw config check`` prints them and ``didgw run`` logs them, at WARNING."""
        return [
            (f"{name}.{key}", why)
            for name in SECTIONS
            for key, why in getattr(self, name).exposures()
        ]


SECTIONS: dict[str, type[_Section]] = {
    "gateway": GatewaySection,
    "keys": KeysSection,
    "resolver": ResolverSection,
    "mqtt": MqttSection,
    "tls": TlsSection,
    "devices": DevicesSection,
    "coap": CoapSection,
    "anchor": AnchorSection,
    "metrics": MetricsSection,
    "meter": MeterSection,
    "inverter": InverterSection,
    "market": MarketSection,
    "homeassistant": HomeAssistantSection,
    "credentials": CredentialsSection,
    "http": HttpSection,
}

#: Keys that moved: (old section, key) -> new section. The old place is still read, with
#: a deprecation (:attr:`Config.deprecations`, logged by :func:`load_config`); when both
#: places are set, the new one wins.
MOVED: dict[tuple[str, str], str] = {
    ("mqtt", "clock_skew_seconds"): "devices",
    ("mqtt", "max_reading_age_seconds"): "devices",
}

CONFIG_ENV = "DIDGW_CONFIG"
SYSTEM_CONFIG = Path("/etc/didgw/gateway.toml")


def find_config(explicit: str | None, env: Mapping[str, str]) -> Path | None:
    """Which file to read: --config, $DIDGW_CONFIG, systemd's config dir, /etc/didgw, or none.

    An explicitly named file must exist; the well-known locations are optional.
    """
    named = explicit or env.get(CONFIG_ENV)
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        return path
    candidates = [
        Path(d) / "gateway.toml" for d in env.get("CONFIGURATION_DIRECTORY", "").split(":") if d
    ]
    candidates.append(SYSTEM_CONFIG)
    return next((p for p in candidates if p.is_file()), None)


def load_config(path: Path | None) -> Config:
    """Read and validate ``path`` (None: all defaults). Raise :class:`ConfigError` on any fault."""
    if path is None:
        return Config()
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    config = parse_config(data, source=str(path))
    for note in config.deprecations:
        log.warning("%s: %s", path, note)
    return config


def parse_config(data: Mapping[str, Any], *, source: str) -> Config:
    """Validate a parsed TOML document against the schema."""
    errors: list[str] = []
    sections: dict[str, Any] = {}
    for name in data:
        if name not in SECTIONS:
            errors.append(f"unknown section [{name}] (known: {', '.join(SECTIONS)})")
    tables, deprecations, move_errors = _move_keys(data)
    errors.extend(move_errors)
    for name, cls in SECTIONS.items():
        table = tables.get(name, {})
        if not isinstance(table, dict):
            errors.append(f"[{name}] must be a table")
            continue
        values, section_errors = _parse_section(name, cls, table)
        errors.extend(section_errors)
        if not section_errors:
            section = cls(**values)
            errors.extend(f"[{name}] {key}: {reason}" for key, reason in section.cross_checks())
            sections[name] = section
    if errors:
        raise ConfigError("\n".join(f"{source}: {e}" for e in errors))
    return Config(**sections, source=source, deprecations=tuple(deprecations))


def _move_keys(data: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """The tables of ``data`` with the keys of :data:`MOVED` in their new sections; the
    deprecations to report; the errors in the old keys' values (named as written)."""
    tables = {name: dict(t) if isinstance(t, dict) else t for name, t in data.items()}
    deprecations: list[str] = []
    errors: list[str] = []
    for (old, key), new in MOVED.items():
        table, target = tables.get(old), tables.setdefault(new, {})
        if not isinstance(table, dict) or key not in table or not isinstance(target, dict):
            continue
        value = table.pop(key)
        note = f"[{old}] {key} is deprecated: use [{new}] {key}"
        if key in target:
            deprecations.append(f"{note} (both are set; [{new}] {key} wins)")
            continue
        deprecations.append(note)
        values, problems = _parse_section(old, SECTIONS[new], {key: value})
        errors.extend(problems)
        target.update(values)
    return tables, deprecations, errors


def _parse_section(
    name: str, cls: type[Any], table: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in table.items():
        if key not in fields:
            errors.append(f"[{name}] {key}: unknown key (known: {', '.join(fields)})")
            continue
        expected = hints[key]
        if not _has_type(value, expected):
            got = f"{type(value).__name__} {value!r}"
            errors.append(f"[{name}] {key}: must be {_type_name(expected)}, got {got}")
            continue
        check = fields[key].metadata.get("check")
        reason = check(value) if check else None
        if reason:
            errors.append(f"[{name}] {key}: {reason}, got {value!r}")
            continue
        values[key] = float(value) if expected is float else value
    return values, errors


def _has_type(value: Any, expected: Any) -> bool:
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, expected)


def _type_name(expected: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        expected, str(expected)
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def render_example() -> str:
    """The commented example config: every key, its default and what it does."""
    import textwrap

    lines = [
        "# didgw gateway configuration.",
        "#",
        "# Every key is optional: each line below shows the default, commented out.",
        "# Uncomment and change what you need. Generated from the schema in",
        "# gateway/config.py by `didgw config example`.",
    ]
    for name, cls in SECTIONS.items():
        lines += ["", f"# {(cls.__doc__ or '').strip()}", f"[{name}]"]
        for f in dataclasses.fields(cls):
            lines.append("")
            doc = textwrap.wrap(f.metadata["doc"], width=86)
            lines += [f"# {line}" for line in doc]
            lines.append(f"# {f.name} = {_toml_value(f.default)}")
    return "\n".join(lines) + "\n"


#: Where the installed service keeps its state (``StateDirectory=didgw`` in its unit).
SERVICE_STATE_DIR = Path("/var/lib/didgw")


def default_state_dir(env: Mapping[str, str]) -> Path:
    """Where state lives when nothing says otherwise: systemd's, else the installed service's
    (an administrator typing ``didgw device list`` means that gateway, not a new one in his
    home), else the XDG state home."""
    systemd = env.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd)
    if SERVICE_STATE_DIR.is_dir():
        return SERVICE_STATE_DIR
    xdg = env.get("XDG_STATE_HOME")
    base = (
        Path(xdg) if xdg else Path(env.get("HOME") or os.path.expanduser("~")) / ".local" / "state"
    )
    return base / "didgw"


def state_dir(config: Config, explicit: str | None, env: Mapping[str, str]) -> Path:
    """The state directory: --state-dir, $DIDGW_STATE_DIR, [gateway] state_dir, then the default."""
    chosen = explicit or env.get("DIDGW_STATE_DIR") or config.gateway.state_dir
    return Path(chosen).expanduser() if chosen else default_state_dir(env)
