"""One-time sign-in links (``didgw demo`` only): a session handed to the first browser.

The demo signs its people in for real (OpenID4VP, with a wallet) and then asks the front
door for a link that hands each such session to a browser, so that a new user can click
and look around as each person. Nothing here signs anyone in: a link can only carry a
session that a presentation already opened, and only once.

* The link's secret is 32 random bytes; only its SHA-256 is kept (memory only: a restart
  forgets every link), looked up by that hash, so a guess is a miss like any other.
* A link lives :data:`LINK_LIFETIME_MS` and is taken once: :meth:`Handoffs.take` removes it.
* At most :data:`MAX_LINKS` wait at once; past that a new one is refused, nothing forgotten.

Sans-IO: time and randomness are passed in; the HTTP side is ``gateway/run/http/demo_links.py``.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from gateway.auth.web_sessions import WebSession

LINK_LIFETIME_MS = 10 * 60_000
MAX_LINKS = 64
SECRET_BYTES = 32


class TooManyLinks(Exception):
    """Every slot holds a link still waiting: none is made."""


@dataclass(frozen=True)
class Handoff:
    """What a link hands over: the session it was made from (and that session's token, to
    end it when the browser gets a fresh one)."""

    session: WebSession
    token: str
    expires_ms: int


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii", "replace")).hexdigest()


class Handoffs:
    """The links waiting for their browser (one event loop; not thread-safe)."""

    def __init__(self, random_bytes: Callable[[int], bytes], *, limit: int = MAX_LINKS) -> None:
        self._random, self._limit = random_bytes, limit
        self._waiting: dict[str, Handoff] = {}

    def make(self, session: WebSession, token: str, now_ms: int) -> str:
        """A new link's secret for ``session`` (whose cookie is ``token``)."""
        self._forget_old(now_ms)
        if len(self._waiting) >= self._limit:
            raise TooManyLinks(f"{self._limit} sign-in links are already waiting")
        secret = base64.urlsafe_b64encode(self._random(SECRET_BYTES)).rstrip(b"=").decode()
        expires = min(now_ms + LINK_LIFETIME_MS, session.expires_ms)
        self._waiting[_hash(secret)] = Handoff(session, token, expires)
        return secret

    def take(self, secret: str, now_ms: int) -> Handoff | None:
        """The link's hand-off, once; None for a link used, expired or never made."""
        if len(secret) > 2 * SECRET_BYTES:
            return None
        found = self._waiting.pop(_hash(secret), None)
        if found is None or now_ms >= found.expires_ms:
            return None
        return found

    def __len__(self) -> int:
        return len(self._waiting)

    def _forget_old(self, now_ms: int) -> None:
        for key in [k for k, h in self._waiting.items() if now_ms >= h.expires_ms]:
            del self._waiting[key]
