"""Meters the gateway vouches for: their identity, and their readings on the record.

A P1 meter cannot sign: it has no key and no way to hold one. The gateway that reads it
over its serial port therefore *vouches* for it. At enrolment (``didgw meter enroll``)
the gateway makes an Ed25519 key for the meter (``keys/meters/<id>.pem``, 0600, like the
gateway key), registers its did:key as a device of kind ``meter`` owned by the household,
with ``identity: vouched`` and ``vouched_by: <gateway DID>`` in its metadata. Each
telegram the gateway accepts (CRC and parse passed, the meter's equipment id the one
first seen on that port) becomes a reading signed with that key (``typ``
``didgw-vouched-reading+jws``, the payload naming ``vouched_by``) and is recorded as an
entry of kind ``vouched_reading``.

The trust is not the same as a self-signed device's (docs/market.md, "Meters on the P1
port, vouched for"): the
signature proves the *gateway* saw these values on this meter's port, not that the meter
produced them; whoever controls the gateway could forge them. What it adds over an
unsigned log is that every reading is bound to one meter identity, on the record, and
that a meter swapped on the port (another equipment id) is refused rather than
silently continued.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database

from gateway.chain.store import ChainStore, NewEntry
from gateway.db import write_transaction
from gateway.energy.p1 import Telegram
from gateway.energy.variants import AUTO, VARIANTS
from gateway.errors import DidgwError, RegistryError
from gateway.files import read_secret, write_private
from gateway.identity import keystore
from gateway.identity.did_key import did_from_public_key
from gateway.identity.signing import Signer, sign_jws
from gateway.registry import Registry

VOUCHED_READING = "vouched_reading"
VOUCHED_TYP = "didgw-vouched-reading+jws"


def append_vouched(
    store: ChainStore,
    conn: sqlite3.Connection,
    entry: NewEntry,
    *,
    now_ms: int,
    rows: Callable[[int], None],
) -> int:
    """Append a vouched reading (a meter's or an inverter's) and, in the same
    transaction, the device's own rows (``rows(entry seq)``), so that the record and the
    device's table never disagree; the entry's seq. On any failure nothing is kept and the
    store reads its head again; a database error reaches the caller to name the device."""
    try:
        with write_transaction(conn):
            [appended] = store.append_within([entry], now_ms=now_ms)
            rows(appended.seq)
    except BaseException:
        store.resync()
        raise
    return appended.seq


METER_KEYS = Path("keys") / "meters"


class MeterError(DidgwError):
    code = "meter_refused"


@dataclass(frozen=True)
class Meter:
    did: str
    household: str
    port: str
    key_file: str
    equipment_id: str | None
    peak_export_w: int


def enroll(
    db: Database,
    registry: Registry,
    *,
    state_dir: Path,
    gateway_did: str,
    household: str,
    name: str,
    port: str,
    actor: str,
    now: float,
    passphrase: bytes | None = None,
    variant: str = AUTO,
) -> Meter:
    """Make the meter's key, register its DID as a vouched meter of ``household`` whose
    telegrams are read as ``variant`` (:mod:`gateway.energy.variants`)."""
    if variant not in VARIANTS:
        raise MeterError(f"unknown meter variant {variant!r}; one of: {', '.join(VARIANTS)}")
    owner = registry.find(household)
    if owner is None or owner.kind != "household":
        raise MeterError(
            f"{household} is not a registered household; register it first "
            "(didgw device register DID --kind household)"
        )
    key = keystore.generate_key()
    did = did_from_public_key(keystore.public_bytes(key))
    directory = state_dir / METER_KEYS
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"{did.removeprefix('did:key:')[-16:]}.pem"
    keystore.write_private_key(path, key, passphrase)
    try:
        registry.register(
            did,
            name=name,
            kind="meter",
            owner=household,
            capabilities=["reading"],
            metadata={
                "identity": "vouched",
                "vouched_by": gateway_did,
                "port": port,
                "variant": variant,
            },
            actor=actor,
            now=now,
            reason="vouched meter enrolled",
        )
    except RegistryError:
        path.unlink(missing_ok=True)
        raise
    with write_transaction(db.conn):
        db.execute(
            "INSERT INTO meters (did, household, port, key_file, created_ms) "
            "VALUES (?, ?, ?, ?, ?)",
            [did, household, port, str(path), int(now * 1000)],
        )
    return Meter(did, household, port, str(path), None, 0)


def dlms_key_path(state_dir: Path, did: str) -> Path:
    """Where an encrypted meter's keys are kept (beside its signing key, 0600)."""
    return state_dir / METER_KEYS / f"{did.removeprefix('did:key:')[-16:]}.dlms"


_KEY_LINE = re.compile(rb"[0-9A-Fa-f]{32}")


def parse_dlms_keys(data: bytes, variant: str) -> tuple[bytes, bytes | None]:
    """The encryption key and, for a variant without a fixed one, the authentication key:
    one 32-digit hex key per line (encryption first). Never echoes what it read."""
    lines = [line.strip() for line in data.strip().splitlines()]
    if not lines or len(lines) > 2 or not all(_KEY_LINE.fullmatch(line) for line in lines):
        raise MeterError(
            "a meter key is 32 hex digits (16 bytes) on one line: the encryption key, then "
            "on a second line the authentication key where the meter has its own"
        )
    needs_auth = VARIANTS[variant].authentication_key is None
    if needs_auth != (len(lines) == 2):
        wanted = "an encryption and an authentication key" if needs_auth else "one key"
        raise MeterError(f"a {variant} meter takes {wanted}")
    keys = [binascii.unhexlify(line) for line in lines]
    return keys[0], keys[1] if needs_auth else None


