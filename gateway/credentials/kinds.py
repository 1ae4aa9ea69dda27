"""The credentials the gateway issues, their claims, and what each lets its holder do.

Four kinds. Each names its VC type, its SD-JWT VC ``vct``, the claims it must and may
carry (checked at issuance, so a typo never becomes a signed statement), and which of
them are personal data (selectively disclosable in SD-JWT; everything in the
subject is disclosable there, the holder picks).

============== =============================== ===========================================
kind           claims                          grants
============== =============================== ===========================================
household      household (DID), role           trading for that household as seller/buyer
               (seller|buyer); name (optional)
facility-      site (optional), name (opt.)    registering, suspending and revoking devices
manager
device-owner   device (DID)                    nothing at the gateway (a statement for others)
vouch          device (DID), kind (optional)   nothing (the gateway vouches for a device)
============== =============================== ===========================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.errors import CredentialError, DidgwError
from gateway.identity.document import check_did_syntax


@dataclass(frozen=True)
class Kind:
    name: str
    vc_type: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    dids: tuple[str, ...] = ()  # claims that must be DIDs
    choices: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def vct(self) -> str:
        return f"urn:didgw:credential:{self.name}"


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "household",
            "HouseholdMembershipCredential",
            ("household", "role"),
            ("name",),
            dids=("household",),
            choices=(("role", ("seller", "buyer")),),
        ),
        Kind("facility-manager", "FacilityManagerCredential", (), ("site", "name")),
        Kind("device-owner", "DeviceOwnershipCredential", ("device",), (), dids=("device",)),
        Kind("vouch", "DeviceVouchCredential", ("device",), ("kind",), dids=("device",)),
    )
}
BY_VCT = {k.vct: k for k in KINDS.values()}
BY_VC_TYPE = {k.vc_type: k for k in KINDS.values()}
MAX_CLAIM_CHARS = 256


def kind_named(name: str) -> Kind:
    kind = KINDS.get(name)
    if kind is None:
        raise CredentialError(f"unknown credential type {name!r} (known: {', '.join(KINDS)})")
    return kind


def check_claims(kind: Kind, claims: Mapping[str, str]) -> dict[str, str]:
    """The claims, if they are exactly what ``kind`` takes; otherwise say what is wrong."""
    problems: list[str] = []
    missing = [c for c in kind.required if c not in claims]
    unknown = [c for c in claims if c not in kind.required + kind.optional]
    if missing:
        problems.append(f"missing {missing}")
    if unknown:
        problems.append(
            f"unknown {unknown} (a {kind.name} takes {list(kind.required + kind.optional)})"
        )
    for name, value in claims.items():
        if not value or len(value) > MAX_CLAIM_CHARS or any(ord(c) < 32 for c in value):
            problems.append(f"{name} must be 1 to {MAX_CLAIM_CHARS} printable characters")
    for name in kind.dids:
        if name in claims:
            try:
                check_did_syntax(claims[name])
            except DidgwError as exc:
                problems.append(f"{name}: {exc}")
    for name, allowed in kind.choices:
        if name in claims and claims[name] not in allowed:
            problems.append(f"{name} must be one of {list(allowed)}")
    if problems:
        raise CredentialError(f"claims of a {kind.name} credential: " + "; ".join(problems))
    return dict(claims)
