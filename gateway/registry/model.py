"""Devices, their lifecycle, and the checks on what a person types when registering one.

The lifecycle is a transition table (as h11 writes its protocol states): an
action not in the table for the device's current status is refused with a reason.
``revoked`` is final: a revoked DID never comes back; a replacement gets a new DID.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import RegistryError


class Status(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"


#: action -> {status before: status after}
TRANSITIONS: dict[str, dict[Status, Status]] = {
    "suspend": {Status.ACTIVE: Status.SUSPENDED},
    "resume": {Status.SUSPENDED: Status.ACTIVE},
    "revoke": {Status.ACTIVE: Status.REVOKED, Status.SUSPENDED: Status.REVOKED},
    "rotate": {Status.ACTIVE: Status.REVOKED, Status.SUSPENDED: Status.REVOKED},
}

KINDS = (
    "sensor",
    "meter",
    "inverter",
    "battery",
    "charger",
    "actuator",
    "controller",
    "household",
    "other",
)

_NAME_MAX = 80
_TOPIC_SEGMENT = re.compile(r"[^\x00-\x1f+#/]+|\+|#")


def next_status(action: str, did: str, current: Status) -> Status:
    """The status after ``action``, or a :class:`RegistryError` saying why not."""
    after = TRANSITIONS[action].get(current)
    if after is not None:
        return after
    if current is Status.REVOKED:
        raise RegistryError(
            f"cannot {action} {did}: it is revoked, which is permanent "
            "(register the device again under a new DID)"
        )
    raise RegistryError(f"cannot {action} {did}: it is already {current.value}")


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > _NAME_MAX or not name.isprintable():
        raise RegistryError(f"device name must be 1-{_NAME_MAX} printable characters, got {name!r}")
    return name


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise RegistryError(f"unknown device kind {kind!r}; use one of: {', '.join(KINDS)}")
    return kind


def check_topic(topic: str) -> str:
    """An MQTT topic filter the device may use: no leading '$', wildcards only as whole levels."""
    if not topic or topic.startswith("$") or len(topic.encode()) > 1024:
        raise RegistryError(f"topic {topic!r} is not allowed (empty, '$…' or too long)")
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if (
            not level
            or not _TOPIC_SEGMENT.fullmatch(level)
            or (level == "#" and i != len(levels) - 1)
        ):
            raise RegistryError(
                f"topic {topic!r} is not a valid MQTT topic filter "
                "(levels separated by '/', '+' and '#' only as whole levels, '#' last)"
            )
    return topic


def check_capability(capability: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_.:-]{0,63}", capability):
        raise RegistryError(
            f"capability {capability!r} must be a lower-case word (letters, digits, _ . : -)"
        )
    return capability


@dataclass(frozen=True)
class Device:
    """A registered device as the registry holds it."""

    did: str
    name: str
    kind: str
    status: Status
    created_at: float
    updated_at: float
    owner: str | None = None
    topics: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    replaces: str | None = None
    replaced_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "did": self.did,
            "name": self.name,
            "kind": self.kind,
            "status": self.status.value,
            "owner": self.owner,
            "topics": list(self.topics),
            "capabilities": list(self.capabilities),
            "metadata": self.metadata,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "replaces": self.replaces,
            "replaced_by": self.replaced_by,
        }


@dataclass(frozen=True)
class AuditRecord:
    """One change to the registry: who did what to which device, when and why."""

    id: int
    ts: float
    actor: str
    action: str
    device: str
    reason: str
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts,
            "actor": self.actor,
            "action": self.action,
            "device": self.device,
            "reason": self.reason,
            "detail": self.detail,
        }
