"""The people's desk: what the MQTT wallet protocol and the HTTP sign-in share.

One place decides whom the gateway trusts (itself, as issuer), verifies a presentation
(:meth:`PeopleDesk.verify`), turns verified presentations into what a person may do
(:meth:`PeopleDesk.permissions` over
:func:`~gateway.credentials.permissions.permissions_from`), records a sign-in (a
disclosure entry and a person-session entry) and carries out a person's device actions.
``mqtt_people.py`` and ``http/login.py`` both use it, so there is one trusted-issuer rule
and one permission core, not one per edge.

A desk owns a database connection and is used from one thread only (the edge's desk
thread).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.auth import person_requests as requests
from gateway.auth.strict import AuthRefused
from gateway.chain.store import ChainStore
from gateway.config import Config
from gateway.credentials.permissions import Permissions, permissions_from
from gateway.credentials.sd_jwt import UntrustedIssuer, VerifiedSdJwt, verify_presentation
from gateway.db import write_transaction
from gateway.errors import CredentialError, DidgwError
from gateway.identity.signing import Signer
from gateway.registry import Registry
from gateway.service import build_issuer, build_resolver, build_status_lists


@dataclass
class PersonSession:
    """What a person's session keeps of her sign-in, for the actions she takes in it."""

    expires_ms: int
    permissions: Permissions
    digests: list[str]
    disclosure: int  # the entry holding what the presentations disclosed
    status_indexes: frozenset[int]


class SignIn(Protocol):
    """A verified sign-in, as the record needs it (MQTT's ``PersonGrant``, HTTP's
    ``VpGrant``)."""

    @property
    def did(self) -> str: ...

    @property
    def expires_ms(self) -> int: ...

    @property
    def presentations(self) -> tuple[VerifiedSdJwt, ...]: ...

    def disclosed(self) -> dict[str, Any]: ...


def refusal_reason(detail: str) -> str:
    """The stable reason of a presentation refused by :func:`verify_presentation`."""
    if "failing closed" in detail or "unreachable" in detail:
        return "unavailable"
    if "revoked" in detail:
        return "revoked"
    if "is suspended" in detail:
        return "suspended"
    return "bad_presentation"


class PeopleDesk:
    """The database side, used from one thread only: presentations, registry, record."""

    def __init__(self, config: Config, db: Any, gateway_did: str) -> None:
        c = config.credentials
        self.db = db
        self.trusted_issuers = frozenset({gateway_did})
        self.resolver = build_resolver(config)
        self.chain = ChainStore(db)
        self.registry = Registry(db, self.resolver, chain=self.chain, gateway_did=gateway_did)
        self.issuer = build_issuer(config, db, gateway_did)
        self.status = build_status_lists(config, self.resolver, self.issuer)
        self.max_kb_age = float(c.presentation_max_age_seconds)
        self.skew = float(config.devices.clock_skew_seconds)  # replaced on a reload

    def verify(self, text: str, nonce: str, aud: str) -> VerifiedSdJwt:
        """One presentation for this nonce and audience, or the refusal's reason
        (:class:`AuthRefused`: ``not_permitted`` for an untrusted issuer, refused before
        anything it names is fetched; ``revoked``; ``suspended``; ``unavailable``;
        ``bad_presentation``, its detail saying what was wrong)."""
        try:
            return self.check(text, nonce, aud)
        except UntrustedIssuer as exc:  # refused before anything it names was fetched
            raise AuthRefused("not_permitted", str(exc)) from None
        except CredentialError as exc:
            raise AuthRefused(refusal_reason(str(exc)), str(exc)) from None
        except DidgwError as exc:
            raise AuthRefused("unavailable", str(exc)) from None

    def check(self, text: str, nonce: str, aud: str) -> VerifiedSdJwt:
        """:meth:`verify` with the errors as they are: :class:`UntrustedIssuer` (before
        anything is fetched), :class:`CredentialError`, or DidgwError (cannot check now);
        the OpenID4VP core names their reasons itself."""
        return verify_presentation(
            text,
            resolver=self.resolver,
            now=time.time(),
            nonce=nonce,
            aud=aud,
            status=self.status,
            max_kb_age=self.max_kb_age,
            clock_skew=self.skew,
            trusted_issuers=self.trusted_issuers,
        )

    def permissions(self, verified: Sequence[VerifiedSdJwt], holder: str) -> Permissions:
        """What ``holder`` may do by these verified presentations (``CredentialError`` when
        one is untrusted, not hers, or of a kind that grants nothing)."""
        return permissions_from(verified, holder=holder, trusted_issuers=self.trusted_issuers)

    def record_session(self, grant: SignIn, now_ms: int) -> tuple[int, list[str]]:
        """The erasable disclosure entry and the session entry; returns the former's seq."""
        digests = [p.digest for p in grant.presentations]
        try:
            with write_transaction(self.db.conn):
                [disclosed] = self.chain.append_within(
                    [requests.disclosure_entry(grant.did, digests, grant.disclosed())],
                    now_ms=now_ms,
                )
                self.chain.append_within(
                    [requests.session_entry(grant.did, digests, disclosed.seq, grant.expires_ms)],
                    now_ms=now_ms,
                )
        except BaseException:
            self.chain.resync()
            raise
        return disclosed.seq, digests

    def manage(self, person: str, request: requests.PersonRequest, session: PersonSession) -> None:
        """Register, suspend or revoke a device as ``person``, the action on the record."""
        also = [
            requests.action_entry(
                person, request, digests=session.digests, disclosure=session.disclosure
            )
        ]
        f, now = request.fields, time.time()
        if request.action == "register":
            self.registry.register(
                f["did"], name=f["name"], kind=f["kind"], actor=person, now=now, also=also
            )
        elif request.action == "suspend":
            self.registry.suspend(f["did"], actor=person, reason=f["reason"], now=now, also=also)
        else:
            self.registry.revoke(f["did"], actor=person, reason=f["reason"], now=now, also=also)

    def revocations(self) -> tuple[int, frozenset[int]]:
        """(the published list's revision, the status bits that end a session: revoked or
        suspended — a suspension is not published, so it does not change the revision)."""
        return self.issuer.revision(), frozenset(self.issuer.ended_indexes())

    def barred_since(self, since_ms: int) -> list[tuple[str, int]]:
        """(holder DID, when) of the credentials revoked or suspended since ``since_ms``."""
        rows = self.db.execute(
            "SELECT subject, max(coalesce(revoked_ms, 0), coalesce(suspended_ms, 0)) "
            "FROM credentials WHERE revoked_ms >= ? OR suspended_ms >= ?",
            [since_ms, since_ms],
        ).fetchall()
        return [(str(did), int(at)) for did, at in rows]

    def status_list(self, signer: Signer) -> bytes:
        credential = self.issuer.status_list_credential(signer, now=time.time())
        return json.dumps(credential, separators=(",", ":")).encode()
