"""The broker policy: the topics, and who may publish and subscribe where.

mosquitto enforces the topic layout of docs/protocol/mqtt.md, "Topics", with two plugins:

- **Devices and people with a session** present a session token the gateway signed
  (``broker_tokens.py``); the didgw plugin (``broker-plugin/didgw_auth.c``) checks it and
  takes their topics from its claims. A device may publish exactly
  ``<prefix>/d/<did>/readings`` and ``<prefix>/d/<did>/orders`` (a household's market
  orders) and subscribe to and receive exactly ``<prefix>/d/<did>/acks`` and
  ``<prefix>/d/<did>/market``; a person, ``<prefix>/p/<did>/req``, and
  ``<prefix>/p/<did>/res`` and the revocation list. Nothing in the broker changes when a
  session starts, is renewed or ends.
- **Everyone else** is dynamic security's, with the policy as data here: every function
  returns the JSON commands for the dynamic-security plugin (sent by
  :mod:`gateway.transports.dynsec`), tested without a broker. Anonymous clients land in the
  ``didgw-anonymous`` group, whose role allows only the auth topics: publish
  ``<prefix>/auth/req`` and ``<prefix>/auth/wallet`` (people's wallets), subscribe to and
  receive ``<prefix>/auth/res/+`` and the retained revocation list on
  ``<prefix>/status-list``. The gateway's account may publish and subscribe under
  ``<prefix>/#`` and administer the plugin. Everything else is denied by default
  (:data:`DEFAULT_ACL_ACCESS`).

The broker's own settings that the policy relies on are here too (:func:`broker_settings`,
:func:`accounts_listener_settings`), so that ``configs/mosquitto/mosquitto.conf`` and the
private broker of the demo, tests and benches (``gateway/ops/broker.py``) say the same:

- A client id is no way in. mosquitto disconnects a connected client when another connects
  with the same id, whoever that is. Every client id must therefore start with
  :data:`CLIENT_ID_PREFIX` (``clientid_prefixes``; an empty id gets one from
  ``auto_id_prefix``), and on the accounts listener mosquitto replaces the id with the
  username (``use_username_as_clientid``): a device's or a person's connection has its DID
  as id, which no client can present (it lacks the prefix), so only that account can take
  its place. mosquitto checks the prefix on the id the client sent, before replacing it
  (measured with mosquitto 2.0.11). Anonymous clients cannot use the accounts listener. The
  gateway's own connections are on a listener that keeps client ids (it opens several
  with one account): their ids are secret (:func:`link_client_id`).
- No packet over :data:`MAX_PACKET_BYTES` (``max_packet_size``: the broker disconnects the
  sender before reading the payload; ``message_size_limit`` would read it first).
- Retained messages cannot be refused per client in mosquitto 2.0 (the plugin's ACLs do
  not see the retain flag; ``retain_available false`` would refuse the gateway's own
  retained revocation list), so the gateway drops retained input and clears it
  (``gateway/transports/mqtt.py``).

Gateways before session tokens made a dynamic-security account and role per session;
:func:`legacy_removals` lists the deletions that tidy them away (they let nobody in now).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

from gateway.errors import ConfigError
from gateway.identity.document import check_did_syntax

#: One dynamic-security command, as sent in ``{"commands": [...]}``.
Command = dict[str, Any]

ANONYMOUS_GROUP = "didgw-anonymous"
ANONYMOUS_ROLE = "didgw-anonymous"
GATEWAY_ROLE = "didgw-gateway"
DEVICE_ROLE_PREFIX = "didgw-device-"
PERSON_ROLE_PREFIX = "didgw-person-"
CONTROL_TOPICS = "$CONTROL/dynamic-security/#"

#: Every client id starts with this (mosquitto's ``clientid_prefixes``); no account's
#: username may, so that no client can present an id the accounts listener gives a user.
CLIENT_ID_PREFIX = "didgw-"
#: The prefix of the ids mosquitto makes up for clients that send an empty one.
AUTO_ID_PREFIX = CLIENT_ID_PREFIX + "auto-"
#: The largest MQTT packet anyone may send to the broker, and the gateway accepts (64 KiB).
#: didgw's largest messages are readings (at most 16 KiB, ``auth/readings.py``).
MAX_PACKET_BYTES = 65536
#: Connections a LAN listener accepts: the accounts one (devices and people with a
#: session) and the authentication one. They keep the broker's file descriptors
#: (``LimitNOFILE`` in ``systemd/mosquitto.service.d/didgw.conf``) from running out, so that
#: the gateway, on loopback, can always connect. A building of 10,000 devices all connected
#: at once (issue 19) fits, with room for people's sessions.
MAX_ACCOUNT_CONNECTIONS = 12000
MAX_AUTH_CONNECTIONS = 500

#: What applies when no ACL of a client's roles matches. ``subscribe`` and
#: ``publishClientSend`` are the plugin's defaults. ``publishClientReceive`` is turned from
#: the plugin's default (allow) to deny: subscriptions are checked only when made, deliveries
#: every time, so with deny a client receives only topics its roles name, even through a
#: subscription made before its role changed. ``unsubscribe`` stays allowed: leaving a topic
#: gives nothing away.
DEFAULT_ACL_ACCESS: dict[str, bool] = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,
}

#: The plugin's answers (mosquitto 2.0) that mean a policy command found its work done:
#: pass them as ``ok_errors`` with the policy commands, which are safe to apply repeatedly.
#: The shared-subscription group of the gateway's reading verifiers (gateway/run/workers.py).
VERIFY_SHARE_GROUP = "didgw-verify"

POLICY_OK_ERRORS = frozenset(
    {"Role already exists", "Group already exists", "Group is already in this role"}
)
#: … and the answers that mean a deletion found nothing to delete (for :func:`reconcile`).
RECONCILE_OK_ERRORS = frozenset({"Client not found", "Role not found"})

#: The ACL types the plugin knows; it silently drops an ACL of any other type.
ACL_TYPES = frozenset(
    {
        "publishClientSend",
        "publishClientReceive",
        "subscribeLiteral",
        "subscribePattern",
        "unsubscribeLiteral",
        "unsubscribePattern",
    }
)


# -- topics ------------------------------------------------------------------------------


def check_prefix(prefix: str) -> str:
    """``prefix`` if it can head the gateway's topics: non-empty levels, no wildcards, no ``$``."""
    levels = prefix.split("/")
    bad = (
        not prefix
        or prefix.startswith("$")
        or any(not level or any(c in level for c in "+#\x00") for level in levels)
    )
    if bad:
        raise ConfigError(
            f"MQTT topic prefix {prefix!r} is not usable: it must be one or more non-empty "
            "topic levels without '+', '#' or a leading '$' (for example 'didgw' or 'site/didgw')"
        )
    return prefix


