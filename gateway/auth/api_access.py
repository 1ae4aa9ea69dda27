"""Who may do what through the JSON API (sans-IO): one decision for tokens and people.

A caller is an API token (its role, see :mod:`gateway.auth.api_tokens`) or a signed-in
person (her :class:`~gateway.credentials.permissions.Permissions`, from the credentials
she presented):

* a facility manager reads and changes the devices and the credentials this gateway
  issued (suspend, resume, revoke), and reads the record, the anchors and the status
  (what her console's People, Record and Health pages show);
* a household member reads the market data of her own households (orders, trades and
  statements naming them) and their energy (meter readings), and nothing else;
* anything else is refused, with a stable reason.

Every decision fails closed: an unknown area, role or caller is a refusal.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from gateway.auth.api_tokens import AREAS, role_may
from gateway.credentials.permissions import Decision, Permissions


@dataclass(frozen=True)
class Caller:
    """Who asks: ``role`` is an API token's role, "" for a person."""

    name: str
    permissions: Permissions
    role: str = ""

    @property
    def is_token(self) -> bool:
        return bool(self.role)


def may(caller: Caller, area: str, *, change: bool) -> Decision:
    """Whether ``caller`` may read (``change`` False) or change ``area`` at all.

    For a household member, market and energy reads are allowed here and narrowed to her
    households by :func:`market_scope`."""
    if area not in AREAS:
        return Decision(False, "unknown_area")
    if caller.is_token:
        return role_may(caller.role, area, change=change)
    if area in ("devices", "credentials") or (
        area in ("chain", "anchors", "status") and not change
    ):
        return caller.permissions.may_manage_devices()
    if area in ("market", "energy") and not change:
        if caller.permissions.households:
            return Decision(True, "ok")
        return Decision(False, "not_member")
    return Decision(False, "not_for_people")


def market_scope(caller: Caller) -> frozenset[str] | None:
    """The households whose market data ``caller`` sees: None for all (tokens that may
    read the market), else the households her credentials name."""
    if caller.is_token:
        return None
    return frozenset(caller.permissions.households)


def sees(scope: frozenset[str] | None, households: Collection[str | None]) -> bool:
    """Whether a row naming ``households`` is visible within ``scope``."""
    return scope is None or any(h in scope for h in households if h is not None)