def set_dlms_keys(state_dir: Path, did: str, variant: str, data: bytes) -> Path:
    """Check and keep an encrypted meter's keys (0600; replaces earlier ones)."""
    if not VARIANTS[variant].encrypted:
        raise MeterError(f"{did} is a {variant} meter: its telegrams are not encrypted")
    parse_dlms_keys(data, variant)
    path = dlms_key_path(state_dir, did)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(path, data.strip() + b"\n", replace=True, error=MeterError)
    return path


def load_dlms_keys(state_dir: Path, did: str, variant: str) -> tuple[bytes, bytes | None]:
    """An encrypted meter's keys; refused when missing or readable by group or others."""
    path = dlms_key_path(state_dir, did)
    data = read_secret(path, f"the key file of meter {did}", MeterError, max_bytes=1024)
    return parse_dlms_keys(data, variant)


def meters(db: Database, household: str | None = None) -> list[Meter]:
    sql = "SELECT did, household, port, key_file, equipment_id, peak_export_w FROM meters"
    args: list[str] = []
    if household is not None:
        sql += " WHERE household = ?"
        args.append(household)
    return [Meter(*row) for row in db.execute(sql + " ORDER BY created_ms", args).fetchall()]


class MeterRecorder:
    """Puts one meter's telegrams on the record as vouched readings.

    ``record`` is called from the meter's reader thread; it has its own database
    connection and writes the entry and its registers in one transaction.
    """

    def __init__(
        self,
        meter: Meter,
        db: Database,
        signer: Signer,
        gateway_did: str,
        *,
        every_ms: int = 0,
    ) -> None:
        if signer.did != meter.did:
            raise MeterError(f"{meter.key_file} does not hold the key of {meter.did}")
        self.meter = meter
        self._db = db
        self._store = ChainStore(db)
        self._signer = signer
        self._gateway = gateway_did
        self._every = every_ms
        self._equipment = meter.equipment_id
        self._peak = meter.peak_export_w
        self._seq = self._store.last_key(meter.did, VOUCHED_READING) or 0
        self.last_frame_counter = self._recorded_counter()
        self._last_ms: int | None = None
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {"recorded": 0, "skipped": 0, "wrong_meter": 0}

    def _recorded_counter(self) -> int:
        """The frame counter of the last reading on the record (encrypted meters), so a
        frame recorded before a restart is not taken again after it; -1 when none."""
        entry = (
            self._store.find_key(self.meter.did, VOUCHED_READING, self._seq) if self._seq else None
        )
        if entry is None or entry.payload is None:
            return -1
        try:
            payload = entry.payload.split(b".")[1]
            body = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
            return int(body.get("frame_counter", -1))
        except (IndexError, ValueError, TypeError, AttributeError):
            return -1

    def record(self, telegram: Telegram, now_ms: int) -> int | None:
        """Record the telegram (the entry's seq), or None when skipped or refused."""
        with self._lock:
            if self._equipment is not None and telegram.equipment_id != self._equipment:
                self.counts["wrong_meter"] += 1
                return None
            if self._last_ms is not None and now_ms - self._last_ms < self._every:
                self.counts["skipped"] += 1
                return None
            seq = self._seq + 1
            body = {
                "did": self.meter.did,
                "seq": seq,
                "ts": now_ms,
                "type": "energy",
                "values": telegram.values(),
                "equipment_id": telegram.equipment_id,
                "vouched_by": self._gateway,
                "variant": telegram.variant,
            }
            if telegram.frame_counter is not None:
                body["frame_counter"] = telegram.frame_counter
            token = sign_jws(
                json.dumps(body, separators=(",", ":")).encode(),
                self._signer,
                headers={"typ": VOUCHED_TYP},
            )
            entry = self._append(telegram, token.encode(), seq, now_ms)
            self._seq, self._last_ms = seq, now_ms
            self.counts["recorded"] += 1
            return entry

    def _append(self, telegram: Telegram, token: bytes, seq: int, now_ms: int) -> int:
        conn = self._db.conn

        def rows(entry: int) -> None:
            conn.execute(
                "INSERT INTO meter_readings (meter, seq, ts, import_wh, export_wh, "
                "power_export_w, entry) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    self.meter.did,
                    seq,
                    now_ms,
                    telegram.total_import_wh,
                    telegram.total_export_wh,
                    telegram.power_export_w,
                    entry,
                ],
            )
            if self._equipment is None or telegram.power_export_w > self._peak:
                conn.execute(
                    "UPDATE meters SET equipment_id = ?, peak_export_w = max(peak_export_w, ?) "
                    "WHERE did = ?",
                    [telegram.equipment_id, telegram.power_export_w, self.meter.did],
                )

        try:
            entry = append_vouched(
                self._store,
                conn,
                NewEntry(VOUCHED_READING, self.meter.did, token, seq),
                now_ms=now_ms,
                rows=rows,
            )
        except sqlite3.Error as exc:
            raise MeterError(f"cannot record a reading of {self.meter.did}: {exc}") from None
        self._equipment = telegram.equipment_id
        self._peak = max(self._peak, telegram.power_export_w)
        return entry

    def close(self) -> None:
        self._db.close()
