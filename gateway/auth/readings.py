"""The checks on a device's signed reading before it may go on the record, sans-IO.

A reading arrives on ``<prefix>/d/<did>/readings`` as a compact JWS (``typ``
``didgw-reading+jws``). The broker lets only that device's account publish there,
but the record must not depend on the broker's configuration being right, so
everything is checked again here, in this order (the first failure is the answer):

* ``malformed``: larger than ``max_bytes``, not a compact JWS, wrong ``typ``, or a
  payload that is not exactly ``{"did", "seq", "ts", "type", "values"}`` as
  docs/protocol/mqtt.md, "Readings" describes it (``values``: 1 to 64 names →
  ``{"value": number, "unit": str}``);
* ``bad_signature``: the payload's ``did`` is not the topic's;
* ``bad_signature``: the ``kid`` is not a key of that DID, the key is not in its
  ``assertionMethod``, or the signature fails (``unavailable`` instead when the DID
  document cannot be fetched right now: the device is not at fault); an unregistered
  DID that is not a ``did:key`` is refused here unverified, its document not fetched;
* ``unknown_device`` / ``not_active``: the registry's answer for the DID, told only
  once the signature has verified (over CoAP anyone can send a reading: an anonymous
  client must not learn from the answer whether a DID is registered);
* ``replay``: ``seq`` not above ``last_seq``;
* ``clock_skew``: ``ts`` outside the :class:`ClockWindow`: more than ``skew_ms`` ahead of
  ``now_ms``, or more than ``max_age_ms`` behind it (a device delivers readings it
  queued during an outage late). A config reload replaces the checker's ``window``.

The replay window belongs to the caller: the readings pipeline keeps, per device,
the ``seq`` of the last reading it accepted for the record and passes it as
``last_seq`` (None for a device that has none). On ``replay`` (which carries the
``seq``) it compares the token with the recorded one, to acknowledge a reading
resent after a lost ack again instead of refusing it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.auth.strict import (
    AuthRefused,
    RegistryLookup,
    cbor_object,
    check_cose_typ,
    check_did,
    check_int,
    check_typ,
    exact_members,
    json_object,
    split_cose,
    split_jws,
    verify_cose_signed,
    verify_signed,
    verify_then_check_registered,
)
from gateway.errors import DidgwError
from gateway.identity.resolver import Resolver

READING_TYP = "didgw-reading+jws"
READING_COSE_TYP = "didgw-reading+cose"
READING_REASONS = (
    "malformed",
    "bad_signature",
    "unavailable",
    "unknown_device",
    "not_active",
    "replay",
    "clock_skew",
    "storage_full",
)
MAX_VALUES = 64
_MEMBERS = frozenset({"did", "seq", "ts", "type", "values"})
_VALUE_MEMBERS = frozenset({"value", "unit"})
_TYPE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_UNIT_MAX = 16


class ReadingRefused(DidgwError):
    """A reading refused: ``reason`` goes in the ack, with ``seq`` when it could be read."""

    code = "reading_refused"

    def __init__(self, reason: str, seq: int | None, detail: str = "") -> None:
        if reason not in READING_REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.seq = seq
        self.detail = detail


@dataclass(frozen=True)
class Measurement:
    value: int | float
    unit: str


@dataclass(frozen=True)
class Reading:
    """A reading that passed every check; ``token`` is the JWS exactly as received."""

    did: str
    seq: int
    ts: int
    type: str
    values: Mapping[str, Measurement]
    token: bytes = field(repr=False)


@dataclass(frozen=True)
class ClockWindow:
    """The times a reading's ``ts`` may have: up to ``skew_ms`` ahead of the gateway's clock
    (the device's clock may be off), up to ``max_age_ms`` behind it (a device keeps the
    readings it could not deliver while the broker or the gateway was down, so a reading
    may be old; never less than ``skew_ms``)."""

    skew_ms: int = 300_000
    max_age_ms: int = 86_400_000

    def __post_init__(self) -> None:
        if min(self.skew_ms, self.max_age_ms) < 1:
            raise ValueError("a clock window's bounds must be positive")

    def refusal(self, ts: int, now_ms: int) -> str | None:
        """Why ``ts`` is outside the window at ``now_ms``, or None when it is inside."""
        if ts - now_ms > self.skew_ms:
            return f"ts is {ts - now_ms} ms ahead"
        if now_ms - ts > max(self.max_age_ms, self.skew_ms):
            return f"ts is {now_ms - ts} ms old"
        return None


class ReadingChecker:
    """Checks readings against the registry and the devices' DID documents.

    ``window`` is an attribute to replace, not to change: a config reload assigns a new
    :class:`ClockWindow`, which a reading being checked on another thread sees whole."""

    def __init__(
        self,
        resolver: Resolver,
        registry_lookup: RegistryLookup,
        *,
        window: ClockWindow = ClockWindow(),
        max_bytes: int = 16384,
    ) -> None:
        self._resolver = resolver
        self._lookup = registry_lookup
        self.window = window
        self._max_bytes = max_bytes

    def check(self, topic_did: str, token: bytes, now_ms: int, last_seq: int | None) -> Reading:
        """The reading in ``token`` published under ``topic_did``, or :class:`ReadingRefused`."""
        seq: int | None = None
        try:
            header, body = split_jws(token, "reading", max_bytes=self._max_bytes)
            obj = json_object(body, "reading payload", max_bytes=self._max_bytes)
            seq = _seq_of(obj)
            check_typ(header, READING_TYP, "reading")
            reading = _parse(obj, token)
            if reading.did != topic_did:
                raise AuthRefused(
                    "bad_signature", f"reading of {reading.did} on {topic_did}'s topic"
                )
            verify_then_check_registered(
                self._lookup,
                reading.did,
                lambda: verify_signed(
                    token,
                    header,
                    body,
                    reading.did,
                    resolver=self._resolver,
                    relationship="assertionMethod",
                    now_ms=now_ms,
                ),
            )
        except AuthRefused as exc:
            raise ReadingRefused(exc.reason, seq, exc.detail) from None
        return self._fresh(reading, now_ms, last_seq)

    def check_cose(self, token: bytes, now_ms: int, last_seq: int | None) -> Reading:
        """The reading in a COSE_Sign1 (``typ`` ``didgw-reading+cose``, a CBOR payload with
        the members of the JSON one), or :class:`ReadingRefused`: the same checks in the same
        order as :meth:`check`, except that no topic names the device (a CoAP request does
        not), so the payload's ``did`` must be the ``kid``'s."""
        seq: int | None = None
        try:
            sign1 = split_cose(token, "reading", max_bytes=self._max_bytes)
            obj = cbor_object(sign1.payload, "reading payload", max_bytes=self._max_bytes)
            seq = _seq_of(obj)
            check_cose_typ(sign1, READING_COSE_TYP, "reading")
            reading = _parse(obj, token)
            verify_then_check_registered(
                self._lookup,
                reading.did,
                lambda: verify_cose_signed(
                    sign1,
                    reading.did,
                    resolver=self._resolver,
                    relationship="assertionMethod",
                    now_ms=now_ms,
                ),
            )
        except AuthRefused as exc:
            raise ReadingRefused(exc.reason, seq, exc.detail) from None
        return self._fresh(reading, now_ms, last_seq)

    def _fresh(self, reading: Reading, now_ms: int, last_seq: int | None) -> Reading:
        seq = reading.seq
        if last_seq is not None and reading.seq <= last_seq:
            raise ReadingRefused("replay", seq, f"seq {reading.seq} is not above {last_seq}")
        outside = self.window.refusal(reading.ts, now_ms)
        if outside is not None:
            raise ReadingRefused("clock_skew", seq, outside)
        return reading


def _seq_of(obj: Mapping[str, Any]) -> int | None:
    """The seq to put in the ack, if the payload has a valid one."""
    value = obj.get("seq")
    try:
        return check_int(value, "seq", minimum=1)
    except AuthRefused:
        return None


def _parse(obj: Mapping[str, Any], token: bytes) -> Reading:
    exact_members(obj, _MEMBERS, "reading")
    kind = obj["type"]
    if not isinstance(kind, str) or not _TYPE.fullmatch(kind):
        raise AuthRefused("malformed", "reading type must be a lower-case word of 1-32 chars")
    return Reading(
        did=check_did(obj["did"], "reading did"),
        seq=check_int(obj["seq"], "reading seq", minimum=1),
        ts=check_int(obj["ts"], "reading ts"),
        type=kind,
        values=_values(obj["values"]),
        token=token,
    )


def _values(values: Any) -> dict[str, Measurement]:
    if not isinstance(values, dict) or not 1 <= len(values) <= MAX_VALUES:
        raise AuthRefused("malformed", f"reading values must be an object of 1-{MAX_VALUES} names")
    result = {}
    for name, item in values.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise AuthRefused("malformed", f"reading value name {str(name)[:70]!r} is not allowed")
        if not isinstance(item, dict):
            raise AuthRefused("malformed", f"reading value {name} must be an object")
        exact_members(item, _VALUE_MEMBERS, f"reading value {name}")
        value, unit = item["value"], item["unit"]
        if type(value) not in (int, float) or abs(value) >= 2**63 or not math.isfinite(value):
            raise AuthRefused("malformed", f"reading value {name} must be a finite number")
        if not isinstance(unit, str) or not 0 < len(unit) <= _UNIT_MAX or not unit.isprintable():
            raise AuthRefused("malformed", f"reading unit of {name} must be 1-{_UNIT_MAX} chars")
        result[name] = Measurement(value, unit)
    return result
