"""Where an inverter is: its Modbus link as enrolled, checked before it is stored.

``tcp://HOST:PORT`` for Modbus TCP, or an absolute serial device path for Modbus RTU
(with its baud rate and parity; 8 data bits, 1 stop bit), and the unit id (0-247). Data
only: the connection itself is ``gateway/transports/modbus.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.errors import DidgwError

PARITIES = ("N", "E", "O")


class LinkError(DidgwError):
    code = "bad_link"


@dataclass(frozen=True)
class LinkSpec:
    """Where an inverter is: ``tcp://host:port`` or a serial device (RTU), and its unit id."""

    link: str
    unit: int = 1
    baudrate: int = 9600
    parity: str = "N"

    @property
    def is_tcp(self) -> bool:
        return self.link.startswith("tcp://")

    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.link)
        if parts.hostname is None:
            raise LinkError(f"{self.link}: no host")
        return parts.hostname, parts.port or 502

    def check(self) -> LinkSpec:
        """This spec, or a :class:`LinkError` saying what is wrong with it."""
        if not 0 <= self.unit <= 247:
            raise LinkError(f"unit {self.unit}: a Modbus unit id is 0 to 247")
        if self.is_tcp:
            try:
                self.host_port()
                parts = urlsplit(self.link)
            except ValueError as exc:
                raise LinkError(f"{self.link}: {exc}") from None
            if parts.path not in ("", "/") or parts.query or parts.username:
                raise LinkError(f"{self.link}: give tcp://HOST:PORT and nothing else")
        elif "://" in self.link:
            raise LinkError(f"{self.link}: give tcp://HOST:PORT or a serial device path")
        elif not self.link.startswith("/"):
            raise LinkError(f"{self.link}: a serial device is an absolute path (/dev/…)")
        if self.parity not in PARITIES:
            raise LinkError(f"parity {self.parity}: N, E or O")
        if not 300 <= self.baudrate <= 4_000_000:
            raise LinkError(f"baud rate {self.baudrate}: 300 to 4000000")
        return self

    def describe(self) -> str:
        if self.is_tcp:
            return f"{self.link} unit {self.unit}"
        return f"{self.link} ({self.baudrate} 8{self.parity}1) unit {self.unit}"
