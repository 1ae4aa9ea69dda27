"""Modbus clients for SunSpec inverters: TCP and RTU on a serial line, through pymodbus.

Thin: :class:`ModbusLink` opens the connection an inverter was enrolled with and offers the
one operation the SunSpec core needs, ``read(address, count)`` of holding registers
(function 3), each under a timeout, with no retries of its own (the poller's next round is
the retry). A silent device, a broken link or a Modbus exception becomes a
:class:`~gateway.energy.sunspec.SunSpecRefused` (``no_answer`` or ``modbus_error``).

pymodbus (about 40 ms of import and 12 MiB when imported alone) is imported here only, and
this module only when an inverter is read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from gateway.energy.modbus_link import LinkSpec
from gateway.energy.sunspec import MAX_READ, SunSpecRefused


class ModbusLink:
    """One inverter's Modbus connection; not thread-safe (one poller thread owns it)."""

    def __init__(self, spec: LinkSpec, *, timeout: float) -> None:
        from pymodbus import FramerType
        from pymodbus.client import ModbusSerialClient, ModbusTcpClient

        # pymodbus logs each failure itself; the refusal raised below carries its message,
        # and the poller logs it once per streak, so its own lines would only repeat it.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        self.spec = spec
        self._client: Any
        if spec.is_tcp:
            host, port = spec.host_port()
            self._client = ModbusTcpClient(
                host, port=port, timeout=timeout, retries=0, reconnect_delay=0
            )
        else:
            self._client = ModbusSerialClient(
                spec.link,
                framer=FramerType.RTU,
                baudrate=spec.baudrate,
                bytesize=8,
                parity=spec.parity,
                stopbits=1,
                timeout=timeout,
                retries=0,
                reconnect_delay=0,
            )

    def reader(self, unit: int) -> Callable[[int, int], Sequence[int]]:
        """``read`` for another unit id on the same link (inverters sharing an RS-485 line)."""
        return lambda address, count: self.read(address, count, unit=unit)

    def read(self, address: int, count: int, *, unit: int | None = None) -> Sequence[int]:
        from pymodbus.exceptions import ModbusException

        unit = self.spec.unit if unit is None else unit

        if not 1 <= count <= MAX_READ:
            raise SunSpecRefused("bad_model", f"a read of {count} registers")
        try:
            answer = self._client.read_holding_registers(address, count=count, device_id=unit)
        except ModbusException as exc:
            self.close()  # a half-read answer must not be taken for the next one's
            raise SunSpecRefused("no_answer", f"{self._where(unit)}: {exc}") from None
        except OSError as exc:
            self.close()
            raise SunSpecRefused("no_answer", f"{self._where(unit)}: {exc}") from None
        if answer.isError():
            code = getattr(answer, "exception_code", None)
            raise SunSpecRefused(
                "modbus_error", f"{self._where(unit)}: exception {code} at {address}"
            )
        registers: list[int] = list(answer.registers)
        return registers

    def _where(self, unit: int) -> str:
        return self.spec.describe().rsplit(" unit ", 1)[0] + f" unit {unit}"

    def close(self) -> None:
        self._client.close()
