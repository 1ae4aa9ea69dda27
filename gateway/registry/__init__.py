"""The device registry: the facility manager's list of who may connect, and its history.

Sans-IO; may import the foundations, ``identity`` and ``chain`` (every change is on the
record); never an edge.
"""

from gateway.registry.model import KINDS, AuditRecord, Device, Status
from gateway.registry.store import Registry

__all__ = ["KINDS", "AuditRecord", "Device", "Registry", "Status"]
