"""A household opts in to Home Assistant, or out: her broker account and the opt-in list.

``enable``: her role and account on the broker (dynamic security, over the gateway's own
administration connection) with a new random password, then her place on the list that
the running gateway publishes for (``market/homeassistant_households.py``). The password is
returned once, to be shown to her or written to a 0600 file (``cli/homeassistant.py``); it
is kept nowhere else (the broker keeps only its salted hash). Enabling again gives the
account a new password: the way to change it.

``disable``: her account and role deleted (the broker disconnects her Home Assistant at
once), her discovery message and state cleared (empty retained messages: Home Assistant
removes the device and its entities), and her place on the list dropped. A running gateway
also clears what it published for her at its next tick, so the order does not matter.
"""

from __future__ import annotations

import secrets
import ssl
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlite_utils import Database

from gateway.auth import broker as policy
from gateway.auth import homeassistant_access as access
from gateway.market import homeassistant_households as households
from gateway.market.homeassistant import Household
from gateway.transports.dynsec import DynsecAdmin
from gateway.transports.mqtt import MqttError

PASSWORD_BYTES = 24  # 192 bits, URL-safe: no space, which mosquitto would end the password at


@dataclass(frozen=True)
class Enabled:
    household: Household
    username: str
    password: str
    discovery_prefix: str
    new: bool  # False: she had opted in already, and her account has a new password

    def __repr__(self) -> str:  # never the password
        return f"Enabled({self.household.did}, {self.username}, new={self.new})"


def enable(db: Database, admin: DynsecAdmin, did: str, *, prefix: str, now_ms: int) -> Enabled:
    household = households.check_household(db, did)
    node = household.node
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    admin.execute(access.role_commands(prefix, node), ok_errors=policy.POLICY_OK_ERRORS)
    name = access.username(node)
    if name in admin.list_clients():
        admin.set_client_password(name, password)
    else:
        admin.execute(access.client_commands(node, password))
    new = households.opt_in(db, did, now_ms)
    return Enabled(household, name, password, access.discovery_prefix(prefix, node), new)


def disable(db: Database, admin: DynsecAdmin, did: str) -> bool:
    """Her account and role gone, her place on the list dropped (False: she had none)."""
    node = access.node_id(did)
    admin.execute(access.removal_commands(node), ok_errors=policy.RECONCILE_OK_ERRORS)
    return households.opt_out(db, did)


def clear_published(
    host: str,
    port: int,
    username: str,
    password: str,
    topics: list[str],
    *,
    tls: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> None:
    """Delete the retained messages of ``topics`` (empty retained publishes, QoS 1, each
    acknowledged) as the gateway's account."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{policy.CLIENT_ID_PREFIX}homeassistant-{secrets.token_hex(8)}",
        protocol=mqtt.MQTTv5,
        reconnect_on_failure=False,
    )
    client.username_pw_set(username, password)
    if tls is not None:
        client.tls_set_context(tls)
    try:
        client.connect(host, port, keepalive=10)
        client.loop_start()
        infos = [client.publish(topic, b"", qos=1, retain=True) for topic in topics]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.01, deadline - time.monotonic()))
            if not info.is_published():
                raise MqttError(f"the broker at {host}:{port} did not take the clearing in time")
    except (OSError, RuntimeError, ValueError) as exc:
        raise MqttError(f"cannot clear the retained messages at {host}:{port}: {exc}") from None
    finally:
        client.disconnect()
        client.loop_stop()
