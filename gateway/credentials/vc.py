"""Verifiable Credentials 2.0 secured with Data Integrity: the shape, and the whole check.

:func:`verify_credential` collects *every* reason a credential fails (the CLI prints
them all) and refuses if there is any: the VC 2.0 base shape (context, types, issuer,
subject, ``validFrom``/``validUntil``), each proof of the proof set, that the proofs
were made by the issuer (a key of the issuer DID), the validity window, and the
revocation bit when the credential has a ``credentialStatus``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.credentials.data_integrity import parse_datetime, verify_proofs
from gateway.credentials.status_source import StatusLists
from gateway.errors import CredentialError, DidgwError
from gateway.identity.resolver import Resolver

V2_CONTEXT = "https://www.w3.org/ns/credentials/v2"
MAX_CREDENTIAL_BYTES = 64 * 1024


class CredentialInvalid(CredentialError):
    """The credential failed one or more checks; ``reasons`` lists them all."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass(frozen=True)
class VerifiedCredential:
    """A credential that passed every check."""

    issuer: str
    types: list[str]
    subject: dict[str, Any]
    credential: dict[str, Any] = field(repr=False)


def issuer_id(credential: Mapping[str, Any]) -> str:
    value = credential.get("issuer")
    if isinstance(value, dict):
        value = value.get("id")
    if not isinstance(value, str) or not value:
        raise CredentialError("issuer must be a URL or an object with an id")
    return value


def shape_problems(credential: Mapping[str, Any]) -> list[str]:
    """What is wrong with the VC 2.0 base shape (empty: nothing)."""
    problems: list[str] = []
    context = credential.get("@context")
    if not isinstance(context, list) or not context or context[0] != V2_CONTEXT:
        problems.append(f"@context must be a list starting with {V2_CONTEXT}")
    types = credential.get("type")
    if not isinstance(types, list) or "VerifiableCredential" not in types:
        problems.append("type must be a list including VerifiableCredential")
    try:
        issuer_id(credential)
    except CredentialError as exc:
        problems.append(str(exc))
    subject = credential.get("credentialSubject")
    if not isinstance(subject, dict) or not subject:
        problems.append("credentialSubject must be a non-empty object")
    for name in ("validFrom", "validUntil"):
        if name in credential:
            try:
                parse_datetime(credential[name], name)
            except CredentialError as exc:
                problems.append(str(exc))
    return problems


def verify_credential(
    credential: Any,
    *,
    resolver: Resolver,
    now: float,
    status: StatusLists | None,
) -> VerifiedCredential:
    """Verify a VC 2.0 with ``eddsa-jcs-2022`` proofs; raise :class:`CredentialInvalid`."""
    if not isinstance(credential, dict):
        raise CredentialInvalid(["a credential must be a JSON object"])
    reasons = shape_problems(credential)
    issuer = credential.get("issuer")
    issuer = issuer.get("id") if isinstance(issuer, dict) else issuer
    try:
        proofs = verify_proofs(credential, resolver=resolver, now=now)
        if isinstance(issuer, str) and any(p.controller != issuer for p in proofs):
            reasons.append(f"a proof is made by a key that is not the issuer's ({issuer})")
    except DidgwError as exc:
        reasons.append(str(exc))
    reasons += _window_problems(credential, now)
    if "credentialStatus" in credential and isinstance(issuer, str):
        if status is None:
            reasons.append("the credential has a status, and no status list can be read here")
        else:
            try:
                entry = credential["credentialStatus"]
                if status.revoked(entry, issuer=issuer, now=now):
                    reasons.append("the credential is revoked")
                elif status.suspended(entry, issuer=issuer):
                    reasons.append("the credential is suspended")
            except DidgwError as exc:
                reasons.append(f"status: {exc}")
    if reasons:
        raise CredentialInvalid(reasons)
    if not isinstance(issuer, str):  # shape_problems refused it already
        raise CredentialInvalid(["issuer must be a URL"])
    return VerifiedCredential(
        issuer, list(credential["type"]), credential["credentialSubject"], credential
    )


def _window_problems(credential: Mapping[str, Any], now: float) -> list[str]:
    problems = []
    try:
        if "validFrom" in credential and parse_datetime(credential["validFrom"], "validFrom") > now:
            problems.append("the credential is not valid yet (validFrom)")
        if (
            "validUntil" in credential
            and parse_datetime(credential["validUntil"], "validUntil") <= now
        ):
            problems.append("the credential has expired (validUntil)")
    except CredentialError:
        pass  # already reported by shape_problems
    return problems
