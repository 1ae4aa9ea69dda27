"""Solar inverters the gateway vouches for: enrolment, their binding, their readings.

Like a P1 meter (``meter.py``), a SunSpec inverter has no key of its own: at enrolment
(``didgw inverter enroll``) the gateway makes one for it (``keys/inverters/<id>.pem``,
0600), registers its did:key as a device of kind ``inverter`` owned by the household
(``identity: vouched``), and records a statement it signs itself binding the inverter to
the household and to its Modbus link (entry of kind ``inverter_binding``, ``typ``
``didgw-inverter-binding+jws``). Each poll that checks out becomes a reading signed with
the inverter's key (``typ`` ``didgw-vouched-reading+jws``, ``type`` ``production``),
recorded as a ``vouched_reading`` entry with its power and lifetime energy in
``inverter_readings``.

Two rules keep the readings honest to the one inverter: the serial number of the common
model is bound (given at enrolment, else the first one seen) and a reading with another is
refused (``wrong_inverter``); lifetime energy never decreases, and a reading lower than the
last recorded one is refused (``energy_backwards``). No clock is read here: time comes in.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database

from gateway.chain.store import ChainStore, NewEntry
from gateway.db import write_transaction
from gateway.energy.meter import VOUCHED_READING, VOUCHED_TYP, append_vouched
from gateway.energy.modbus_link import LinkSpec
from gateway.energy.sunspec import InverterValues, Nameplate, SunSpecRefused, check_reading
from gateway.errors import DidgwError, RegistryError
from gateway.identity import keystore
from gateway.identity.did_key import did_from_public_key
from gateway.identity.signing import Signer, sign_jws
from gateway.registry import Registry

BINDING = "inverter_binding"
BINDING_TYP = "didgw-inverter-binding+jws"
INVERTER_KEYS = Path("keys") / "inverters"
MAX_SERIAL = 32  # characters: the common model's SN is 16 registers


class InverterError(DidgwError):
    code = "inverter_refused"


@dataclass(frozen=True)
class Inverter:
    did: str
    household: str
    link: str
    unit: int
    baudrate: int
    parity: str
    key_file: str
    serial: str | None
    binding_entry: int

    @property
    def spec(self) -> LinkSpec:
        return LinkSpec(self.link, self.unit, self.baudrate, self.parity)


_COLUMNS = "did, household, link, unit, baudrate, parity, key_file, serial, binding_entry"


def enroll(
    db: Database,
    registry: Registry,
    *,
    state_dir: Path,
    gateway: Signer,
    household: str,
    name: str,
    spec: LinkSpec,
    serial: str | None,
    actor: str,
    now: float,
    passphrase: bytes | None = None,
) -> Inverter:
    """Make the inverter's key, register its DID, record the gateway's binding statement."""
    spec.check()
    owner = registry.find(household)
    if owner is None or owner.kind != "household":
        raise InverterError(
            f"{household} is not a registered household; register it first "
            "(didgw device register DID --kind household)"
        )
    if serial is not None and not (0 < len(serial) <= MAX_SERIAL and serial.isprintable()):
        raise InverterError(f"serial {serial!r}: 1 to {MAX_SERIAL} printable characters")
    _check_link_free(db, spec)
    key = keystore.generate_key()
    did = did_from_public_key(keystore.public_bytes(key))
    directory = state_dir / INVERTER_KEYS
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"{did.removeprefix('did:key:')[-16:]}.pem"
    keystore.write_private_key(path, key, passphrase)
    now_ms = int(now * 1000)
    try:
        registry.register(
            did,
            name=name,
            kind="inverter",
            owner=household,
            capabilities=["reading"],
            metadata={"identity": "vouched", "vouched_by": gateway.did, "link": spec.link},
            actor=actor,
            now=now,
            reason="vouched inverter enrolled",
        )
    except RegistryError:
        path.unlink(missing_ok=True)
        raise
    body = {
        "type": "inverter-binding",
        "inverter": did,
        "household": household,
        "link": spec.link,
        "unit": spec.unit,
        "serial": serial,
        "vouched_by": gateway.did,
        "ts": now_ms,
    }
    token = sign_jws(_json(body), gateway, headers={"typ": BINDING_TYP}).encode()
    store = ChainStore(db)
    try:
        with write_transaction(db.conn):
            [entry] = store.append_within([NewEntry(BINDING, gateway.did, token)], now_ms=now_ms)
            db.execute(
                f"INSERT INTO inverters ({_COLUMNS}, created_ms) "  # noqa: S608 - constant
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    did,
                    household,
                    spec.link,
                    spec.unit,
                    spec.baudrate,
                    spec.parity,
                    str(path),
                    serial,
                    entry.seq,
                    now_ms,
                ],
            )
    except BaseException:
        store.resync()
        raise
    return Inverter(
        did, household, spec.link, spec.unit, spec.baudrate, spec.parity, str(path), serial,
        entry.seq,
    )  # fmt: skip


def _check_link_free(db: Database, spec: LinkSpec) -> None:
    """Refuse a second inverter on the same link and unit, a serial line with other line
    settings than the inverters already on it, and a meter's serial port."""
    for other in inverters(db):
        if other.link != spec.link:
            continue
        if other.unit == spec.unit:
            raise InverterError(
                f"{spec.describe()}: inverter {other.did} is enrolled there already"
            )
        if not spec.is_tcp and (other.baudrate, other.parity) != (spec.baudrate, spec.parity):
            raise InverterError(
                f"{spec.link}: the inverters on this line use {other.baudrate} 8"
                f"{other.parity}1; all on one line share its settings"
            )
    if not spec.is_tcp:
        meter = db.execute("SELECT did FROM meters WHERE port = ?", [spec.link]).fetchone()
        if meter is not None:
            raise InverterError(f"{spec.link} is the port of meter {meter[0]}")


