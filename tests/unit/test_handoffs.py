"""One-time sign-in links (gateway/auth/handoffs.py): once, within their time, bounded;
and ``[http] demo_links`` off loopback is an exposure warning."""

from __future__ import annotations

import itertools

import pytest

from gateway.auth.handoffs import LINK_LIFETIME_MS, Handoffs, TooManyLinks
from gateway.auth.web_sessions import WebSession
from gateway.config import HttpSection
from gateway.credentials.permissions import Permissions

NOW = 1_800_000_000_000


def session(expires_ms: int = NOW + 3_600_000) -> WebSession:
    manager = Permissions("did:key:z6Mkx", facility_manager=True)
    return WebSession("did:key:z6Mkx", "presentation", "csrf", NOW, NOW, expires_ms,
                      manager, frozenset(), (), None)  # fmt: skip


def counting() -> Handoffs:
    counter = itertools.count()
    return Handoffs(lambda n: next(counter).to_bytes(n, "big"), limit=3)


def test_a_link_is_taken_once() -> None:
    links = counting()
    secret = links.make(session(), "token", NOW)
    found = links.take(secret, NOW + 1)
    assert found is not None and found.token == "token"
    assert links.take(secret, NOW + 2) is None


def test_a_link_expires() -> None:
    links = counting()
    secret = links.make(session(), "token", NOW)
    assert links.take(secret, NOW + LINK_LIFETIME_MS) is None
    # ... and never outlives the session it hands over
    short = links.make(session(expires_ms=NOW + 1000), "token", NOW)
    assert links.take(short, NOW + 1000) is None


def test_a_guess_is_a_miss() -> None:
    links = counting()
    secret = links.make(session(), "token", NOW)
    assert links.take(secret[:-1] + ("A" if secret[-1] != "A" else "B"), NOW) is None
    assert links.take("", NOW) is None and links.take("A" * 10_000, NOW) is None
    assert links.take(secret, NOW) is not None  # the misses did not spend it


def test_waiting_links_are_bounded_and_old_ones_make_room() -> None:
    links = counting()
    for _ in range(3):
        links.make(session(), "token", NOW)
    with pytest.raises(TooManyLinks):
        links.make(session(), "token", NOW)
    links.make(session(), "token", NOW + LINK_LIFETIME_MS)  # the old ones expired
    assert len(links) == 1


def test_demo_links_off_loopback_is_an_exposure() -> None:
    assert HttpSection(demo_links=True).exposures() == []
    keys = [key for key, _ in HttpSection(host="192.0.2.1", demo_links=True).exposures()]
    assert keys == ["demo_links", "host"]
    assert [k for k, _ in HttpSection(host="192.0.2.1").exposures()] == ["host"]
