"""The solar inverters inside ``didgw run``: one poller thread per enrolled, active inverter.

Each thread owns its inverter's Modbus link (``gateway/transports/modbus.py``): it finds
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


class InverterPoller:
    """Polls one inverter on its own thread until :meth:`stop`."""

    def __init__(
        self,
        recorder: InverterRecorder,
        *,
        poll_seconds: float,
        timeout: float,
        reconnect_seconds: float,
    ) -> None:
        self.recorder = recorder
        self._poll = poll_seconds
        self._timeout = timeout
        self._reconnect = reconnect_seconds
        self._stop = threading.Event()
        self.connected = threading.Event()
        self._link: ModbusLink | None = None  # made on the poller's thread, at its first poll
        self._layout: sunspec.Layout | None = None
        self._streak: str | None = None  # the reason of the refusals since the last good poll
        self._thread = threading.Thread(
            target=self._run, name=f"didgw-inverter-{recorder.inverter.did[-8:]}", daemon=True
        )

    @property
    def inverter(self) -> Inverter:
        return self.recorder.inverter

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self._timeout * 4 + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            wait = self._poll_once()
            self._stop.wait(max(0.0, wait - (time.monotonic() - started)))
        if self._link is not None:
            self._link.close()

    def _poll_once(self) -> float:
        """One poll (finding the layout first if need be); the seconds until the next."""
        from gateway.transports.modbus import ModbusLink

        try:
            if self._link is None:
                self._link = ModbusLink(self.inverter.spec, timeout=self._timeout)
            if self._layout is None:
                self._layout = sunspec.discover(self._link.read)
                log.info(
                    "inverter %s: SunSpec at %d, model %d",
                    self.inverter.did,
                    self._layout.base,
                    self._layout.inverter.id,
                )
            nameplate, values = sunspec.poll(self._link.read, self._layout)
            self.connected.set()
            self.recorder.record(nameplate, values, int(time.time() * 1000))
        except sunspec.SunSpecRefused as refusal:
            return self._refused(refusal)
        except InverterError as exc:  # the record is unavailable: the next poll tries again
            log.error("%s", exc)
            return self._poll
        except Exception:  # a bug must not end the poller, nor pass silently
            log.exception("inverter %s: poll failed", self.inverter.did)
            self.recorder.refused("error")
            self._drop_link()
            return self._reconnect
        if self._streak is not None:
            log.info("inverter %s: read again after %s", self.inverter.did, self._streak)
            self._streak = None
        return self._poll

    def _refused(self, refusal: sunspec.SunSpecRefused) -> float:
        if refusal.reason not in ("wrong_inverter", "energy_backwards"):
            self.recorder.refused(refusal.reason)  # those two the recorder counts
        if refusal.reason != self._streak:  # once per streak: a silent night is one line
            log.warning("inverter %s: %s", self.inverter.did, refusal)
            self._streak = refusal.reason
        if refusal.reason in _LINK_DOWN or self._layout is None:
            self._drop_link()
            return self._reconnect
        self._layout = None  # the device may have changed under us: walk it again
        return self._poll

    def _drop_link(self) -> None:
        self.connected.clear()
        if self._link is not None:
            self._link.close()
        self._link, self._layout = None, None


class InverterSide:
    def __init__(
        self, config: Config, state_dir: Path, gateway: Gateway, passphrase: bytes | None
    ) -> None:
        settings = config.inverter
        self.pollers: list[InverterPoller] = []
        for inverter in inverters(gateway.db):
            device = gateway.registry.find(inverter.did)
            if device is None or device.status is not Status.ACTIVE:
                continue
            key = keystore.load_private_key(Path(inverter.key_file), passphrase)
            recorder = InverterRecorder(
                inverter, connect(state_dir / DB_NAME), Signer.for_did_key(key), gateway.did
            )
            self.pollers.append(
                InverterPoller(
                    recorder,
                    poll_seconds=settings.poll_seconds,
                    timeout=settings.timeout_seconds,
                    reconnect_seconds=settings.reconnect_seconds,
                )
            )

    def start(self) -> None:
        for poller in self.pollers:
            poller.start()
        log.info("reading %d inverters", len(self.pollers))

    def links(self) -> dict[str, Callable[[], bool]]:
        """Each inverter's link by its DID: did the last poll get an answer?"""
        return {p.inverter.did: p.connected.is_set for p in self.pollers}

    def report_to(self, health: Health) -> None:
        """Each inverter's link, and what became of its polls (transport "sunspec")."""
        for poller in self.pollers:
            health.connections[f"inverter {poller.inverter.did[-8:]}"] = poller.connected.is_set
        health.readings.append(("sunspec", self._counts))

    def _counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for poller in self.pollers:
            counts = dict(poller.recorder.counts)
            counts["accepted"] = counts.pop("recorded", 0)
            for outcome, n in counts.items():
                total[outcome] = total.get(outcome, 0) + n
        return total

    def stop(self) -> None:
        for poller in self.pollers:
            poller.stop()
        for poller in self.pollers:
            log.info("inverter %s: %s", poller.inverter.did, json.dumps(poller.recorder.counts))
            poller.recorder.close()
