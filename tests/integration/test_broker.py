"""The broker policy against a real mosquitto: what anonymous clients, devices (with a session
token: the didgw plugin) and the gateway may do, the removal of accounts left by gateways
before tokens, and the dynamic-security client.

"Cannot" is checked where it matters, at the receiving end: the gateway (or a device) is
subscribed, and a marker sent after the forbidden message must be the first thing to arrive.
mosquitto delivers in order, so nothing arriving before the marker means nothing was let
through, without waiting for a timeout.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import threading
import time

import pytest
from broker import Mosquitto, Peer

from gateway.auth import broker as policy
from gateway.transports.dynsec import DynsecAdmin, DynsecError

pytestmark = pytest.mark.integration

DEVICE = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
OTHER = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
THIRD = "did:key:z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH"
REPLY = "r3ply-token_0123456789"
NOT_AUTHORIZED = "Not authorized"


def readings(did: str) -> str:
    return policy.readings_topic(did, "didgw")


def acks(did: str) -> str:
    return policy.acks_topic(did, "didgw")


def marker() -> bytes:
    return secrets.token_hex(8).encode()


def add_device(mosquitto: Mosquitto, did: str) -> str:
    """A session for ``did`` as the gateway gives one after a grant: its token (password)."""
    return mosquitto.token(did)


def connected(peer: Peer) -> Peer:
    code = peer.connect()
    assert not code.is_failure, code
    return peer


def watching_everything(mosquitto: Mosquitto) -> Peer:
    """The gateway's account, subscribed to everything under the prefix."""
    gateway = connected(mosquitto.gateway())
    assert not gateway.subscribe("didgw/#").is_failure
    return gateway


