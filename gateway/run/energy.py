"""The meters and the market inside ``didgw run``.

* :class:`MeterSide`: one serial reader thread per enrolled, active meter; each telegram
  that checks out is recorded as a vouched reading (``gateway/energy/meter.py``).
* :class:`MarketSide`: orders arrive on ``<prefix>/d/+/orders`` in the main process (they
  are few: a household sends a handful per interval), are checked and recorded on one
  market thread, and the answers, trades and statements go to ``<prefix>/d/<did>/market``.
  A timer clears each interval at its start and settles it once the meters' readings
  covering it are in.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.auth.broker import market_topic
from gateway.config import Config
from gateway.db import DB_NAME, connect
from gateway.energy.meter import MeterError, MeterRecorder, load_dlms_keys, meters
from gateway.energy.p1 import P1Splitter, Rejected, Telegram
from gateway.energy.variants import AUTO, VARIANTS
from gateway.identity import keystore
from gateway.identity.signing import Signer
from gateway.market.service import Market, Message
from gateway.ops.health import Health
from gateway.registry import Registry, Status
from gateway.service import Gateway, build_resolver, market_settings
from gateway.transports.serial import SerialReader, SerialSettings

if TYPE_CHECKING:
    from gateway.energy.dlms_frames import EncryptedSplitter

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


class MeterSide:
    def __init__(
        self, config: Config, state_dir: Path, gateway: Gateway, passphrase: bytes | None
    ) -> None:
        self._readers: list[SerialReader] = []
        self.recorders: list[MeterRecorder] = []
        self.splitters: list[P1Splitter | EncryptedSplitter] = []
        settings = config.meter
        serial_settings = SerialSettings(
            settings.baudrate,
            settings.bytesize,
            settings.parity,
            settings.stopbits,
            settings.read_timeout,
            settings.reconnect_seconds,
        )
        for meter in meters(gateway.db):
            device = gateway.registry.find(meter.did)
            if device is None or device.status is not Status.ACTIVE:
                continue
            variant = str(device.metadata.get("variant", AUTO))
            if variant not in VARIANTS:
                raise MeterError(f"meter {meter.did}: unknown variant {variant!r}")
            # An encrypted meter without its key (or with a key others may read) stops the
            # start, with the file and the fix named: nothing could be read from it anyway.
            dlms = (
                load_dlms_keys(state_dir, meter.did, variant)
                if VARIANTS[variant].encrypted
                else None
            )
            key = keystore.load_private_key(Path(meter.key_file), passphrase)
            recorder = MeterRecorder(
                meter,
                connect(state_dir / DB_NAME),
                Signer.for_did_key(key),
                gateway.did,
                every_ms=int(settings.record_every_seconds * 1000),
            )
            splitter: P1Splitter | EncryptedSplitter
            if dlms is not None:
                from gateway.energy.dlms_frames import EncryptedSplitter  # only when one is

                splitter = EncryptedSplitter(
                    variant, *dlms, last_counter=recorder.last_frame_counter
                )
            else:
                splitter = P1Splitter(variant=variant)
            self.recorders.append(recorder)
            self.splitters.append(splitter)
            self._readers.append(
                SerialReader(
                    meter.port,
                    serial_settings,
                    functools.partial(_feed, recorder, splitter),
                    name=f"didgw-meter-{meter.did[-8:]}",
                )
            )

    def start(self) -> None:
        for reader in self._readers:
            reader.start()
        log.info("reading %d meters", len(self._readers))

    def links(self) -> dict[str, Callable[[], bool]]:
        """Each meter's serial link by the meter's DID: is it up?"""
        return {
            r.meter.did: reader.connected.is_set
            for reader, r in zip(self._readers, self.recorders, strict=True)
        }

    def report_to(self, health: Health) -> None:
        """Each meter's serial link, and what became of its telegrams (transport "p1")."""
        for reader, recorder in zip(self._readers, self.recorders, strict=True):
            health.connections[f"meter {recorder.meter.did[-8:]}"] = reader.connected.is_set
        health.readings.append(("p1", self._counts))

    def _counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for recorder, splitter in zip(self.recorders, self.splitters, strict=True):
            counts = {**splitter.counts, **recorder.counts}
            counts["accepted"] = counts.pop("recorded", 0)
            # Not outcomes of a reading: every telegram is one of the others, noise is bytes,
            # and "skipped" telegrams are good ones left out by record_every_seconds.
            for key in ("telegrams", "noise_bytes", "skipped"):
                counts.pop(key, None)
            for outcome, n in counts.items():
                total[outcome] = total.get(outcome, 0) + n
        return total

    def stop(self) -> None:
        for reader in self._readers:
            reader.stop()
        for recorder, splitter in zip(self.recorders, self.splitters, strict=True):
            log.info(
                "meter %s: %s, %s",
                recorder.meter.did,
                json.dumps(splitter.counts),
                json.dumps(recorder.counts),
            )
            recorder.close()


