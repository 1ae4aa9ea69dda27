"""The device registry: the facility manager's list of who may connect, and its history."""

from gateway.registry.model import KINDS, AuditRecord, Device, Status
from gateway.registry.store import Registry

__all__ = ["KINDS", "AuditRecord", "Device", "Registry", "Status"]
