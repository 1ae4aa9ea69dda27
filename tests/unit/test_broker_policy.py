"""The broker policy as data: the dynamic-security commands for devices, anonymous clients,
the gateway, and reconciliation with the registry."""

from __future__ import annotations

import contextlib
import io
import json
import re
from typing import Any

import pytest
from paho.mqtt.client import topic_matches_sub
from support import ROOT

from gateway.auth import broker
from gateway.errors import ConfigError, DidError

DID = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
OTHER = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
WEB = "did:web:example.com%3A8443:user:alice"


def role_acls(commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (create,) = [c for c in commands if c["command"] == "createRole"]
    return list(create["acls"])


def allowed(acls: list[dict[str, Any]], acltype: str, topic: str) -> bool:
    """What the plugin decides for a publish (send or receive), given the defaults."""
    for acl in acls:
        if acl["acltype"] == acltype and topic_matches_sub(acl["topic"], topic):
            return bool(acl["allow"])
    return broker.DEFAULT_ACL_ACCESS[acltype]


def every_policy_command() -> list[dict[str, Any]]:
    return [
        *broker.device_role_commands(DID, "didgw"),
        *broker.device_client_commands(DID, "secret", "didgw"),
        *broker.device_removal_commands(DID),
        *broker.anonymous_policy_commands("didgw"),
        *broker.gateway_role_commands("didgw"),
        *broker.gateway_client_commands("gateway", "secret"),
    ]


def test_device_role_name_is_short_stable_and_distinct() -> None:
    name = broker.device_role_name(DID)
    assert name == broker.device_role_name(DID)
    assert name.startswith("didgw-device-")
    assert len(name) == len("didgw-device-") + 24
    assert int(name.removeprefix("didgw-device-"), 16) >= 0
    assert broker.device_role_name(OTHER) != name


def test_device_role_allows_exactly_its_own_readings_acks_orders_and_market() -> None:
    (command,) = broker.device_role_commands(DID, "didgw")
    assert command["command"] == "createRole"
    assert command["rolename"] == broker.device_role_name(DID)
    assert command["acls"] == [
        {"acltype": "publishClientSend", "topic": f"didgw/d/{DID}/readings", "allow": True},
        {"acltype": "subscribeLiteral", "topic": f"didgw/d/{DID}/acks", "allow": True},
        {"acltype": "publishClientReceive", "topic": f"didgw/d/{DID}/acks", "allow": True},
        {"acltype": "publishClientSend", "topic": f"didgw/d/{DID}/orders", "allow": True},
        {"acltype": "subscribeLiteral", "topic": f"didgw/d/{DID}/market", "allow": True},
        {"acltype": "publishClientReceive", "topic": f"didgw/d/{DID}/market", "allow": True},
    ]


@pytest.mark.parametrize(
    ("acltype", "topic", "expected"),
    [
        ("publishClientSend", f"site/gw/d/{DID}/readings", True),
        ("publishClientSend", f"site/gw/d/{OTHER}/readings", False),
        ("publishClientSend", f"site/gw/d/{DID}/orders", True),
        ("publishClientSend", f"site/gw/d/{OTHER}/orders", False),
        ("publishClientSend", f"site/gw/d/{DID}/market", False),
        ("publishClientReceive", f"site/gw/d/{DID}/market", True),
        ("publishClientReceive", f"site/gw/d/{OTHER}/market", False),
        ("publishClientSend", f"site/gw/d/{DID}/acks", False),
        ("publishClientSend", "site/gw/auth/req", False),
        ("publishClientReceive", f"site/gw/d/{DID}/acks", True),
        ("publishClientReceive", f"site/gw/d/{OTHER}/acks", False),
        ("publishClientReceive", f"site/gw/d/{DID}/readings", False),
        ("publishClientReceive", "site/gw/auth/res/abcdefghijklmnop", False),
    ],
)
def test_a_device_reaches_its_own_topics_only(acltype: str, topic: str, expected: bool) -> None:
    acls = role_acls(broker.device_role_commands(DID, "site/gw"))
    assert allowed(acls, acltype, topic) is expected


def test_device_topics_follow_the_protocol_layout() -> None:
    assert broker.readings_topic(WEB, "didgw") == f"didgw/d/{WEB}/readings"
    assert broker.acks_topic(WEB, "didgw") == f"didgw/d/{WEB}/acks"
    assert broker.auth_request_topic("didgw") == "didgw/auth/req"
    assert broker.auth_response_filter("didgw") == "didgw/auth/res/+"


def test_device_account_is_named_by_its_did_and_has_only_its_role() -> None:
    (command,) = broker.device_client_commands(DID, "s3cret", "didgw")
    assert command == {
        "command": "createClient",
        "username": DID,
        "password": "s3cret",
        "roles": [{"rolename": broker.device_role_name(DID)}],
    }


def test_an_empty_device_password_is_refused() -> None:
    with pytest.raises(ValueError, match="password"):
        broker.device_client_commands(DID, "", "didgw")


@pytest.mark.parametrize(
    "did",
    ["did:key:z6Mk/readings", "did:key:z6Mk+", "did:key:z6Mk#frag", "sensor-7", "did:key:", ""],
)
def test_a_did_that_is_not_one_topic_level_is_refused(did: str) -> None:
    with pytest.raises(DidError, match="is not a DID"):
        broker.device_role_commands(did, "didgw")
    with pytest.raises(DidError):
        broker.device_client_commands(did, "secret", "didgw")


@pytest.mark.parametrize(
    "prefix", ["", "didgw/", "/didgw", "a//b", "didgw/+", "#", "$SYS", "a\x00"]
)
def test_an_unusable_prefix_is_refused_with_the_reason(prefix: str) -> None:
    with pytest.raises(ConfigError, match=r"MQTT topic prefix .* is not usable"):
        broker.device_role_commands(DID, prefix)
    with pytest.raises(ConfigError):
        broker.anonymous_policy_commands(prefix)
    with pytest.raises(ConfigError):
        broker.gateway_role_commands(prefix)


def test_device_removal_deletes_the_account_before_its_role() -> None:
    assert broker.device_removal_commands(DID) == [
        {"command": "deleteClient", "username": DID},
        {"command": "deleteRole", "rolename": broker.device_role_name(DID)},
    ]


def test_a_renewal_changes_the_password_only_and_an_expiry_keeps_the_role() -> None:
    assert broker.device_password_commands(DID, "s3cret") == [
        {"command": "setClientPassword", "username": DID, "password": "s3cret"}
    ]
    assert broker.device_account_removal_commands(DID) == [
        {"command": "deleteClient", "username": DID}
    ]
    with pytest.raises(ValueError):
        broker.device_password_commands(DID, "")


def test_anonymous_clients_get_the_auth_topics_and_nothing_else() -> None:
    commands = broker.anonymous_policy_commands("didgw")
    acls = role_acls(commands)
    assert acls == [
        {"acltype": "publishClientSend", "topic": "didgw/auth/req", "allow": True},
        {"acltype": "subscribePattern", "topic": "didgw/auth/res/+", "allow": True},
        {"acltype": "publishClientReceive", "topic": "didgw/auth/res/+", "allow": True},
        {"acltype": "publishClientSend", "topic": "didgw/auth/wallet", "allow": True},
        {"acltype": "subscribeLiteral", "topic": "didgw/status-list", "allow": True},
        {"acltype": "publishClientReceive", "topic": "didgw/status-list", "allow": True},
    ]
    assert allowed(acls, "publishClientSend", "didgw/auth/req")
    assert allowed(acls, "publishClientReceive", "didgw/auth/res/Zq3-_abcdefghijkl")
    assert not allowed(acls, "publishClientSend", f"didgw/d/{DID}/readings")
    assert not allowed(acls, "publishClientSend", "didgw/auth/res/x")
    assert not allowed(acls, "publishClientReceive", f"didgw/d/{DID}/acks")
    assert not allowed(acls, "publishClientReceive", "didgw/auth/req")
    assert not allowed(acls, "publishClientReceive", "didgw/auth/res/x/y")

    by_name = {c["command"]: c for c in commands}
    assert by_name["createGroup"] == {"command": "createGroup", "groupname": "didgw-anonymous"}
    assert by_name["addGroupRole"]["rolename"] == broker.ANONYMOUS_ROLE
    assert by_name["setAnonymousGroup"] == {
        "command": "setAnonymousGroup",
        "groupname": "didgw-anonymous",
    }
    assert by_name["setDefaultACLAccess"]["acls"] == [
        {"acltype": "publishClientSend", "allow": False},
        {"acltype": "publishClientReceive", "allow": False},
        {"acltype": "subscribe", "allow": False},
        {"acltype": "unsubscribe", "allow": True},
    ]


def test_the_anonymous_group_is_set_only_when_it_is_not_already_ours() -> None:
    """Setting it disconnects every anonymous client, even when it does not change."""
    for current in ("", "some-other-group"):
        commands = broker.anonymous_policy_commands("didgw", anonymous_group=current)
        assert "setAnonymousGroup" in [c["command"] for c in commands]
    again = broker.anonymous_policy_commands("didgw", anonymous_group="didgw-anonymous")
    assert "setAnonymousGroup" not in [c["command"] for c in again]
    assert again == [c for c in commands if c["command"] != "setAnonymousGroup"]


def test_the_group_gets_its_role_before_it_becomes_the_anonymous_group() -> None:
    order = [c["command"] for c in broker.anonymous_policy_commands("didgw")]
    assert order.index("createRole") < order.index("createGroup") < order.index("addGroupRole")
    assert order.index("addGroupRole") < order.index("setAnonymousGroup")


@pytest.mark.parametrize("make", [broker.anonymous_policy_commands, broker.gateway_role_commands])
def test_roles_are_reapplied_as_they_are_defined(make: Any) -> None:
    """createRole is a no-op on a broker that has the role; modifyRole then resets its ACLs."""
    create, modify = [c for c in make("didgw") if c["command"] in ("createRole", "modifyRole")]
    assert modify["command"] == "modifyRole"
    assert modify["rolename"] == create["rolename"]
    assert modify["acls"] == create["acls"]


def test_the_gateway_may_use_its_prefix_and_administer_the_plugin() -> None:
    acls = role_acls(broker.gateway_role_commands("didgw"))
    for topic in ("didgw/auth/req", f"didgw/d/{DID}/readings", f"didgw/d/{DID}/acks"):
        assert allowed(acls, "publishClientSend", topic)
        assert allowed(acls, "publishClientReceive", topic)
    assert allowed(acls, "publishClientSend", "$CONTROL/dynamic-security/v1")
    assert allowed(acls, "publishClientReceive", "$CONTROL/dynamic-security/v1/response")
    assert not allowed(acls, "publishClientSend", "elsewhere/x")
    assert {a["topic"] for a in acls if a["acltype"] == "subscribePattern"} == {
        "didgw/#",
        "$CONTROL/dynamic-security/#",
        "$share/didgw-verify/didgw/#",  # the verification workers' shared subscription
    }


def test_the_gateway_account_has_the_gateway_role_and_is_not_named_like_a_device() -> None:
    (command,) = broker.gateway_client_commands("gateway", "pw")
    assert command["roles"] == [{"rolename": broker.GATEWAY_ROLE}]
    assert not broker.is_device_username(command["username"])
    with pytest.raises(ValueError, match="must not start with 'did:'"):
        broker.gateway_client_commands("did:key:z6Mk", "pw")
    # a username with the client-id prefix would be an id any client may present
    with pytest.raises(ValueError, match="must not start with 'didgw-'"):
        broker.gateway_client_commands("didgw-gateway", "pw")


def test_every_policy_command_is_json_with_known_acl_types() -> None:
    commands = every_policy_command()
    assert json.loads(json.dumps({"commands": commands})) == {"commands": commands}
    for command in commands:
        for acl in command.get("acls", []):
            if "topic" in acl:  # role ACLs; setDefaultACLAccess uses the generic types
                assert acl["acltype"] in broker.ACL_TYPES


def test_reconcile_deletes_device_accounts_the_registry_does_not_want() -> None:
    stale = "did:key:z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH"
    commands = broker.reconcile({DID}, ["admin", "didgw-gateway", DID, stale, OTHER])
    assert commands == [
        {"command": "deleteClient", "username": OTHER},
        {"command": "deleteClient", "username": stale},
        *sorted(
            (
                {"command": "deleteRole", "rolename": broker.device_role_name(did)}
                for did in (OTHER, stale)
            ),
            key=lambda c: c["rolename"],
        ),
    ]


def test_reconcile_accepts_the_registry_as_a_mapping_and_has_nothing_to_do_when_in_line() -> None:
    active = {DID: {"expires": 1_700_000_000_000}, OTHER: {"expires": 1_700_000_000_000}}
    roles = ["admin", broker.device_role_name(DID), broker.device_role_name(OTHER)]
    assert broker.reconcile(active, ["admin", DID, OTHER, "gw"], roles) == []
    assert broker.reconcile(active, [], []) == []  # accounts it cannot create are not its job


def test_reconcile_never_touches_accounts_not_named_by_a_did() -> None:
    clients = ["admin", "didgw-gateway", "DID:key:upper", "xdid:key:z6Mk", "", "mosquitto"]
    roles = ["admin", broker.GATEWAY_ROLE, broker.ANONYMOUS_ROLE, "didgw-devices", "custom"]
    assert broker.reconcile(set(), clients, roles) == []


def test_reconcile_deletes_device_roles_left_without_an_account() -> None:
    orphan = broker.device_role_name(OTHER)
    commands = broker.reconcile([DID], [DID], [broker.device_role_name(DID), orphan])
    assert commands == [{"command": "deleteRole", "rolename": orphan}]


def test_reconcile_deletes_a_malformed_device_account_without_inventing_a_role() -> None:
    assert broker.reconcile([], ["did:bad/name"]) == [
        {"command": "deleteClient", "username": "did:bad/name"}
    ]


def test_reconcile_lists_each_deletion_once_in_a_stable_order() -> None:
    once = broker.reconcile([], [OTHER, DID, OTHER], [broker.device_role_name(DID)])
    assert once == broker.reconcile([], [DID, OTHER], [])
    assert [c["command"] for c in once] == ["deleteClient"] * 2 + ["deleteRole"] * 2


def test_the_setup_in_configs_mosquitto_readme_sends_this_policy() -> None:
    readme = (ROOT / "configs" / "mosquitto" / "README.md").read_text()
    match = re.search(r"python -c '(.*?)' \\", readme, flags=re.S)
    assert match, "configs/mosquitto/README.md no longer builds the policy with python -c"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(match.group(1), {})  # noqa: S102  (the snippet in configs/mosquitto/README.md)
    assert json.loads(out.getvalue()) == {
        "commands": broker.anonymous_policy_commands("didgw")
        + broker.gateway_role_commands("didgw")
    }
    assert f"addClientRole didgw {broker.GATEWAY_ROLE}" in readme


def test_the_setup_in_configs_mosquitto_readme_puts_no_password_on_a_command_line() -> None:
    """``ps`` shows every process's arguments to everyone: no ``-P`` (or ``--pw``) for a
    mosquitto tool anywhere in the README's shell blocks (tests/integration/test_broker.py
    runs the steps against a real broker and records the tools' command lines)."""
    readme = (ROOT / "configs" / "mosquitto" / "README.md").read_text()
    lines = [line for block in re.findall(r"```sh\n(.*?)```", readme, flags=re.S)
             for line in block.splitlines()]  # fmt: skip
    on_a_command_line = [
        line for line in lines if re.search(r"mosquitto_\w+\b.*\s(-P|--pw)\b", line)
    ]
    assert not on_a_command_line


def test_a_person_may_send_only_her_requests_and_read_only_her_answers() -> None:
    [role, client] = broker.person_account_commands(DID, "pw", "didgw")
    assert role["rolename"] == broker.person_role_name(DID) != broker.device_role_name(DID)
    assert client == {
        "command": "createClient",
        "username": DID,
        "password": "pw",
        "roles": [{"rolename": role["rolename"]}],
    }
    acls = role["acls"]
    assert allowed(acls, "publishClientSend", f"didgw/p/{DID}/req")
    assert allowed(acls, "publishClientReceive", f"didgw/p/{DID}/res")
    assert allowed(acls, "publishClientReceive", "didgw/status-list")
    assert not allowed(acls, "publishClientSend", f"didgw/p/{OTHER}/req")
    assert not allowed(acls, "publishClientReceive", f"didgw/p/{OTHER}/res")
    assert not allowed(acls, "publishClientSend", f"didgw/d/{DID}/orders")
    assert broker.person_removal_commands(DID) == [
        {"command": "deleteClient", "username": DID},
        {"command": "deleteRole", "rolename": broker.person_role_name(DID)},
    ]


def test_reconcile_keeps_live_people_and_removes_stale_ones_with_their_roles() -> None:
    live, stale = DID, OTHER
    roles = [broker.person_role_name(live), broker.person_role_name(stale)]
    commands = broker.reconcile({live}, [live, stale, "admin"], roles)
    assert {"command": "deleteClient", "username": stale} in commands
    assert {"command": "deleteRole", "rolename": broker.person_role_name(stale)} in commands
    assert not any(c.get("username") == live for c in commands)
    assert {"command": "deleteRole", "rolename": broker.person_role_name(live)} not in commands
