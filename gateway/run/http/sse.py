"""Server-sent event streams for signed-in people, in one place (the household's *Now*,
the facility manager's live counts).

A stream belongs to a session; a :class:`StreamBook` holds a part's open streams, bounded
per session and in all, and one task (:meth:`StreamBook.watch`) that, while any is open,
ends those whose session ended (checked every :data:`POLL_SECONDS` on the desk thread
without touching the session: a stream does not keep a session from going idle, and a
revoked or suspended credential ends it within a second) and lets the part push what is
new (its ``tick``). Each stream's handler (:meth:`StreamBook.serve`) writes what it is
given, a comment every :data:`KEEPALIVE_SECONDS`, and ``event: end`` when its session ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.auth.web_sessions import WebSessions
from gateway.run.http.server import SESSION_COOKIE, HttpEdge, words
from gateway.transports import web

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
KEEPALIVE_SECONDS = 15.0


@dataclass(eq=False)
class Stream:
    """One open stream: its session's key and token, what it shows (``topic``)."""

    session: str  # the session's CSRF token: a key that is not the cookie
    token: str
    topic: str
    latest: dict[str, Any] | None = None
    ended: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, data: dict[str, Any]) -> None:
        if not self.ended:
            self.latest = data
            self.wake.set()

    def end(self) -> None:
        self.ended = True
        self.wake.set()


def event(name: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _alive(sessions: WebSessions, tokens: list[str], now_ms: int) -> set[str]:
    return {t for t in tokens if sessions.find(t, now_ms=now_ms, touch=False)}


class StreamBook:
    """A part's open streams: at most ``total`` in all and ``per_session`` per session.

    With ``replace``, a session's newest stream ends its oldest beyond the cap (a reload
    replaces the page's stream); without, one more is refused (429) with words that say so.
    """

    def __init__(
        self,
        edge: HttpEdge,
        *,
        total: int,
        per_session: int,
        replace: bool,
        tick: Callable[[list[Stream]], Awaitable[None]],
        name: str,
    ) -> None:
        self.edge, self.total, self.per_session, self.replace = edge, total, per_session, replace
        self.tick, self.name = tick, name
        self.streams: list[Stream] = []
        self._watcher: asyncio.Task[None] | None = None

    def open(self, request: web.Request, session: str, topic: str) -> Stream:
        """A new stream for ``session``, or an HTTP error that says why not."""
        _ = words(request)
        mine = [s for s in self.streams if s.session == session]
        if len(mine) >= self.per_session:
            if not self.replace:
                raise web.HTTPTooManyRequests(
                    text=_(
                        "at most {n} live views per session are open; close one and try again",
                        n=self.per_session,
                    )
                    + "\n",
                    headers={"Retry-After": "5"},
                )
            for older in mine[: len(mine) - self.per_session + 1]:
                self.close(older)
                older.end()
        if len(self.streams) >= self.total:
            raise web.HTTPServiceUnavailable(
                text=_("too many live views open; try again later") + "\n",
                headers={"Retry-After": "5"},
            )
        stream = Stream(session, request.cookies.get(SESSION_COOKIE, ""), topic)
        self.streams.append(stream)
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.ensure_future(self._watch())
        return stream

    def close(self, stream: Stream) -> None:
        if stream in self.streams:
            self.streams.remove(stream)

    async def serve(
        self, request: web.Request, stream: Stream, first: Mapping[str, Any], name: str
    ) -> web.StreamResponse:
        """Write ``first``, then each pushed value as ``event: name`` until the stream ends."""
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            await response.prepare(request)
            await response.write(event(name, first))
            while not stream.ended:
                try:
                    await asyncio.wait_for(stream.wake.wait(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    await response.write(b": still here\n\n")
                    continue
                stream.wake.clear()
                if stream.latest is not None and not stream.ended:
                    latest, stream.latest = stream.latest, None
                    await response.write(event(name, latest))
            await response.write(event("end", {"reason": "the session ended"}))
        except ConnectionResetError:  # the page was closed
            pass
        finally:
            self.close(stream)
        return response

    async def _watch(self) -> None:
        while self.streams:
            if self.edge.stopping.is_set():
                for s in list(self.streams):
                    s.end()
                return
            try:
                streams = list(self.streams)
                alive = await self.edge.desk(
                    _alive, self.edge.sessions, [s.token for s in streams], self.edge.now_ms()
                )
                for s in streams:
                    if s.token not in alive:
                        s.end()
                await self.tick([s for s in streams if not s.ended])
            except Exception as exc:  # the next round tries again
                log.error("%s streams: %s", self.name, exc)
            await asyncio.sleep(POLL_SECONDS)
