"""The solar inverters inside ``didgw run``: one poller thread per link.

Each thread owns one Modbus link (a TCP endpoint and unit, or a serial line with the
inverters on it) (``gateway/transports/modbus.py``): it finds
the SunSpec layout once per connection (``sunspec.discover``), then every
``[inverter] poll_seconds`` reads the common and the inverter model, and the recorder puts
what checks out on the record (``gateway/energy/inverter.py``). A poll that fails is
counted by its reason (``sunspec.REASONS``, the "sunspec" transport of ``didgw status``);
after a link failure the layout is found again, ``reconnect_seconds`` later.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import Config
from gateway.db import DB_NAME, connect
from gateway.energy import sunspec
from gateway.energy.inverter import Inverter, InverterError, InverterRecorder, inverters
from gateway.identity import keystore
from gateway.identity.signing import Signer
from gateway.ops.health import Health
from gateway.registry import Status
from gateway.service import Gateway

if TYPE_CHECKING:
    from gateway.transports.modbus import ModbusLink

log = logging.getLogger(__name__)

_LINK_DOWN = ("no_answer", "bad_registers")  # the connection is made again after these


class _Unit:
    """One inverter on a link: its recorder, its layout, when it is next due."""

    def __init__(self, recorder: InverterRecorder) -> None:
        self.recorder = recorder
        self.layout: sunspec.Layout | None = None
        self.streak: str | None = None  # the reason of the refusals since the last good poll
        self.due = 0.0  # time.monotonic() of its next poll
        self.connected = threading.Event()

    @property
    def inverter(self) -> Inverter:
        return self.recorder.inverter


class InverterPoller:
    """Polls the inverters of one link on its own thread until :meth:`stop`.

    A link is a TCP endpoint and unit id, or a serial line: the inverters on one RS-485
    line (each its own unit id) share its port and are polled in turn, one request on the
    line at a time, as Modbus RTU requires.
    """

    def __init__(
        self,
        recorders: list[InverterRecorder],
        *,
        poll_seconds: float,
        timeout: float,
        reconnect_seconds: float,
    ) -> None:
        self.units = [_Unit(r) for r in recorders]
        self._poll = poll_seconds
        self._timeout = timeout
        self._reconnect = reconnect_seconds
        self._stop = threading.Event()
        self._link: ModbusLink | None = None  # made on the poller's thread, at its first poll
        self._thread = threading.Thread(
            target=self._run,
            name=f"didgw-inverter-{recorders[0].inverter.did[-8:]}",
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self._timeout * 4 * len(self.units) + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            for unit in self.units:
                if self._stop.is_set():
                    break
                if unit.due <= time.monotonic():
                    started = time.monotonic()
                    unit.due = started + self._poll_once(unit)
            next_due = min(unit.due for unit in self.units)
            self._stop.wait(max(0.0, next_due - time.monotonic()))
        if self._link is not None:
            self._link.close()

    def _poll_once(self, unit: _Unit) -> float:
        """One poll of ``unit`` (finding its layout first if need be); seconds to the next."""
        from gateway.transports.modbus import ModbusLink

        try:
            if self._link is None:
                self._link = ModbusLink(unit.inverter.spec, timeout=self._timeout)
            read = self._link.reader(unit.inverter.unit)
            if unit.layout is None:
                unit.layout = sunspec.discover(read)
                log.info(
                    "inverter %s: SunSpec at %d, model %d",
                    unit.inverter.did,
                    unit.layout.base,
                    unit.layout.inverter.id,
                )
            nameplate, values = sunspec.poll(read, unit.layout)
            unit.connected.set()
            unit.recorder.record(nameplate, values, int(time.time() * 1000))
        except sunspec.SunSpecRefused as refusal:
            return self._refused(unit, refusal)
        except InverterError as exc:  # the record is unavailable: the next poll tries again
            log.error("%s", exc)
            return self._poll
        except Exception:  # a bug must not end the poller, nor pass silently
            log.exception("inverter %s: poll failed", unit.inverter.did)
            unit.recorder.refused("error")
            self._drop_link(unit)
            return self._reconnect
        if unit.streak is not None:
            log.info("inverter %s: read again after %s", unit.inverter.did, unit.streak)
            unit.streak = None
        return self._poll

    def _refused(self, unit: _Unit, refusal: sunspec.SunSpecRefused) -> float:
        if refusal.reason not in ("wrong_inverter", "energy_backwards"):
            unit.recorder.refused(refusal.reason)  # those two the recorder counts
        if refusal.reason != unit.streak:  # once per streak: a silent night is one line
            log.warning("inverter %s: %s", unit.inverter.did, refusal)
            unit.streak = refusal.reason
        if refusal.reason in _LINK_DOWN or unit.layout is None:
            self._drop_link(unit)
            return self._reconnect
        unit.layout = None  # the device may have changed under us: walk it again
        return self._poll

    def _drop_link(self, unit: _Unit) -> None:
        """Close the link (a half-read answer must not be taken for the next one's); the
        next poll of any unit opens it again. ``unit`` walks its map again."""
        unit.connected.clear()
        unit.layout = None
        if self._link is not None:
            self._link.close()
        self._link = None


class InverterSide:
    def __init__(
        self, config: Config, state_dir: Path, gateway: Gateway, passphrase: bytes | None
    ) -> None:
        settings = config.inverter
        by_link: dict[tuple[str, int | None], list[InverterRecorder]] = {}
        for inverter in inverters(gateway.db):
            device = gateway.registry.find(inverter.did)
            if device is None or device.status is not Status.ACTIVE:
                continue
            key = keystore.load_private_key(Path(inverter.key_file), passphrase)
            recorder = InverterRecorder(
                inverter, connect(state_dir / DB_NAME), Signer.for_did_key(key), gateway.did
            )
            # A serial line is one link whatever the unit; a TCP endpoint is one per unit.
            where = (inverter.link, inverter.unit if inverter.spec.is_tcp else None)
            by_link.setdefault(where, []).append(recorder)
        self.pollers = [
            InverterPoller(
                recorders,
                poll_seconds=settings.poll_seconds,
                timeout=settings.timeout_seconds,
                reconnect_seconds=settings.reconnect_seconds,
            )
            for recorders in by_link.values()
        ]

    def start(self) -> None:
        for poller in self.pollers:
            poller.start()
        log.info("reading %d inverters on %d links", len(self._units()), len(self.pollers))

    def _units(self) -> list[_Unit]:
        return [unit for poller in self.pollers for unit in poller.units]

    def links(self) -> dict[str, Callable[[], bool]]:
        """Each inverter's link by its DID: did its last poll get an answer?"""
        return {unit.inverter.did: unit.connected.is_set for unit in self._units()}

    def report_to(self, health: Health) -> None:
        """Each inverter's link, and what became of its polls (transport "sunspec")."""
        for unit in self._units():
            health.connections[f"inverter {unit.inverter.did[-8:]}"] = unit.connected.is_set
        health.readings.append(("sunspec", self._counts))

    def _counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for unit in self._units():
            counts = dict(unit.recorder.counts)
            counts["accepted"] = counts.pop("recorded", 0)
            for outcome, n in counts.items():
                total[outcome] = total.get(outcome, 0) + n
        return total

    def stop(self) -> None:
        for poller in self.pollers:
            poller.stop()
        for unit in self._units():
            log.info("inverter %s: %s", unit.inverter.did, json.dumps(unit.recorder.counts))
            unit.recorder.close()