def inverters(db: Database, household: str | None = None) -> list[Inverter]:
    sql = f"SELECT {_COLUMNS} FROM inverters"  # noqa: S608 - constant
    args: list[str] = []
    if household is not None:
        sql += " WHERE household = ?"
        args.append(household)
    return [Inverter(*row) for row in db.execute(sql + " ORDER BY created_ms", args).fetchall()]


@dataclass(frozen=True)
class InverterReading:
    inverter: str
    ts: int  # Unix ms, the gateway's clock
    power_w: int
    energy_wh: int
    entry: int


def latest_readings(conn: sqlite3.Connection, household: str) -> list[InverterReading]:
    """The newest recorded reading of each of the household's active inverters (for a
    household's live figures: its production now and to date)."""
    rows = conn.execute(
        "SELECT r.inverter, r.ts, r.power_w, r.energy_wh, r.entry FROM inverters i "
        "JOIN devices d ON d.did = i.did AND d.status = 'active' "
        "JOIN inverter_readings r ON r.inverter = i.did AND r.seq = "
        "(SELECT max(seq) FROM inverter_readings WHERE inverter = i.did) "
        "WHERE i.household = ? ORDER BY i.created_ms",
        [household],
    ).fetchall()
    return [InverterReading(*row) for row in rows]


class InverterRecorder:
    """Puts one inverter's polls on the record as vouched readings.

    ``record`` is called from the inverter's poller thread over a database connection of
    its own; the entry and its row in ``inverter_readings`` are one transaction.
    """

    def __init__(self, inverter: Inverter, db: Database, signer: Signer, gateway_did: str) -> None:
        if signer.did != inverter.did:
            raise InverterError(f"{inverter.key_file} does not hold the key of {inverter.did}")
        self.inverter = inverter
        self._db = db
        self._store = ChainStore(db)
        self._signer = signer
        self._gateway = gateway_did
        self._serial = inverter.serial
        self._seq = self._store.last_key(inverter.did, VOUCHED_READING) or 0
        row = db.conn.execute(
            "SELECT energy_wh FROM inverter_readings WHERE inverter = ? ORDER BY seq DESC LIMIT 1",
            [inverter.did],
        ).fetchone()
        self._last_energy: int | None = None if row is None else int(row[0])
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {"recorded": 0}

    def refused(self, reason: str) -> None:
        """Count a poll that came to nothing (a reason of ``sunspec.REASONS``)."""
        with self._lock:
            self.counts[reason] = self.counts.get(reason, 0) + 1

    def record(self, nameplate: Nameplate, values: InverterValues, now_ms: int) -> int:
        """Record the poll; the entry's seq. Raises :class:`SunSpecRefused` (counted) for
        another inverter or energy gone backwards."""
        with self._lock:
            try:
                check_reading(
                    nameplate, values, serial=self._serial, last_energy_wh=self._last_energy
                )
            except SunSpecRefused as refusal:
                self.counts[refusal.reason] = self.counts.get(refusal.reason, 0) + 1
                raise
            seq = self._seq + 1
            body = {
                "did": self.inverter.did,
                "seq": seq,
                "ts": now_ms,
                "type": "production",
                "values": values.as_json(),
                "inverter": {
                    "manufacturer": nameplate.manufacturer,
                    "model": nameplate.model,
                    "version": nameplate.version,
                    "serial": nameplate.serial,
                },
                "vouched_by": self._gateway,
            }
            token = sign_jws(_json(body), self._signer, headers={"typ": VOUCHED_TYP})
            entry = self._append(nameplate, values, token.encode(), seq, now_ms)
            self._seq, self._last_energy = seq, values.energy_wh
            self._serial = nameplate.serial
            self.counts["recorded"] += 1
            return entry

    def _append(
        self, nameplate: Nameplate, values: InverterValues, token: bytes, seq: int, now_ms: int
    ) -> int:
        conn = self._db.conn

        def rows(entry: int) -> None:
            conn.execute(
                "INSERT INTO inverter_readings (inverter, seq, ts, power_w, energy_wh, "
                "entry) VALUES (?, ?, ?, ?, ?, ?)",
                [self.inverter.did, seq, now_ms, values.power_w, values.energy_wh, entry],
            )
            if self._serial is None:
                conn.execute(
                    "UPDATE inverters SET serial = ? WHERE did = ?",
                    [nameplate.serial, self.inverter.did],
                )

        try:
            return append_vouched(
                self._store,
                conn,
                NewEntry(VOUCHED_READING, self.inverter.did, token, seq),
                now_ms=now_ms,
                rows=rows,
            )
        except sqlite3.Error as exc:
            raise InverterError(f"cannot record a reading of {self.inverter.did}: {exc}") from None

    def close(self) -> None:
        self._db.close()


def _json(body: dict[str, object]) -> bytes:
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
