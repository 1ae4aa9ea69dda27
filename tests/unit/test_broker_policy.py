"""The broker policy as data: the topics, the dynamic-security commands for anonymous clients
and the gateway, and the removal of accounts that gateways before session tokens made.
(Devices' and people's topics are the didgw plugin's: tests/integration/test_broker_tokens.py.)"""

from __future__ import annotations

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
        *broker.anonymous_policy_commands("didgw"),
        *broker.gateway_role_commands("didgw"),
        *broker.gateway_client_commands("gateway", "secret"),
    ]


def test_device_topics_follow_the_protocol_layout() -> None:
    assert broker.readings_topic(WEB, "didgw") == f"didgw/d/{WEB}/readings"
    assert broker.acks_topic(WEB, "didgw") == f"didgw/d/{WEB}/acks"
    assert broker.auth_request_topic("didgw") == "didgw/auth/req"
    assert broker.auth_response_filter("didgw") == "didgw/auth/res/+"


@pytest.mark.parametrize(
    "did",
    ["did:key:z6Mk/readings", "did:key:z6Mk+", "did:key:z6Mk#frag", "sensor-7", "did:key:", ""],
)
def test_a_did_that_is_not_one_topic_level_is_refused(did: str) -> None:
    with pytest.raises(DidError, match="is not a DID"):
        broker.readings_topic(did, "didgw")
    with pytest.raises(DidError):
        broker.person_requests_topic(did, "didgw")


@pytest.mark.parametrize(
    "prefix", ["", "didgw/", "/didgw", "a//b", "didgw/+", "#", "$SYS", "a\x00"]
)
def test_an_unusable_prefix_is_refused_with_the_reason(prefix: str) -> None:
    with pytest.raises(ConfigError, match=r"MQTT topic prefix .* is not usable"):
        broker.readings_topic(DID, prefix)
    with pytest.raises(ConfigError):
        broker.anonymous_policy_commands(prefix)
    with pytest.raises(ConfigError):
        broker.gateway_role_commands(prefix)


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


def test_legacy_removals_delete_every_account_named_by_a_did_then_the_session_roles() -> None:
    device_role, person_role = broker.DEVICE_ROLE_PREFIX + "ab12", broker.PERSON_ROLE_PREFIX + "cd"
    clients = ["admin", "didgw-gateway", OTHER, DID, OTHER, "did:bad/name"]
    roles = ["admin", broker.GATEWAY_ROLE, broker.ANONYMOUS_ROLE, person_role, device_role]
    assert broker.legacy_removals(clients, roles) == [
        *({"command": "deleteClient", "username": u} for u in sorted({DID, OTHER, "did:bad/name"})),
        {"command": "deleteRole", "rolename": device_role},
        {"command": "deleteRole", "rolename": person_role},
    ]


def test_legacy_removals_never_touch_accounts_not_named_by_a_did() -> None:
    clients = ["admin", "didgw-gateway", "DID:key:upper", "xdid:key:z6Mk", "", "mosquitto"]
    roles = ["admin", broker.GATEWAY_ROLE, broker.ANONYMOUS_ROLE, "didgw-devices", "custom"]
    assert broker.legacy_removals(clients, roles) == []


def test_the_setup_in_configs_mosquitto_readme_is_didgw_broker_setup() -> None:
    """The operator sets the broker up with the installed command (run against a real broker
    by tests/integration/test_broker_setup.py): twice, around the restart that makes
    mosquitto read the file the first run made; no Python from a checkout."""
    readme = (ROOT / "configs" / "mosquitto" / "README.md").read_text()
    lines = [line for block in re.findall(r"```sh\n(.*?)```", readme, flags=re.S)
             for line in block.splitlines()]  # fmt: skip
    setups = [n for n, line in enumerate(lines) if "didgw broker setup" in line]
    restart = [n for n, line in enumerate(lines) if "systemctl restart mosquitto" in line]
    assert len(setups) == 2 and len(restart) == 1 and setups[0] < restart[0] < setups[1]
    assert not [line for line in lines if "python" in line or "mosquitto_ctrl" in line]


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
