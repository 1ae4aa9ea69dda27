"""A serial port (pyserial) as a source of bytes, with reconnection. The edge of the P1 meter.

It reads whatever bytes are waiting, in chunks, and leaves finding telegrams to the
sans-IO splitter (:mod:`gateway.energy.p1`): pyserial's ``read_until()`` reads one byte
per call, which costs most of a core at a telegram every 10 ms, against a few per cent for
chunked reads. When the port fails (cable unplugged, USB adapter gone, the device node
vanishes), it is closed and opened again every ``reconnect_seconds`` until it is back;
that is logged once when it goes and once when it returns.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SerialSettings:
    baudrate: int = 115200
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1
    read_timeout: float = 0.1
    reconnect_seconds: float = 2.0


class SerialReader:
    """Read ``port`` on a thread of its own and hand every chunk to ``on_bytes``."""

    def __init__(
        self,
        port: str,
        settings: SerialSettings,
        on_bytes: Callable[[bytes], None],
        *,
        name: str = "didgw-serial",
    ) -> None:
        self.port = port
        self._settings = settings
        self._on_bytes = on_bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.connected = threading.Event()
        self.reconnects = 0
        self.bytes_read = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _open(self) -> object:
        import serial

        s = self._settings
        return serial.Serial(
            self.port,
            baudrate=s.baudrate,
            bytesize=s.bytesize,
            parity=s.parity,
            stopbits=s.stopbits,
            timeout=s.read_timeout,
        )

    def _run(self) -> None:
        import serial

        down_logged = False
        while not self._stop.is_set():
            try:
                port = self._open()
            except (serial.SerialException, OSError, ValueError) as exc:
                if not down_logged:
                    log.warning("meter port %s unavailable (%s); retrying", self.port, exc)
                    down_logged = True
                self._stop.wait(self._settings.reconnect_seconds)
                continue
            if down_logged or self.reconnects:
                log.info("meter port %s is back", self.port)
            down_logged = False
            self.connected.set()
            try:
                self._pump(port)
            except (serial.SerialException, OSError) as exc:
                log.warning("meter port %s failed (%s); reconnecting", self.port, exc)
                down_logged = True
                self.reconnects += 1
            finally:
                self.connected.clear()
                with contextlib.suppress(serial.SerialException, OSError):
                    port.close()  # type: ignore[attr-defined]
            self._stop.wait(self._settings.reconnect_seconds)

    def _pump(self, port: object) -> None:
        read = port.read  # type: ignore[attr-defined]
        while not self._stop.is_set():
            waiting = port.in_waiting  # type: ignore[attr-defined]
            chunk = read(waiting if waiting > 0 else 1)
            if waiting == 0 and chunk:
                chunk += read(port.in_waiting)  # type: ignore[attr-defined]
            if chunk:
                self.bytes_read += len(chunk)
                self._on_bytes(chunk)
