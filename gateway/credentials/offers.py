"""Credential offers of the pre-authorized code flow (OpenID4VCI 1.0), kept in SQLite.

An operator makes an offer (``didgw cred offer``): a kind, its claims, a lifetime. The
wallet learns of it by an offer URL whose last part is a random *offer id*; the served
offer carries the *pre-authorized code*, which is derived from the offer id, so whoever
holds the URL holds the code, and the URL must be as unguessable as the code (32 random
bytes). The *PIN* (``tx_code``) travels another way (said aloud, shown on a screen).

Nothing secret is stored: the row is keyed by the SHA-256 of the offer id and of the
code; the PIN is kept as an HMAC keyed by the code (so a copy of the database cannot
test the million PINs without the code too); the access token as its SHA-256. The
claims wait in the row until the credential is issued, then are cleared (the claims
stay with the holder, as for any credential the gateway issues).

An offer is redeemed at most once (a token is given for it once), is refused after its
expiry, and locks after :data:`MAX_PIN_TRIES` wrong PINs. Each refusal says which.

Time and randomness come in as arguments; nothing here reads the clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlite_utils import Database

from gateway.credentials.kinds import check_claims, kind_named
from gateway.db import write_transaction
from gateway.errors import CredentialError

RandomBytes = Callable[[int], bytes]

ID_BYTES = 32
PIN_DIGITS = 6
MAX_PIN_TRIES = 5
DEFAULT_EXPIRES_SECONDS = 600
MAX_EXPIRES_SECONDS = 7 * 86400
ACCESS_TOKEN_SECONDS = 300
MAX_CODE_CHARS = 128  # what a stranger may send as a code or token, at most


class OfferRefused(CredentialError):
    """An offer, its code or its token cannot be used; ``error`` is the OAuth error code
    (``invalid_grant``, ``invalid_request``, ``invalid_token``)."""

    code = "offer_refused"

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error


@dataclass(frozen=True)
class NewOffer:
    """What the operator is shown once: the offer id (for the URL) and the PIN."""

    offer_id: str
    pin: str
    kind: str
    expires_ms: int

    @property
    def pre_authorized_code(self) -> str:
        return code_of(self.offer_id)


@dataclass(frozen=True)
class Offer:
    """An offer as the database keeps it (no secrets)."""

    id_hash: str
    kind: str
    claims: dict[str, str]
    created_ms: int
    expires_ms: int
    used_ms: int | None
    locked_ms: int | None
    failed_pins: int
    credential_id: str | None
    token_expires_ms: int | None

    def refusal(self, now_ms: int) -> str | None:
        """Why this offer cannot be redeemed now, or None."""
        if self.used_ms is not None:
            return f"this offer was already used (at {_iso(self.used_ms)}); ask for a new one"
        if self.locked_ms is not None:
            return (
                f"this offer is locked after {MAX_PIN_TRIES} wrong transaction codes; "
                "ask for a new one"
            )
        if now_ms >= self.expires_ms:
            return f"this offer expired at {_iso(self.expires_ms)}; ask for a new one"
        return None


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def code_of(offer_id: str) -> str:
    """The pre-authorized code of an offer id (a one-way derivation: the code does not
    give the offer URL away, the URL gives the code)."""
    digest = hashlib.sha256(b"didgw oid4vci pre-authorized code\x00" + offer_id.encode())
    return b64u(digest.digest())


def _pin_mac(code: str, pin: str) -> str:
    return hmac.new(code.encode(), pin.encode("utf-8", "replace"), hashlib.sha256).hexdigest()


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return (
        datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def new_pin(random_bytes: RandomBytes) -> str:
    """Six decimal digits, uniform (rejection sampling, no modulo bias)."""
    while True:
        value = int.from_bytes(random_bytes(4), "big")
        if value < 4_294_000_000:  # a multiple of 10**6
            return f"{value % 10**PIN_DIGITS:0{PIN_DIGITS}d}"


_COLUMNS = (
    "id_hash, kind, claims, created_ms, expires_ms, used_ms, locked_ms, failed_pins, "
    "credential_id, token_expires_ms"
)


class CredentialOffers:
    """The ``credential_offers`` table on one database connection (used from one thread)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def create(
        self,
        kind_name: str,
        claims: Mapping[str, str],
        *,
        now_ms: int,
        expires_seconds: int,
        random_bytes: RandomBytes,
    ) -> NewOffer:
        """A new offer; its claims are checked now, so a typo never reaches a wallet."""
        kind = kind_named(kind_name)
        checked = check_claims(kind, claims)
        if not 1 <= expires_seconds <= MAX_EXPIRES_SECONDS:
            raise CredentialError(
                f"an offer lives between 1 second and {MAX_EXPIRES_SECONDS // 86400} days"
            )
        offer_id = b64u(random_bytes(ID_BYTES))
        pin = new_pin(random_bytes)
        code = code_of(offer_id)
        expires_ms = now_ms + expires_seconds * 1000
        with write_transaction(self._db.conn):
            self._db.execute(
                "INSERT INTO credential_offers (id_hash, code_hash, pin_mac, kind, claims, "
                "created_ms, expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    sha256_hex(offer_id),
                    sha256_hex(code),
                    _pin_mac(code, pin),
                    kind.name,
                    json.dumps(checked, sort_keys=True),
                    now_ms,
                    expires_ms,
                ],
            )
        return NewOffer(offer_id, pin, kind.name, expires_ms)

    def by_id(self, offer_id: str) -> Offer | None:
        if not offer_id or len(offer_id) > MAX_CODE_CHARS:
            return None
        return self._one("id_hash = ?", sha256_hex(offer_id))

    def offers(self) -> list[Offer]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM credential_offers ORDER BY created_ms"  # noqa: S608
        ).fetchall()
        return [_offer(row) for row in rows]

    def redeem(
        self, code: str, pin: str | None, *, now_ms: int, random_bytes: RandomBytes
    ) -> tuple[str, Offer]:
        """The token request: (a new access token, the offer), or :class:`OfferRefused`.

        A wrong PIN is counted (and the count written) before the refusal."""
        if not code or len(code) > MAX_CODE_CHARS:
            raise OfferRefused("invalid_grant", "unknown pre-authorized code")
        refusal: OfferRefused | None = None
        token = b64u(random_bytes(ID_BYTES))
        with write_transaction(self._db.conn):
            row = self._db.execute(
                f"SELECT {_COLUMNS}, pin_mac FROM credential_offers "  # noqa: S608
                "WHERE code_hash = ?",
                [sha256_hex(code)],
            ).fetchone()
            if row is None:
                raise OfferRefused("invalid_grant", "unknown pre-authorized code")
            offer, pin_mac = _offer(row[:-1]), row[-1]
            reason = offer.refusal(now_ms)
            if reason is not None:
                raise OfferRefused("invalid_grant", reason)
            if pin is None or pin == "":
                raise OfferRefused(
                    "invalid_request",
                    "this offer needs its transaction code (tx_code): the PIN shown to "
                    "whoever made the offer",
                )
            if len(pin) > MAX_CODE_CHARS or not hmac.compare_digest(_pin_mac(code, pin), pin_mac):
                failed = offer.failed_pins + 1
                locked = now_ms if failed >= MAX_PIN_TRIES else None
                self._db.execute(
                    "UPDATE credential_offers SET failed_pins = ?, locked_ms = ? WHERE id_hash = ?",
                    [failed, locked, offer.id_hash],
                )
                left = MAX_PIN_TRIES - failed
                message = (
                    f"wrong transaction code; {left} {'try' if left == 1 else 'tries'} left"
                    if left
                    else f"wrong transaction code; the offer is now locked after "
                    f"{MAX_PIN_TRIES} wrong ones: ask for a new one"
                )
                refusal = OfferRefused("invalid_grant", message)  # raised once counted
            else:
                expires = now_ms + ACCESS_TOKEN_SECONDS * 1000
                self._db.execute(
                    "UPDATE credential_offers SET used_ms = ?, token_hash = ?, "
                    "token_expires_ms = ? WHERE id_hash = ?",
                    [now_ms, sha256_hex(token), expires, offer.id_hash],
                )
        if refusal is not None:
            raise refusal
        redeemed = self._one("id_hash = ?", offer.id_hash)
        assert redeemed is not None  # noqa: S101 - written just above
        return token, redeemed

    def by_token(self, token: str, *, now_ms: int) -> Offer:
        """The offer an access token was given for, if the token may still get its
        credential; :class:`OfferRefused` (``invalid_token``) otherwise."""
        offer = None
        if token and len(token) <= MAX_CODE_CHARS:
            offer = self._one("token_hash = ?", sha256_hex(token))
        if offer is None or offer.token_expires_ms is None:
            raise OfferRefused("invalid_token", "unknown access token")
        if offer.credential_id is not None:
            raise OfferRefused(
                "invalid_token", "this access token was already used for its credential"
            )
        if now_ms >= offer.token_expires_ms:
            raise OfferRefused("invalid_token", "the access token has expired")
        return offer

    def spend(self, offer: Offer) -> bool:
        """Mark the token's one credential as being issued; False if it already was (by a
        request running at the same time). Undone by :meth:`unspend` if issuance fails."""
        with write_transaction(self._db.conn):
            cursor = self._db.execute(
                "UPDATE credential_offers SET credential_id = '' "
                "WHERE id_hash = ? AND credential_id IS NULL",
                [offer.id_hash],
            )
        return cursor.rowcount == 1

    def unspend(self, offer: Offer) -> None:
        with write_transaction(self._db.conn):
            self._db.execute(
                "UPDATE credential_offers SET credential_id = NULL "
                "WHERE id_hash = ? AND credential_id = ''",
                [offer.id_hash],
            )

    def issued(self, offer: Offer, credential_id: str) -> None:
        """The credential is out: keep its id, forget the claims."""
        with write_transaction(self._db.conn):
            self._db.execute(
                "UPDATE credential_offers SET credential_id = ?, claims = '{}' WHERE id_hash = ?",
                [credential_id, offer.id_hash],
            )

    def _one(self, where: str, value: str) -> Offer | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM credential_offers WHERE {where}",  # noqa: S608
            [value],
        ).fetchone()
        return _offer(row) if row is not None else None


def _offer(row: tuple[object, ...]) -> Offer:
    (id_hash, kind, claims, created, expires, used, locked, failed, cred, token_exp) = row
    return Offer(
        str(id_hash),
        str(kind),
        json.loads(str(claims)),
        int(str(created)),
        int(str(expires)),
        None if used is None else int(str(used)),
        None if locked is None else int(str(locked)),
        int(str(failed)),
        None if cred is None else str(cred),
        None if token_exp is None else int(str(token_exp)),
    )
