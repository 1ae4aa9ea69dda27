"""What a person may do, decided from the credentials she presented (sans-IO).

A session's :class:`Permissions` are built once, from presentations that already
passed :func:`~gateway.credentials.sd_jwt.verify_presentation`, and only from
credentials of issuers the gateway trusts (itself). Each decision returns a
:class:`Decision` with a stable reason, so a refusal can say why.

The market hook: the energy market asks :meth:`Permissions.may_trade_for` before it
accepts an order from a person (``side`` ``"sell"`` needs the ``seller`` role for that
household, ``"buy"`` the ``buyer`` role).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gateway.credentials.kinds import BY_VCT
from gateway.credentials.sd_jwt import VerifiedSdJwt, holder_did_matches
from gateway.errors import CredentialError

SIDES = {"sell": "seller", "buy": "buyer"}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # "ok", or a stable code: not_facility_manager, not_member, wrong_role, …

    def __bool__(self) -> bool:
        return self.allowed


ALLOWED = Decision(True, "ok")


@dataclass(frozen=True)
class Permissions:
    """The rights of one authenticated person."""

    holder: str
    facility_manager: bool = False
    households: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))
    presentation_digest: str = ""  # SHA-256 over the presentations' digests, hex

    def may_manage_devices(self) -> Decision:
        """Register, suspend and revoke devices: facility managers only."""
        if self.facility_manager:
            return ALLOWED
        return Decision(False, "not_facility_manager")

    def may_trade_for(self, household: str, side: str | None = None) -> Decision:
        """Send a market order for ``household`` (``side``: "sell", "buy" or None for either)."""
        roles = self.households.get(household)
        if roles is None:
            return Decision(False, "not_member")
        if side is None:
            return ALLOWED
        if side not in SIDES:
            return Decision(False, "bad_side")
        return ALLOWED if SIDES[side] in roles else Decision(False, "wrong_role")

    def to_json(self) -> dict[str, Any]:
        """What a web session or a passkey keeps of these permissions (:meth:`from_json`)."""
        return {
            "holder": self.holder,
            "facility_manager": self.facility_manager,
            "households": {h: sorted(r) for h, r in sorted(self.households.items())},
            "presentation_digest": self.presentation_digest,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Permissions:
        households = MappingProxyType(
            {h: frozenset(roles) for h, roles in data.get("households", {}).items()}
        )
        return cls(
            str(data["holder"]),
            bool(data.get("facility_manager", False)),
            households,
            str(data.get("presentation_digest", "")),
        )

    def names(self) -> list[str]:
        """The grants as short strings, for the session grant and the log."""
        found = ["devices"] if self.facility_manager else []
        for household, roles in sorted(self.households.items()):
            found += [f"trade:{household}:{role}" for role in sorted(roles)]
        return found


def permissions_from(
    presentations: Sequence[VerifiedSdJwt], *, holder: str, trusted_issuers: Collection[str]
) -> Permissions:
    """Combine verified presentations by ``holder``; refuse any not bound to her or untrusted."""
    import hashlib

    if not presentations:
        raise CredentialError("no presentation")
    manager = False
    households: dict[str, set[str]] = {}
    for p in presentations:
        if p.issuer not in trusted_issuers:
            raise CredentialError(f"credentials issued by {p.issuer} are not trusted here")
        if p.subject != holder or not holder_did_matches(p.subject, p.holder_key):
            raise CredentialError("a presentation is not about, or not bound to, the holder")
        kind = BY_VCT.get(p.vct)
        if kind is None:
            raise CredentialError(f"credential type {p.vct!r} grants nothing here")
        if kind.name == "facility-manager":
            manager = True
        elif kind.name == "household":
            household, role = p.claims.get("household"), p.claims.get("role")
            if not isinstance(household, str) or not isinstance(role, str):
                raise CredentialError(
                    "a household credential must disclose household and role to be used"
                )
            households.setdefault(household, set()).add(role)
    digest = hashlib.sha256("".join(p.digest for p in presentations).encode()).hexdigest()
    frozen = MappingProxyType({h: frozenset(r) for h, r in households.items()})
    return Permissions(holder, manager, frozen, digest)
