"""Broker sessions as tokens: what the gateway gives a device or a person that authenticated,
and how it takes it back.

A session is a token the gateway seals (``gateway/auth/broker_tokens.py``), checked by the
broker's didgw plugin (``broker-plugin/didgw_auth.c``) with no change to the broker's
accounts: a first session, a renewal and an expiry cost the broker nothing. Taking sessions
back is the **deny file** in the token directory (``[mqtt] token_dir``): one line
``<did> <unix s>`` per DID whose tokens issued at or before that second are void. The
plugin re-reads it when it changes (it checks every tick) and disconnects those DIDs at
once; a DID that authenticates again later gets a newer token, which passes (a suspended
device that is resumed, a re-keyed one). A line is dropped once no token it voids can
still be valid: :data:`KEEP_SECONDS` (the longest a token lives) after its second.

The file is replaced whole (a new file renamed over the old), so the broker never reads
half of it; it is written on the thread that asks (a few KB for thousands of DIDs).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from gateway.auth import broker_tokens
from gateway.errors import StateError

log = logging.getLogger(__name__)

#: A deny line is kept this long after its second: longer than any token lives (the
#: longest session any config allows, [mqtt] and [credentials] session_seconds).
KEEP_SECONDS = 604_800 + 60
DENY_FILE = "deny"


class BrokerSessions:
    """Mints session tokens and keeps the deny file of one token directory."""

    def __init__(
        self,
        key: bytes,
        prefix: str,
        directory: Path,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key, self._prefix = key, prefix
        self.deny_path = directory / DENY_FILE
        self._random, self._clock = random_bytes, clock
        self._denied: dict[str, int] = self._read()
        self._write()  # the file exists from the start: without it the plugin refuses all

    def token(self, did: str, kind: str, expires_ms: int) -> str:
        """A token for ``did`` (``device`` or ``person``) valid until ``expires_ms``."""
        now = int(self._clock())
        return broker_tokens.mint(
            self._key,
            sub=did,
            kind=kind,
            prefix=self._prefix,
            now=now,
            lifetime=max(1, expires_ms // 1000 - now),
            random_bytes=self._random(broker_tokens.JTI_BYTES),
        )

    def void(self, dids: list[str] | set[str], at: float | None = None) -> None:
        """Void every token of ``dids`` issued up to now (or ``at``): the broker cuts them
        off within a tick of the file's replacement."""
        when = self._clock() if at is None else at
        self.void_each(dict.fromkeys(dids, when))

    def void_each(self, changes: Mapping[str, float]) -> None:
        """Void each DID's tokens issued up to its time, in one write of the file."""
        for did, at in changes.items():
            self._denied[did] = max(int(at), self._denied.get(did, 0))
        self._write()

    def denied(self) -> dict[str, int]:
        return dict(self._denied)

    def _read(self) -> dict[str, int]:
        try:
            text = self.deny_path.read_text(encoding="ascii")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            raise StateError(f"cannot read the deny file {self.deny_path}: {exc}") from None
        found: dict[str, int] = {}
        for line in text.splitlines():
            did, _, second = line.partition(" ")
            if second.isdigit():
                found[did] = int(second)
        return found

    def _write(self) -> None:
        oldest = int(self._clock()) - KEEP_SECONDS
        self._denied = {d: s for d, s in self._denied.items() if s >= oldest}
        text = broker_tokens.deny_file_text(self._denied)
        new = self.deny_path.with_name(f".{DENY_FILE}.new")
        try:
            self.deny_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            with open(new, "w", encoding="ascii") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(new, 0o640)  # DIDs of people too: the broker's group reads it, no one else
            os.replace(new, self.deny_path)
        except OSError as exc:
            raise StateError(
                f"cannot write the broker's deny file {self.deny_path}: {exc.strerror}"
            ) from None