def auth_request_topic(prefix: str) -> str:
    return f"{check_prefix(prefix)}/auth/req"


def auth_response_filter(prefix: str) -> str:
    """The topic filter covering every ``<prefix>/auth/res/<reply>``."""
    return f"{check_prefix(prefix)}/auth/res/+"


def readings_topic(did: str, prefix: str) -> str:
    return f"{check_prefix(prefix)}/d/{_checked_did(did)}/readings"


def acks_topic(did: str, prefix: str) -> str:
    return f"{check_prefix(prefix)}/d/{_checked_did(did)}/acks"


def orders_topic(did: str, prefix: str) -> str:
    return f"{check_prefix(prefix)}/d/{_checked_did(did)}/orders"


def market_topic(did: str, prefix: str) -> str:
    return f"{check_prefix(prefix)}/d/{_checked_did(did)}/market"


def wallet_auth_topic(prefix: str) -> str:
    """Where wallets send hellos and presentations (people, not devices)."""
    return f"{check_prefix(prefix)}/auth/wallet"


def status_list_topic(prefix: str) -> str:
    """The gateway's revocation list, a retained message anyone may read."""
    return f"{check_prefix(prefix)}/status-list"


def person_requests_topic(did: str, prefix: str) -> str:
    return f"{check_prefix(prefix)}/p/{_checked_did(did)}/req"


def person_responses_topic(did: str, prefix: str) -> str:
    return f"{check_prefix(prefix)}/p/{_checked_did(did)}/res"


def person_requests_filter(prefix: str) -> str:
    return f"{check_prefix(prefix)}/p/+/req"


def _checked_did(did: str) -> str:
    """``did`` if it has the DID syntax, which has no '/', '+' or '#': one whole topic level."""
    check_did_syntax(did)
    return did


# -- the anonymous clients and the gateway -----------------------------------------------


def anonymous_policy_commands(prefix: str, *, anonymous_group: str = "") -> list[Command]:
    """The anonymous group and role, and the default access; safe to apply again.

    Apply with ``ok_errors=POLICY_OK_ERRORS``: creating what exists is then a no-op, and
    ``modifyRole`` puts the role's ACLs back to exactly these. ``anonymous_group`` is the
    broker's current one (``getAnonymousGroup``): when it is already ours, the command that
    sets it is left out, because the plugin disconnects every anonymous client whenever it
    is set, even to the group it already has (devices halfway through authenticating).
    """
    acls = [
        _acl("publishClientSend", auth_request_topic(prefix)),
        _acl("subscribePattern", auth_response_filter(prefix)),
        _acl("publishClientReceive", auth_response_filter(prefix)),
        _acl("publishClientSend", wallet_auth_topic(prefix)),
        _acl("subscribeLiteral", status_list_topic(prefix)),
        _acl("publishClientReceive", status_list_topic(prefix)),
    ]
    commands = [
        *_role_commands(ANONYMOUS_ROLE, "didgw: unauthenticated devices", acls),
        {"command": "createGroup", "groupname": ANONYMOUS_GROUP},
        {"command": "addGroupRole", "groupname": ANONYMOUS_GROUP, "rolename": ANONYMOUS_ROLE},
    ]
    if anonymous_group != ANONYMOUS_GROUP:
        commands.append({"command": "setAnonymousGroup", "groupname": ANONYMOUS_GROUP})
    commands.append(
        {
            "command": "setDefaultACLAccess",
            "acls": [{"acltype": t, "allow": allow} for t, allow in DEFAULT_ACL_ACCESS.items()],
        }
    )
    return commands