def _feed(recorder: MeterRecorder, splitter: P1Splitter | EncryptedSplitter, chunk: bytes) -> None:
    for item in splitter.feed(chunk):
        if isinstance(item, Telegram):
            try:
                recorder.record(item, _now_ms())
            except Exception as exc:  # the record is unavailable: the next telegram tries again
                log.error("%s", exc)
        elif isinstance(item, Rejected):
            # A wrong key or a replay is the operator's business (or an attack): a warning
            # the 1st, 10th, 100th … time, so a meter refused every second does not flood
            # the journal; the rest is line noise. All of it is counted in the status.
            n = splitter.counts.get(item.reason, 0)
            loud = item.reason in ("decrypt", "replay") and str(n).strip("0") == "1"
            log.log(
                logging.WARNING if loud else logging.DEBUG,
                "telegram rejected (%s, %d so far): %s",
                item.reason,
                n,
                item.detail,
            )


class MarketSide:
    def __init__(self, config: Config, state_dir: Path, gateway: Gateway, signer: Signer) -> None:
        m = config.market
        db = connect(state_dir / DB_NAME)
        self._prefix = config.mqtt.prefix
        self._orders = (f"{self._prefix}/d/", "/orders")
        self.market = Market(
            db,
            Registry(db, gateway.resolver),
            build_resolver(config),
            signer,
            market_settings(config),
        )
        self._tick = m.tick_seconds
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="didgw-market")
        self._publish: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def subscriptions(self) -> list[str]:
        return [f"{self._prefix}/d/+/orders"]

    def handles(self, topic: str) -> bool:
        head, tail = self._orders
        return topic.startswith(head) and topic.endswith(tail)

    def on_message(self, topic: str, payload: bytes) -> None:
        head, tail = self._orders
        did = topic[len(head) : -len(tail)]
        future = self._pool.submit(self.market.submit, payload, _now_ms(), topic_did=did)
        future.add_done_callback(self._answered)

    async def submit_person(
        self, token: bytes, person: str, may_trade: Any, action: Any
    ) -> dict[str, Any]:
        """A person's order for a household, on the market thread; her answer."""
        loop = asyncio.get_running_loop()
        work = functools.partial(
            self.market.submit_person, person=person, may_trade=may_trade, action=action
        )
        body: dict[str, Any] = await loop.run_in_executor(self._pool, work, token, _now_ms())
        return body

    async def submit_passkey(
        self, order: Any, person: str, may_trade: Any, action: Any
    ) -> dict[str, Any]:
        """A person's order signed with her passkey (checked by the front door), on the
        market thread; her answer."""
        loop = asyncio.get_running_loop()
        work = functools.partial(
            self.market.submit_passkey, order, may_trade=may_trade, action=action
        )
        body: dict[str, Any] = await loop.run_in_executor(self._pool, work, _now_ms())
        return body

    def _answered(self, done: Any) -> None:
        try:
            answer = done.result()
        except Exception as exc:  # not the household's fault; it sends the order again
            log.error("market: cannot take an order: %s", exc)
            return
        if answer is not None:
            self._send([answer])

    def start(self, publish: Any) -> None:
        self._publish = publish
        self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        told: set[tuple[int, str]] = set()
        while True:
            try:
                messages, overdue = await loop.run_in_executor(self._pool, self._step, _now_ms())
                self._send(messages)
                told &= {(interval, household) for interval, household, _ in overdue}
                for interval, household, why in overdue:
                    if (interval, household) not in told:
                        told.add((interval, household))
                        log.warning(
                            "market: the statement of %s for interval %s waits: %s",
                            household,
                            interval,
                            why,
                        )
            except Exception as exc:  # the next tick tries again
                log.error("market: %s", exc)
            await asyncio.sleep(self._tick)

    def _step(self, now_ms: int) -> tuple[list[Message], list[tuple[int, str, str]]]:
        return self.market.tick(now_ms), self.market.overdue(now_ms)

    def _send(self, messages: list[Message]) -> None:
        for did, body in messages:
            payload = json.dumps(body, separators=(",", ":")).encode()
            self._publish(market_topic(did, self._prefix), payload)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=True)
        self.market.close()
