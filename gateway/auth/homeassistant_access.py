"""Home Assistant's view of one household on the broker: her topics and her read-only account.

A household that opts in (``didgw homeassistant enable``) gets a broker account of its own
for her Home Assistant, which may **read** exactly two things and write nothing:

- ``<prefix>/ha/<node>/#``: her discovery message and her states. ``<node>`` is
  :func:`node_id` of her DID (16 hex digits of its SHA-256): a DID has ``:`` and may be
  long, and Home Assistant wants ``[a-zA-Z0-9_-]`` in its ids.
- ``<prefix>/ha/status``: the gateway's availability (``online``, or ``offline`` as its
  last will), the same for every household and nobody's data.

**Why a discovery prefix per household.** Home Assistant subscribes to
``<discovery prefix>/+/+/config`` and ``<discovery prefix>/+/+/+/config``. With the
default prefix ``homeassistant`` those filters cover every household's messages, and the
broker would have to refuse the subscription (an ACL cannot grant "only the topics with my
id in the third level" for a filter with ``+`` there). Home Assistant's discovery prefix is
a setting of its MQTT integration, so each household's Home Assistant uses
``<prefix>/ha/<node>`` as its prefix, and its subscriptions then fall inside the one
pattern its role grants. The gateway's own account already covers ``<prefix>/#``.

The account is named ``ha-<node>`` (no ``did:``, which the didgw broker plugin would take
as a device's, and no ``didgw-``, which is reserved for client ids: ``auth/broker.py``);
its role is ``didgw-ha-<node>``. Like every policy function here, these return
dynamic-security commands, tested without a broker.
"""

from __future__ import annotations

import hashlib

from gateway.auth.broker import Command, _acl, _role_commands, check_prefix
from gateway.identity.document import check_did_syntax

#: The account's username and role start with these.
USERNAME_PREFIX = "ha-"
ROLE_PREFIX = "didgw-ha-"
NODE_HEX = 16  # 64 bits of SHA-256: ids that collide by chance need ~4 billion households


def node_id(did: str) -> str:
    """The household's id in topics, usernames and Home Assistant ids (16 hex digits)."""
    check_did_syntax(did)
    return hashlib.sha256(did.encode()).hexdigest()[:NODE_HEX]


def discovery_prefix(prefix: str, node: str) -> str:
    """What her Home Assistant's MQTT integration takes as its discovery prefix."""
    return f"{check_prefix(prefix)}/ha/{_checked_node(node)}"


def discovery_topic(prefix: str, node: str) -> str:
    """Her device's discovery message (device-based discovery: one message, every entity)."""
    return f"{discovery_prefix(prefix, node)}/device/didgw_{node}/config"


def state_topic(prefix: str, node: str) -> str:
    return f"{discovery_prefix(prefix, node)}/state"


def status_topic(prefix: str) -> str:
    """The gateway's availability for Home Assistant: ``online``, or ``offline`` (its will)."""
    return f"{check_prefix(prefix)}/ha/status"


def username(node: str) -> str:
    return USERNAME_PREFIX + _checked_node(node)


def role_name(node: str) -> str:
    return ROLE_PREFIX + _checked_node(node)


def role_commands(prefix: str, node: str) -> list[Command]:
    """Her role: subscribe to and receive her subtree and the gateway's status; no publish
    (the default access denies it). Safe to apply again with ``POLICY_OK_ERRORS``."""
    hers = f"{discovery_prefix(prefix, node)}/#"
    status = status_topic(prefix)
    acls = [
        _acl("subscribePattern", hers),
        _acl("publishClientReceive", hers),
        _acl("subscribeLiteral", status),
        _acl("publishClientReceive", status),
    ]
    return _role_commands(role_name(node), "didgw: a household's Home Assistant (read-only)", acls)


def client_commands(node: str, password: str) -> list[Command]:
    """Her account with her role (create the role first)."""
    if len(password) < 16:
        raise ValueError("a Home Assistant account needs a password of 16 characters or more")
    return [
        {
            "command": "createClient",
            "username": username(node),
            "password": password,
            "roles": [{"rolename": role_name(node)}],
        }
    ]


def removal_commands(node: str) -> list[Command]:
    """Delete her account (the broker disconnects her) and her role; apply with
    ``RECONCILE_OK_ERRORS`` so that what is gone already is no error."""
    return [
        {"command": "deleteClient", "username": username(node)},
        {"command": "deleteRole", "rolename": role_name(node)},
    ]


def _checked_node(node: str) -> str:
    if len(node) != NODE_HEX or any(c not in "0123456789abcdef" for c in node):
        raise ValueError(f"not a household node id: {node!r}")
    return node
