"""The DID challenge-response every transport shares, sans-IO: :class:`Handshake`.

MQTT devices (``mqtt_auth``), CoAP devices (``coap_auth``) and people's wallets
(``wallet``) each hold one :class:`Handshake` and add only their wire encoding: how a
hello and a signed response are parsed, how a challenge, a grant and a refusal are
written. Everything else is here, once: the gateway's signer and the registry it
asks, the nonces and their transition table, the checks and their order, the clock
tolerance and the session length (changed by :meth:`Handshake.retime` on a config
reload), the bounds on pending challenges, the randomness, the counts. No sockets, no
clock, no randomness of its own: tests drive every path deterministically.

Checks, in this order (the first failure is the answer):

* hello: ``malformed`` (the adapter's parsing) → ``rate_limited`` (more than
  ``max_pending_per_did`` nonces outstanding for the DID, or its pool full, below);
* response: ``malformed`` (the adapter's parsing) → ``bad_nonce`` (unknown, used,
  expired, issued to another device, for another gateway, or for another reply token)
  → ``bad_signature`` / ``unavailable`` (the adapter's ``verify``; an unregistered DID
  that is not a ``did:key`` is ``bad_signature`` unverified, below) →
  ``unknown_device`` / ``not_active`` → ``clock_skew`` (``ts`` outside ±
  ``clock_skew_ms``) → whatever the adapter's ``grant`` refuses (e.g. ``malformed``
  for a low-order ``epk``).

**A DID's registration is told only to whoever signs for it.** A hello is answered
with a challenge whether the DID is registered, unknown or suspended, and a response
is checked against its nonce and its signature before the registry is asked: an
anonymous client that does not hold the DID's key gets the same answers (a challenge,
then ``bad_signature``) for every DID, while a device that signs its response learns
``unknown_device`` or ``not_active`` and can stop. The key of an unregistered DID is
used only when it needs no network (a ``did:key``): for any other method it could only
be fetched from a host the DID names, so the response is refused ``bad_signature``
without fetching anything.

A nonce's life is the transition table :data:`TRANSITIONS`. A response refused
before its signature verified does not spend the nonce: anyone can publish on the
auth topic, and a forgery must not be able to cancel a device's authentication.
Once the device's signature has verified, the nonce is spent whatever the outcome.

**Pending nonces are bounded, and a full store refuses instead of evicting.** Every
anonymous client looks the same to the gateway (over MQTT they all reach it through
the broker; reply tokens and DIDs are theirs to choose, and a ``did:key`` costs
nothing to make), so the one thing that tells a flood from the gateway's own people is
whether the DID is one it knows: a registered device, or a person it issued a
credential to (the ``known`` predicate). Known DIDs share ``max_pending`` nonces, at
most ``max_pending_per_did`` each, so filling that pool takes as many known DIDs as it
has places divided by four; all other DIDs share the smaller ``max_pending_strangers``.
When a DID's pool is full its hello is refused ``rate_limited``: nonces already out
are never dropped, so a flood cannot evict a login in progress, and people the gateway
knows still get challenges while strangers flood. (While the strangers' pool is full,
a hello for an unknown DID is refused where a known one's is not: a prober who keeps
that pool full can tell them apart, and the flood shows in the counts and the log.)

A ``rate_limited`` refusal says when to come back (``retry_after_ms``): for a DID with
all its challenges out, the nonces' lifetime; for a full pool, **a place in a line**. Each
refusal gets the place after the last one given, one grant's time later, at least
:data:`MIN_RETRY_MS` and at most the nonces' lifetime away. A grant's time is measured: the
grants of the last second, over the time from the first of them to now (a storm's first
grants are counted over the moments they took, not a whole second); until
:data:`RATE_MIN_SAMPLES` grants were made in it (none yet, at a storm's start), the line
assumes :data:`ASSUMED_RATE`. A building that comes back at once is thus told to come back
one device after another, as fast as places free up, and the gateway is never idle while
devices wait. Two earlier lines taught the balance. Telling every refused device the pool's
whole drain time sent 6,000 of 10,000 devices away for 30 s at a storm's start, while the
gateway finished the first 4,096 in 12 s and then waited: half its time idle. Then a line
never slower than 500 grants/s sent devices back early wherever the gateway grants fewer (a
Pi): at 100 grants/s a 10,000-device storm cost 3.7 refused hellos a device, each an
anonymous connection for the broker and the gateway, and took a quarter longer
(``tests/unit/test_auth_storm.py`` plays such storms against this class). A device back
before its place is free costs one refused hello and is given the line's end; one told to
come back too late costs the gateway idle time.
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from gateway.auth.mqtt_messages import NONCE_BYTES, Challenge
from gateway.auth.refusals import RefusalBook
from gateway.auth.secret import RandomBytes
from gateway.auth.strict import AuthRefused, RegistryLookup, verify_then_check_registered
from gateway.identity.signing import Signer


class Phase(enum.Enum):
    CHALLENGED = "challenged"  # the challenge is out; the nonce waits for a response
    SPENT = "spent"  # forgotten: it can never be answered again


class Event(enum.Enum):
    UNVERIFIED = "unverified"  # a response naming it was refused before its signature verified
    REFUSED = "refused"  # the device's signature verified, but the response is refused
    GRANTED = "granted"
    EXPIRED = "expired"


#: phase -> {event: next phase}. A hello creates a nonce in CHALLENGED; an event not
#: in the table for the nonce's phase is a bug in this module, never input-driven.
TRANSITIONS: dict[Phase, dict[Event, Phase]] = {
    Phase.CHALLENGED: {
        Event.UNVERIFIED: Phase.CHALLENGED,
        Event.REFUSED: Phase.SPENT,
        Event.GRANTED: Phase.SPENT,
        Event.EXPIRED: Phase.SPENT,
    },
    Phase.SPENT: {},
}


@dataclass
class _Pending:
    did: str
    reply: str | None
    expires_ms: int
    known: bool  # whose pool: a DID the gateway knows, or a stranger's
    phase: Phase = Phase.CHALLENGED


class _Nonces:
    """Outstanding nonces, oldest first, with a count per DID and per pool."""

    def __init__(self, max_known: int, max_strangers: int) -> None:
        self._items: OrderedDict[bytes, _Pending] = OrderedDict()
        self._per_did: Counter[str] = Counter()
        self._per_pool: Counter[bool] = Counter()
        self._max = {True: max_known, False: max_strangers}

    def __len__(self) -> int:
        return len(self._items)

    def get(self, nonce: bytes) -> _Pending | None:
        return self._items.get(nonce)

    def outstanding(self, did: str) -> int:
        return self._per_did[did]

    def full(self, known: bool) -> bool:
        return self._per_pool[known] >= self._max[known]

    def in_pool(self, known: bool) -> int:
        return self._per_pool[known]

    def issue(self, nonce: bytes, pending: _Pending) -> None:
        if self.full(pending.known):
            raise RuntimeError("a nonce issued into a full pool")  # challenge() checks first
        self._items[nonce] = pending
        self._per_did[pending.did] += 1
        self._per_pool[pending.known] += 1

    def expire(self, now_ms: int) -> None:
        """Forget expired nonces at the old end (all share one lifetime)."""
        while self._items:
            nonce, pending = next(iter(self._items.items()))
            if pending.expires_ms > now_ms:
                break
            self.advance(nonce, Event.EXPIRED)

    def advance(self, nonce: bytes, event: Event) -> None:
        pending = self._items[nonce]
        after = TRANSITIONS[pending.phase].get(event)
        if after is None:
            raise RuntimeError(f"nonce event {event.value} in phase {pending.phase.value}")
        pending.phase = after
        if after is Phase.SPENT:
            del self._items[nonce]
            self._per_pool[pending.known] -= 1
            self._per_did[pending.did] -= 1
            if not self._per_did[pending.did]:
                del self._per_did[pending.did]


class Claim(Protocol):
    """What a signed response says, whatever its encoding (JWS over MQTT, COSE over CoAP,
    a key-binding JWT from a wallet): the nonce it answers, who it is, which gateway,
    when, and the reply token of its hello (None where the transport needs none)."""

    @property
    def nonce(self) -> bytes: ...
    @property
    def device(self) -> str: ...
    @property
    def gateway(self) -> str: ...
    @property
    def ts(self) -> int: ...
    @property
    def reply(self) -> str | None: ...


T = TypeVar("T")

#: The grants that tell the rate a full pool drains at: those of the last second, at most
#: the last :data:`RATE_SAMPLES`; a refusal never asks for less than :data:`MIN_RETRY_MS`.
RATE_WINDOW_MS = 1000
RATE_SAMPLES = 4096
MIN_RETRY_MS = 250
#: Fewer grants than this in the last second tell no rate (a storm's first moments).
RATE_MIN_SAMPLES = 16
#: Grants per second the line of places assumes until it can measure them: above what a
#: Pi or this 2-core machine makes, so that the first refused devices come back early
#: rather than late.
ASSUMED_RATE = 500


class Handshake:
    """The challenge-response core (see the module docstring). An adapter calls
    :meth:`challenge` for a hello and :meth:`answer` for a response; a refusal is an
    :class:`AuthRefused` it encodes, after :meth:`count`-ing it.

    ``known(did)`` says whose pool a hello's nonce goes in; by default the DIDs the
    registry knows (in any status)."""

    def __init__(
        self,
        gateway_signer: Signer,
        registry_lookup: RegistryLookup,
        *,
        random_bytes: RandomBytes,
        nonce_ttl_ms: int = 30_000,
        clock_skew_ms: int = 300_000,
        session_ms: int = 3_600_000,
        max_pending: int = 4096,
        max_pending_strangers: int = 1024,
        max_pending_per_did: int = 4,
        known: Callable[[str], bool] | None = None,
    ) -> None:
        limits = (max_pending, max_pending_strangers, max_pending_per_did)
        if min(nonce_ttl_ms, *limits) < 1:
            raise ValueError("lifetimes and limits must be positive")
        self.signer = gateway_signer
        self.random = random_bytes
        self._lookup = registry_lookup
        self._known = known or (lambda did: registry_lookup(did) is not None)
        self._nonce_ttl = nonce_ttl_ms
        self._per_did = max_pending_per_did
        self._nonces = _Nonces(max_pending, max_pending_strangers)
        self._outcomes: Counter[str] = Counter()
        self._answered: deque[int] = deque(maxlen=RATE_SAMPLES)  # when grants were made
        #: per pool (known, strangers): the last place in line given to a refused hello (ms)
        self._line_end: dict[bool, float] = {True: 0.0, False: 0.0}
        #: the refusal behind the last answer (its ``detail`` is for the log), else None
        self.last_refusal: AuthRefused | None = None
        #: where refusals a device earned (signature verified) are noted for the console
        self.refusals: RefusalBook | None = None
        self.retime(session_ms=session_ms, clock_skew_ms=clock_skew_ms)

    @property
    def did(self) -> str:
        """The gateway's DID, to which every nonce is bound."""
        return self.signer.did

    @property
    def outcomes(self) -> dict[str, int]:
        """How many challenges, grants and refusals (by reason) so far."""
        return dict(self._outcomes)

    @property
    def pending(self) -> int:
        """How many nonces are outstanding."""
        return len(self._nonces)

    def retime(self, *, session_ms: int, clock_skew_ms: int) -> None:
        """New session length and clock tolerance, for every response from now on (a config
        reload). Nonces already out keep their expiry."""
        if min(session_ms, clock_skew_ms) < 1:
            raise ValueError("lifetimes must be positive")
        self._session, self._skew = session_ms, clock_skew_ms

    def session_end(self, now_ms: int) -> int:
        """When a session granted now ends."""
        return now_ms + self._session

    def challenge(self, did: str, reply: str | None, now_ms: int) -> Challenge:
        """A new nonce for ``did``, whatever its registration (see the module docstring),
        or :class:`AuthRefused` ``rate_limited``."""
        self.last_refusal = None
        self._nonces.expire(now_ms)
        if self._nonces.outstanding(did) >= self._per_did:
            raise AuthRefused(
                "rate_limited",
                f"{did} has {self._per_did} challenges outstanding",
                retry_after_ms=self._nonce_ttl,
            )
        known = self._known(did)
        if self._nonces.full(known):
            whose = "DIDs the gateway knows" if known else "DIDs the gateway does not know"
            raise AuthRefused(
                "rate_limited",
                f"the challenges for {whose} are all outstanding",
                retry_after_ms=self._pool_wait(known, now_ms),
            )
        nonce = self.random(NONCE_BYTES)
        if len(nonce) != NONCE_BYTES or self._nonces.get(nonce) is not None:
            raise ValueError("random_bytes gave a short or repeated nonce")
        expires = now_ms + self._nonce_ttl
        self._nonces.issue(nonce, _Pending(did, reply, expires, known))
        self._outcomes["challenge"] += 1
        return Challenge(nonce, self.did, did, expires)

    def answer(
        self, claim: Claim, now_ms: int, verify: Callable[[], None], grant: Callable[[], T]
    ) -> T:
        """Check a response against its nonce, then ``verify()`` its signature (raising
        :class:`AuthRefused`), then the DID's registration, then its time, then make the
        grant with ``grant()`` (which may refuse too). The nonce moves through
        :data:`TRANSITIONS` accordingly."""
        self.last_refusal = None
        self._check_nonce(claim, now_ms)
        verified = False

        def verify_signature() -> None:
            nonlocal verified
            verify()
            verified = True

        try:
            verify_then_check_registered(self._lookup, claim.device, verify_signature)
            if abs(claim.ts - now_ms) > self._skew:
                raise AuthRefused("clock_skew", f"ts {claim.ts} is {claim.ts - now_ms} ms off")
            result = grant()
        except AuthRefused as refusal:
            self._nonces.advance(claim.nonce, Event.REFUSED if verified else Event.UNVERIFIED)
            if verified and self.refusals is not None:
                self.refusals.note(claim.device, refusal.reason, now_ms)
            raise
        self._nonces.advance(claim.nonce, Event.GRANTED)
        self._outcomes["grant"] += 1
        self._answered.append(now_ms)
        return result

    def grant_rate(self, now_ms: int) -> float:
        """Grants per second: those of the last :data:`RATE_WINDOW_MS`, over the time from
        the first of them to now; :data:`ASSUMED_RATE` while fewer than
        :data:`RATE_MIN_SAMPLES` were made in it."""
        answered = self._answered
        while answered and answered[0] <= now_ms - RATE_WINDOW_MS:
            answered.popleft()
        if len(answered) < RATE_MIN_SAMPLES:
            return ASSUMED_RATE
        return len(answered) * 1000 / max(now_ms - answered[0], 1)

    def _pool_wait(self, known: bool, now_ms: int) -> int:
        """The next place in the line for a full pool (see the module docstring): one grant's
        time (:meth:`grant_rate`) after the last place given; between :data:`MIN_RETRY_MS`
        and the nonces' lifetime from now."""
        place = max(self._line_end[known], now_ms) + 1000 / self.grant_rate(now_ms)
        place = min(place, now_ms + self._nonce_ttl)
        self._line_end[known] = place
        return max(MIN_RETRY_MS, min(int(place - now_ms), self._nonce_ttl))

    def count(self, refusal: AuthRefused) -> None:
        """Count a refusal (by reason) and remember it for the log."""
        self._outcomes[refusal.reason] += 1
        self.last_refusal = refusal

    def _check_nonce(self, claim: Claim, now_ms: int) -> None:
        pending = self._nonces.get(claim.nonce)
        if pending is None:
            raise AuthRefused("bad_nonce", "unknown or already used nonce")
        if pending.expires_ms <= now_ms:
            self._nonces.advance(claim.nonce, Event.EXPIRED)
            raise AuthRefused("bad_nonce", "the nonce has expired")
        if pending.did != claim.device:
            raise AuthRefused("bad_nonce", f"the nonce was issued to {pending.did}")
        if claim.gateway != self.did:
            raise AuthRefused("bad_nonce", f"the response is for gateway {claim.gateway}")
        if claim.reply != pending.reply:
            raise AuthRefused("bad_nonce", "the reply token is not the hello's")