def client_tool(mosquitto: Mosquitto, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, "-h", mosquitto.host, "-p", str(mosquitto.port), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


# -- anonymous clients -----------------------------------------------------------------------


def test_an_anonymous_client_can_use_the_auth_topics(mosquitto: Mosquitto) -> None:
    with connected(mosquitto.peer()) as device, watching_everything(mosquitto) as gateway:
        assert not device.subscribe(f"didgw/auth/res/{REPLY}").is_failure
        hello = json.dumps({"type": "hello", "did": DEVICE, "reply": REPLY}).encode()
        assert not device.publish("didgw/auth/req", hello).is_failure
        assert gateway.next_message() == ("didgw/auth/req", hello)

        challenge = b'{"type": "challenge"}'
        assert not gateway.publish(f"didgw/auth/res/{REPLY}", challenge).is_failure
        assert device.next_message() == (f"didgw/auth/res/{REPLY}", challenge)


def test_an_anonymous_client_cannot_publish_anywhere_else(mosquitto: Mosquitto) -> None:
    with connected(mosquitto.peer()) as intruder, watching_everything(mosquitto) as gateway:
        for topic in (readings(DEVICE), acks(DEVICE), f"didgw/auth/res/{REPLY}", "elsewhere"):
            assert str(intruder.publish(topic, b"forged")) == NOT_AUTHORIZED, topic
        token = marker()
        intruder.publish("didgw/auth/req", token)
        assert gateway.received_until("didgw/auth/req", token) == []


def test_a_foreign_client_with_mosquitto_pub_publishing_into_a_device_topic_is_denied(
    mosquitto: Mosquitto,
) -> None:
    add_device(mosquitto, DEVICE)
    other_password = add_device(mosquitto, OTHER)
    with watching_everything(mosquitto) as gateway:
        forged = ["-t", readings(DEVICE), "-m", "forged", "-q", "1"]
        # MQTT 3.1.1 has no way to tell the publisher: the broker drops the message silently.
        assert client_tool(mosquitto, "mosquitto_pub", *forged).returncode == 0
        denied = client_tool(mosquitto, "mosquitto_pub", "-V", "5", *forged)
        assert NOT_AUTHORIZED in denied.stderr
        as_other = ["-u", OTHER, "-P", other_password, *forged]
        assert client_tool(mosquitto, "mosquitto_pub", *as_other).returncode == 0
        # mosquitto_pub waited for each PUBACK: the broker had routed (or dropped) them all.
        token = marker()
        gateway.publish("didgw/auth/req", token)
        assert gateway.received_until("didgw/auth/req", token) == []


@pytest.mark.parametrize(
    "topic_filter",
    ["didgw/#", "#", "didgw/d/+/readings", "didgw/d/+/acks", "didgw/auth/res/#", "didgw/auth/req"],
)
def test_an_anonymous_client_cannot_subscribe_beyond_the_auth_responses(
    mosquitto: Mosquitto, topic_filter: str
) -> None:
    with connected(mosquitto.peer()) as eavesdropper, connected(mosquitto.gateway()) as gateway:
        assert str(eavesdropper.subscribe(topic_filter)) == NOT_AUTHORIZED
        assert not eavesdropper.subscribe(f"didgw/auth/res/{REPLY}").is_failure
        for topic in (readings(DEVICE), acks(DEVICE), "didgw/auth/req", "didgw/auth/res/x/y"):
            gateway.publish(topic, b"private")
        token = marker()
        gateway.publish(f"didgw/auth/res/{REPLY}", token)
        assert eavesdropper.received_until(f"didgw/auth/res/{REPLY}", token) == []


def test_mosquitto_sub_cannot_subscribe_to_the_readings_anonymously(mosquitto: Mosquitto) -> None:
    result = client_tool(mosquitto, "mosquitto_sub", "-t", "didgw/d/+/readings", "-W", "5")
    assert "All subscription requests were denied" in result.stderr
    assert result.stdout == ""


# -- devices ---------------------------------------------------------------------------------


def test_a_device_publishes_its_readings_and_receives_its_acks(mosquitto: Mosquitto) -> None:
    password = add_device(mosquitto, DEVICE)
    with (
        connected(mosquitto.peer(DEVICE, password)) as device,
        watching_everything(mosquitto) as gateway,
    ):
        assert not device.subscribe(acks(DEVICE)).is_failure
        assert not device.publish(readings(DEVICE), b"reading 1").is_failure
        assert gateway.next_message() == (readings(DEVICE), b"reading 1")
        assert not gateway.publish(acks(DEVICE), b'{"seq": 1}').is_failure
        assert device.next_message() == (acks(DEVICE), b'{"seq": 1}')


def test_a_device_cannot_reach_another_devices_topics(mosquitto: Mosquitto) -> None:
    password = add_device(mosquitto, DEVICE)
    add_device(mosquitto, OTHER)
    with (
        connected(mosquitto.peer(DEVICE, password)) as device,
        watching_everything(mosquitto) as gateway,
    ):
        for topic in (readings(OTHER), acks(OTHER), acks(DEVICE), "didgw/auth/res/x"):
            assert str(device.publish(topic, b"forged")) == NOT_AUTHORIZED, topic
        token = marker()
        device.publish(readings(DEVICE), token)
        assert gateway.received_until(readings(DEVICE), token) == []

        for topic_filter in (acks(OTHER), readings(OTHER), "didgw/d/+/acks", "didgw/#"):
            assert str(device.subscribe(topic_filter)) == NOT_AUTHORIZED, topic_filter
        assert not device.subscribe(acks(DEVICE)).is_failure
        gateway.publish(acks(OTHER), b"not for you")
        token = marker()
        gateway.publish(acks(DEVICE), token)
        assert device.received_until(acks(DEVICE), token) == []


def test_accounts_named_by_dids_are_dead_and_reconcile_removes_them(
    mosquitto: Mosquitto,
) -> None:
    """Gateways before session tokens made a dynamic-security account per session: with
    the didgw plugin first, such an account lets nobody in (a ``did:`` username needs a
    token), and the reconciliation at start-up deletes them with their roles."""
    password = secrets.token_urlsafe(24)
    with mosquitto.admin() as admin:
        for did in (DEVICE, OTHER):
            admin.execute(
                [
                    {"command": "createRole", "rolename": f"{policy.DEVICE_ROLE_PREFIX}{did[-8:]}"},
                    {"command": "createClient", "username": did, "password": password},
                ]
            )
        with mosquitto.peer(DEVICE, password) as device:
            assert str(device.connect()) == NOT_AUTHORIZED
        commands = policy.legacy_removals(admin.list_clients(), admin.list_roles())
        admin.execute(commands, ok_errors=policy.RECONCILE_OK_ERRORS)
        assert sorted(admin.list_clients()) == sorted(["admin", "gateway"])
        assert not [r for r in admin.list_roles() if r.startswith(policy.DEVICE_ROLE_PREFIX)]
        assert policy.legacy_removals(admin.list_clients(), admin.list_roles()) == []


def test_the_policy_can_be_applied_again_and_restores_the_roles(mosquitto: Mosquitto) -> None:
    loosened = {
        "command": "addRoleACL",
        "rolename": policy.ANONYMOUS_ROLE,
        "acltype": "publishClientSend",
        "topic": "didgw/#",
        "allow": True,
    }
    with mosquitto.admin() as admin:
        admin.execute([loosened])  # (this disconnects the clients that have the role)
        with connected(mosquitto.peer()) as authenticating:
            (current,) = admin.execute([{"command": "getAnonymousGroup"}])
            group = current["data"]["group"]["groupname"]
            admin.execute(
                [
                    *policy.anonymous_policy_commands(mosquitto.prefix, anonymous_group=group),
                    *policy.gateway_role_commands(mosquitto.prefix),
                ],
                ok_errors=policy.POLICY_OK_ERRORS,
            )
            (role,) = admin.execute([{"command": "getRole", "rolename": policy.ANONYMOUS_ROLE}])
            # A device halfway through authenticating was not disconnected by all this.
            assert not authenticating.publish("didgw/auth/req", b"still here").is_failure
            assert not authenticating.disconnected.is_set()

            # (Setting the anonymous group, even to the same one, disconnects it.)
            admin.execute([{"command": "setAnonymousGroup", "groupname": group}])
            assert authenticating.disconnected.wait(1.0)

    expected = {
        (acl["acltype"], acl["topic"])
        for command in policy.anonymous_policy_commands(mosquitto.prefix)
        if command["command"] == "createRole"
        for acl in command["acls"]
    }
    assert {(a["acltype"], a["topic"]) for a in role["data"]["role"]["acls"]} == expected
    with connected(mosquitto.peer()) as intruder:
        assert str(intruder.publish(readings(DEVICE), b"forged")) == NOT_AUTHORIZED


# -- the dynamic-security client -------------------------------------------------------------


def test_a_refused_command_raises_naming_the_command_and_the_brokers_reason(
    mosquitto: Mosquitto,
) -> None:
    with mosquitto.admin() as admin:
        with pytest.raises(DynsecError, match=r"deleteRole .role 'nope'.: Role not found") as info:
            admin.delete_role("nope")
        assert (info.value.command, info.value.error) == ("deleteRole", "Role not found")
        admin.delete_role("nope", missing_ok=True)
        admin.delete_client(DEVICE, missing_ok=True)
        with pytest.raises(DynsecError, match="frobnicate: Unknown command"):
            admin.execute([{"command": "frobnicate"}])

        # Commands apply one by one: the first took effect though the second was refused.
        batch = [
            {"command": "createRole", "rolename": "first"},
            {"command": "createClient", "username": "second", "roles": [{"rolename": "absent"}]},
        ]
        with pytest.raises(DynsecError, match=r"createClient .username 'second'.: Role not found"):
            admin.execute(batch)
        assert "first" in admin.list_roles()
        answers = admin.execute(batch[:1], ok_errors=policy.POLICY_OK_ERRORS)
        assert answers == [{"command": "createRole", "error": "Role already exists"}]


def test_the_convenience_methods_manage_an_account(mosquitto: Mosquitto) -> None:
    with mosquitto.admin() as admin:
        admin.create_role("sensors", [{"acltype": "publishClientSend", "topic": "didgw/x"}])
        admin.create_client("sensor-account", "first", ["sensors"])
        assert admin.get_client("sensor-account")["roles"] == [{"rolename": "sensors"}]
        with pytest.raises(DynsecError, match="Client already exists"):
            admin.create_client("sensor-account", "again")

        with connected(mosquitto.peer("sensor-account", "first")) as device:
            admin.disable_client("sensor-account")
            assert device.disconnected.wait(1.0)
        with mosquitto.peer("sensor-account", "first") as device:
            assert device.connect().is_failure
        admin.enable_client("sensor-account")
        admin.set_client_password("sensor-account", "second")
        with mosquitto.peer("sensor-account", "first") as device:
            assert device.connect().is_failure
        with connected(mosquitto.peer("sensor-account", "second")):
            pass

        admin.delete_client("sensor-account")
        admin.delete_role("sensors")
        assert "sensor-account" not in admin.list_clients()
        assert "sensors" not in admin.list_roles()
        with pytest.raises(DynsecError, match=r"getClient .username 'gone'.: Client not found"):
            admin.get_client("gone")


def test_a_wrong_password_or_an_account_without_rights_is_refused_at_connect(
    mosquitto: Mosquitto,
) -> None:
    wrong = DynsecAdmin(mosquitto.host, mosquitto.port, "gateway", "wrong", timeout=2)
    with pytest.raises(DynsecError, match="refused the login as 'gateway': Not authorized"):
        wrong.connect()
    password = add_device(mosquitto, DEVICE)
    device = DynsecAdmin(mosquitto.host, mosquitto.port, DEVICE, password, timeout=2)
    with pytest.raises(DynsecError, match=r"refused .* the subscription to .*: Not authorized"):
        device.connect()


def test_no_broker_or_a_lost_broker_is_a_clear_error_within_the_timeout(
    mosquitto: Mosquitto,
) -> None:
    admin = mosquitto.admin(timeout=0.5)
    with pytest.raises(DynsecError, match="call connect"):
        admin.list_roles()
    with admin:
        mosquitto.stop()
        started = time.monotonic()
        with pytest.raises(DynsecError, match=r"not connected to the MQTT broker at 127.0.0.1:"):
            admin.list_roles()
        assert time.monotonic() - started < 1.5
    with pytest.raises(DynsecError, match=r"cannot connect to the MQTT broker at 127\.0\.0\.1:"):
        mosquitto.admin(timeout=1.0).connect()


def test_an_unanswered_request_times_out_and_a_lost_connection_fails_it_at_once(
    mosquitto: Mosquitto,
) -> None:
    with mosquitto.admin(timeout=0.5) as admin:
        os.kill(mosquitto.pid, signal.SIGSTOP)  # the broker hangs: connected, silent
        try:
            with pytest.raises(DynsecError, match=r"did not answer listRoles within 0\.5 s"):
                admin.list_roles()
        finally:
            os.kill(mosquitto.pid, signal.SIGCONT)

        admin.timeout = 10.0
        os.kill(mosquitto.pid, signal.SIGSTOP)
        crash = threading.Timer(0.2, os.kill, (mosquitto.pid, signal.SIGKILL))
        crash.start()
        started = time.monotonic()
        try:
            with pytest.raises(DynsecError, match=r"lost the connection .* before it answered"):
                admin.list_clients()
        finally:
            crash.join()
        assert time.monotonic() - started < 2.0