def shared_readings_filter(prefix: str) -> str:
    """The shared subscription through which the gateway's processes split the readings."""
    return f"$share/{VERIFY_SHARE_GROUP}/{check_prefix(prefix)}/d/+/readings"


def gateway_role_commands(prefix: str) -> list[Command]:
    """The gateway's role: everything under ``<prefix>/`` and the plugin's control topics.

    mosquitto 2.0.11 checks a shared subscription against the whole ``$share/…`` filter,
    so the verification workers' share is granted by name as well. Apply with
    ``ok_errors=POLICY_OK_ERRORS``; it is safe to apply again.
    """
    everything = f"{check_prefix(prefix)}/#"
    acls = [
        _acl(acltype, topic)
        for topic in (everything, CONTROL_TOPICS)
        for acltype in ("publishClientSend", "subscribePattern", "publishClientReceive")
    ]
    acls.append(_acl("subscribePattern", f"$share/{VERIFY_SHARE_GROUP}/{everything}"))
    return _role_commands(GATEWAY_ROLE, "didgw: the gateway", acls)


def gateway_client_commands(username: str, password: str) -> list[Command]:
    """The gateway's own account, with :data:`GATEWAY_ROLE` (create that first)."""
    if is_device_username(username):
        raise ValueError("the gateway's broker username must not start with 'did:'")
    if username.startswith(CLIENT_ID_PREFIX):
        raise ValueError(f"the gateway's broker username must not start with {CLIENT_ID_PREFIX!r}")
    if not password:
        raise ValueError("the gateway's broker account needs a password")
    return [
        {
            "command": "createClient",
            "username": username,
            "password": password,
            "roles": [{"rolename": GATEWAY_ROLE}],
        }
    ]


# -- the broker's settings and client ids -------------------------------------------------


def broker_settings() -> list[str]:
    """The global mosquitto settings the policy relies on, as configuration lines."""
    return [
        f"clientid_prefixes {CLIENT_ID_PREFIX}",
        f"auto_id_prefix {AUTO_ID_PREFIX}",
        f"max_packet_size {MAX_PACKET_BYTES}",
    ]


def accounts_listener_settings() -> list[str]:
    """The lines under the accounts listener's ``listener`` line: ids are usernames."""
    return ["use_username_as_clientid true", f"max_connections {MAX_ACCOUNT_CONNECTIONS}"]


def auth_listener_settings() -> list[str]:
    """The lines under the LAN authentication listener (anonymous clients)."""
    return [f"max_connections {MAX_AUTH_CONNECTIONS}"]


def link_client_id(password: str) -> str:
    """The client id of the gateway's main connection: stable across restarts (its session
    keeps what arrives while it is away) and known only to whoever knows the account's
    password, that is to nobody who could not log in as the gateway anyway."""
    digest = hmac.new(password.encode(), b"didgw gateway link", hashlib.sha256).hexdigest()
    return f"{CLIENT_ID_PREFIX}gateway-{digest[:32]}"


# -- reconciliation ----------------------------------------------------------------------


def is_device_username(username: str) -> bool:
    """Device accounts, and only they, are named by a DID; administrators never are."""
    return username.startswith("did:")


def legacy_removals(
    broker_clients: Iterable[str], broker_roles: Iterable[str] = ()
) -> list[Command]:
    """The deletions that rid the broker of the accounts and roles that gateways before
    session tokens made for each session: every account named by a DID, then every device
    and person role. With the didgw plugin loaded such an account lets nobody in (a
    ``did:`` username needs a token); this tidies the broker's file. Accounts not named by
    a DID (the gateway's, the administrator's) are never touched. Apply with
    ``ok_errors=RECONCILE_OK_ERRORS``."""
    commands: list[Command] = [
        {"command": "deleteClient", "username": username}
        for username in sorted(set(broker_clients))
        if is_device_username(username)
    ]
    commands.extend(
        {"command": "deleteRole", "rolename": role}
        for role in sorted(set(broker_roles))
        if role.startswith((DEVICE_ROLE_PREFIX, PERSON_ROLE_PREFIX))
    )
    return commands


def _acl(acltype: str, topic: str) -> Command:
    return {"acltype": acltype, "topic": topic, "allow": True}


def _role_commands(name: str, textname: str, acls: list[Command]) -> list[Command]:
    """Create the role, or put an existing one's ACLs back to ``acls``."""
    return [
        {"command": "createRole", "rolename": name, "textname": textname, "acls": acls},
        {"command": "modifyRole", "rolename": name, "textname": textname, "acls": acls},
    ]
