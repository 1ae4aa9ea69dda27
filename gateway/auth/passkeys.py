"""Passkeys (WebAuthn) bound to a person's DID after she signed in with a presentation.

The WebAuthn ceremonies themselves (options, attestation and assertion checks, the
sign-count rule) are py_webauthn's; this module decides what the gateway asks for and
keeps the state between the two halves of each ceremony:

* **Relying party.** The RP ID is the host name of the gateway's base URL
  (``[http] public_url``, else ``http://localhost:<port>``), the origin that URL's
  origin. Browsers refuse passkeys for an IP address, so :meth:`RelyingParty.from_url`
  refuses one too, with the reason.
* **Challenges** are random, single use, live :data:`CHALLENGE_MS` and wait in a bounded
  pool (:class:`Challenges`): when it is full a new ceremony is refused rather than an
  old one forgotten, so a flood of option requests costs a fixed amount of memory.
* **What is asked of the authenticator:** a discoverable credential (resident key)
  preferred, so the sign-in needs no user name; user verification preferred; no
  attestation (the gateway trusts the person who was signed in, not a maker's
  certificate); a sign count that goes backwards is refused (by the library).

Because a passkey login presents no credential, a passkey keeps what the binding
presentation established (see ``passkey_store.py``) and every login re-checks the status
and expiry of the credentials behind it. Sans-IO: time and randomness come in.

py_webauthn is imported at the first ceremony (:func:`_webauthn`), not with the front
door: with pyOpenSSL and pyasn1 it is about 4 MB of a Pi's memory that a gateway whose
people never bind a passkey does not need.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.auth.person_requests import SESSION_KIND
from gateway.chain.store import NewEntry

CHALLENGE_MS = 5 * 60_000
CHALLENGE_BYTES = 32
MAX_PENDING_REGISTRATIONS = 256
MAX_CREDENTIAL_JSON = 16 * 1024
BOUND_KIND = "passkey-bound"
REMOVED_KIND = "passkey-removed"
REGISTER, LOGIN = "register", "login"


class PasskeyRefused(Exception):
    """A ceremony step refused: ``reason`` is a stable key; ``text`` a fixed English
    sentence for the person with ``{name}`` places, ``values`` what goes in them.

    The pages show ``text`` in the reader's language (the catalogue is looked up by it;
    ``tests/unit/test_i18n.py`` collects every ``PasskeyRefused(…)`` text and wants its
    Korean), so a text is always a constant and what varies goes in ``values``.
    ``message`` is the English."""

    def __init__(self, reason: str, text: str, **values: str | int) -> None:
        self.reason, self.text, self.values = reason, text, values
        self.message = text.format(**values) if values else text
        super().__init__(f"{reason}: {self.message}")


def _webauthn() -> Any:
    """py_webauthn, imported at the first ceremony (see the module docstring)."""
    import webauthn
    import webauthn.helpers.exceptions
    import webauthn.helpers.structs

    return webauthn


def _not_accepted() -> tuple[type[Exception], ...]:
    """What py_webauthn raises for an answer it does not accept (malformed ones too)."""
    return (_webauthn().helpers.exceptions.WebAuthnException, ValueError, KeyError, TypeError)


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64u(text: str) -> bytes:
    if not isinstance(text, str) or len(text) > 2048:
        raise PasskeyRefused("malformed", "expected a base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise PasskeyRefused("malformed", "expected a base64url string") from None


def credential_id_hash(credential_id: str) -> str:
    """What the record names a passkey by: the SHA-256 of its credential id."""
    return hashlib.sha256(unb64u(credential_id)).hexdigest()


def user_handle(did: str) -> bytes:
    """The WebAuthn user id of ``did``: a digest, so the authenticator holds no DID."""
    return hashlib.sha256(b"didgw passkey user\x00" + did.encode()).digest()


@dataclass(frozen=True)
class RelyingParty:
    rp_id: str
    origin: str
    name: str = "didgw"

    @classmethod
    def from_url(cls, base_url: str, name: str = "didgw") -> RelyingParty:
        """The relying party of the gateway at ``base_url``; ValueError for an IP address."""
        parts = urlsplit(base_url)
        host = parts.hostname or ""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            raise ValueError(
                f"passkeys need a host name, not the IP address {host} (set [http] public_url "
                "to a name that resolves to the gateway; localhost works on the gateway itself)"
            )
        if not host or parts.scheme not in ("http", "https"):
            raise ValueError(f"passkeys need an http(s) base URL with a host, not {base_url!r}")
        port = f":{parts.port}" if parts.port else ""
        return cls(host, f"{parts.scheme}://{host}{port}", name)


@dataclass(frozen=True)
class Pending:
    purpose: str  # REGISTER or LOGIN
    expires_ms: int
    did: str = ""  # a registration's person
    session: str = ""  # a registration's session (its anti-CSRF token's digest)


class Challenges:
    """Single-use challenges waiting for their ceremony's second half, at most ``limit``."""

    def __init__(self, limit: int, *, random_bytes: Callable[[int], bytes]) -> None:
        self.limit = limit
        self._random = random_bytes
        self._pending: dict[bytes, Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def new(self, pending: Pending, *, now_ms: int) -> bytes:
        if len(self._pending) >= self.limit:
            self._pending = {c: p for c, p in self._pending.items() if p.expires_ms > now_ms}
        if len(self._pending) >= self.limit:
            raise PasskeyRefused(
                "busy", "too many passkey ceremonies are waiting; try again in a few minutes"
            )
        challenge = self._random(CHALLENGE_BYTES)
        self._pending[challenge] = pending
        return challenge

    def take(self, challenge: bytes, purpose: str, *, now_ms: int) -> Pending:
        """The pending ceremony of ``challenge``, removed (single use), or a refusal."""
        pending = self._pending.get(challenge)
        if pending is None or pending.purpose != purpose:
            raise PasskeyRefused(
                "unknown_challenge", "this passkey request is unknown or was used; start again"
            )
        del self._pending[challenge]
        if pending.expires_ms <= now_ms:
            raise PasskeyRefused("expired_challenge", "this passkey request expired; start again")
        return pending


@dataclass(frozen=True)
class NewPasskey:
    """A registration that passed: what the store keeps of the authenticator's answer."""

    credential_id: str  # base64url
    public_key: bytes  # COSE
    sign_count: int
    user_handle: str  # base64url


class Ceremonies:
    """The two WebAuthn ceremonies of one relying party, with their pending challenges."""

    def __init__(
        self,
        rp: RelyingParty,
        *,
        max_pending_logins: int,
        random_bytes: Callable[[int], bytes],
        max_pending_registrations: int = MAX_PENDING_REGISTRATIONS,
    ) -> None:
        self.rp = rp
        self.logins = Challenges(max_pending_logins, random_bytes=random_bytes)
        self.registrations = Challenges(max_pending_registrations, random_bytes=random_bytes)

    def registration_options(
        self, did: str, session: str, existing: list[str], *, now_ms: int
    ) -> dict[str, Any]:
        """``navigator.credentials.create`` options (JSON) for ``did``; ``existing``: her
        passkeys' ids, which the authenticator is asked not to make again."""
        challenge = self.registrations.new(
            Pending(REGISTER, now_ms + CHALLENGE_MS, did, session), now_ms=now_ms
        )
        options = _webauthn().generate_registration_options(
            rp_id=self.rp.rp_id,
            rp_name=self.rp.name,
            user_id=user_handle(did),
            user_name=short_did(did),
            user_display_name=short_did(did),
            challenge=challenge,
            timeout=CHALLENGE_MS,
            authenticator_selection=_webauthn().helpers.structs.AuthenticatorSelectionCriteria(
                resident_key=_webauthn().helpers.structs.ResidentKeyRequirement.PREFERRED,
                user_verification=_webauthn().helpers.structs.UserVerificationRequirement.PREFERRED,
            ),
            exclude_credentials=[
                _webauthn().helpers.structs.PublicKeyCredentialDescriptor(id=unb64u(cid))
                for cid in existing
            ],
        )
        result: dict[str, Any] = json.loads(_webauthn().options_to_json(options))
        return result

    def verify_registration(self, body: Any, did: str, session: str, *, now_ms: int) -> NewPasskey:
        """Check the authenticator's answer to a registration this session asked for."""
        challenge, credential = _parse(body)
        pending = self.registrations.take(challenge, REGISTER, now_ms=now_ms)
        if pending.did != did or pending.session != session:
            raise PasskeyRefused("unknown_challenge", "this passkey request was not made here")
        try:
            verified = _webauthn().verify_registration_response(
                credential=credential,
                expected_challenge=challenge,
                expected_rp_id=self.rp.rp_id,
                expected_origin=self.rp.origin,
            )
        except _not_accepted() as exc:
            raise PasskeyRefused(
                "bad_passkey", "the passkey was not accepted: {detail}", detail=str(exc)
            ) from None
        return NewPasskey(
            b64u(verified.credential_id),
            verified.credential_public_key,
            verified.sign_count,
            b64u(user_handle(did)),
        )

    def authentication_options(self, *, now_ms: int) -> dict[str, Any]:
        """``navigator.credentials.get`` options: no user named (discoverable credentials)."""
        challenge = self.logins.new(Pending(LOGIN, now_ms + CHALLENGE_MS), now_ms=now_ms)
        options = _webauthn().generate_authentication_options(
            rp_id=self.rp.rp_id,
            challenge=challenge,
            timeout=CHALLENGE_MS,
            user_verification=_webauthn().helpers.structs.UserVerificationRequirement.PREFERRED,
        )
        result: dict[str, Any] = json.loads(_webauthn().options_to_json(options))
        return result

    def login_challenge(self, body: Any, *, now_ms: int) -> tuple[bytes, dict[str, Any], str]:
        """Take the login challenge ``body`` answers (single use): (challenge, the
        credential JSON, its credential id), before the passkey is looked up."""
        challenge, credential = _parse(body)
        self.logins.take(challenge, LOGIN, now_ms=now_ms)
        credential_id = credential.get("rawId") or credential.get("id")
        if not isinstance(credential_id, str) or not credential_id:
            raise PasskeyRefused("malformed", "the answer names no credential")
        unb64u(credential_id)
        return challenge, credential, credential_id

    def signing_options(self, challenge: bytes, credential_ids: list[str]) -> dict[str, Any]:
        """``navigator.credentials.get`` options to sign ``challenge`` (a digest of what is
        signed, not a random value: see ``passkey_orders.py``) with one of her passkeys,
        the person verified by the authenticator (PIN, fingerprint, face)."""
        options = _webauthn().generate_authentication_options(
            rp_id=self.rp.rp_id,
            challenge=challenge,
            timeout=CHALLENGE_MS,
            allow_credentials=[
                _webauthn().helpers.structs.PublicKeyCredentialDescriptor(id=unb64u(cid))
                for cid in credential_ids
            ],
            user_verification=_webauthn().helpers.structs.UserVerificationRequirement.REQUIRED,
        )
        result: dict[str, Any] = json.loads(_webauthn().options_to_json(options))
        return result

    def verify_login(
        self,
        challenge: bytes,
        credential: dict[str, Any],
        *,
        public_key: bytes,
        sign_count: int,
        handle: str,
        verified_person: bool = False,
    ) -> int:
        """Check an assertion by the stored passkey; its new sign count. With
        ``verified_person`` the authenticator must have verified her (the UV flag)."""
        sent_handle = (credential.get("response") or {}).get("userHandle")
        if sent_handle and sent_handle != handle:
            raise PasskeyRefused("bad_passkey", "the passkey belongs to someone else")
        try:
            verified = _webauthn().verify_authentication_response(
                credential=credential,
                expected_challenge=challenge,
                expected_rp_id=self.rp.rp_id,
                expected_origin=self.rp.origin,
                credential_public_key=public_key,
                credential_current_sign_count=sign_count,
                require_user_verification=verified_person,
            )
        except _not_accepted() as exc:
            raise PasskeyRefused(
                "bad_passkey", "the passkey was not accepted: {detail}", detail=str(exc)
            ) from None
        return int(verified.new_sign_count)


def _parse(body: Any) -> tuple[bytes, dict[str, Any]]:
    """``{"challenge": <base64url>, "credential": <PublicKeyCredential as JSON>}``."""
    if not isinstance(body, dict) or set(body) - {"challenge", "credential", "name"}:
        raise PasskeyRefused("malformed", 'expected {"challenge": …, "credential": {…}}')
    credential = body.get("credential")
    if not isinstance(credential, dict):
        raise PasskeyRefused("malformed", "credential must be an object")
    if len(json.dumps(credential)) > MAX_CREDENTIAL_JSON:
        raise PasskeyRefused("malformed", "credential is too large")
    return unb64u(body.get("challenge", "")), credential


def short_did(did: str) -> str:
    """A DID as a person may recognise it in her authenticator's list."""
    return did if len(did) <= 32 else f"{did[:20]}…{did[-8:]}"


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def bound_entry(
    did: str,
    credential_id: str,
    digests: list[str],
    disclosure: int | None,
    public_key: bytes | None = None,
) -> NewEntry:
    """The binding on the record: which passkey (its id's digest), on which presentations,
    and its public key (COSE, base64url), so what it signs later can be checked from the
    record alone (orders: ``gateway/market/passkey_orders.py``)."""
    body: dict[str, Any] = {
        "passkey": credential_id_hash(credential_id),
        "presentations": digests,
        "disclosure": disclosure,
    }
    if public_key is not None:
        body["key"] = b64u(public_key)
    return NewEntry(BOUND_KIND, did, _canonical(body))


def removed_entry(did: str, credential_id: str, reason: str) -> NewEntry:
    body = {"passkey": credential_id_hash(credential_id), "reason": reason}
    return NewEntry(REMOVED_KIND, did, _canonical(body))


def session_entry(
    did: str,
    *,
    credential_id: str,
    digests: list[str],
    disclosure: int | None,
    expires_ms: int,
) -> NewEntry:
    """A passkey sign-in, shaped like a presentation sign-in's ``person-session`` entry
    (the binding's presentations' digests, where their disclosure is) plus the passkey."""
    body = {
        "presentations": digests,
        "disclosure": disclosure,
        "expires": expires_ms,
        "method": "passkey",
        "passkey": credential_id_hash(credential_id),
    }
    return NewEntry(SESSION_KIND, did, _canonical(body))
