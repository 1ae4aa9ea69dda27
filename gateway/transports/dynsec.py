"""Administer mosquitto's dynamic-security plugin over MQTT.

The plugin takes JSON commands published to ``$CONTROL/dynamic-security/v1`` and answers
on ``…/v1/response``; that is the only way to change a running broker's accounts and
roles, so the gateway creates and deletes device accounts through it. This module is the
one place that speaks that API: it sends a batch of commands, waits for the matching
answer and turns every refusal into a :class:`DynsecError`. What to ask for (the policy)
is decided in :mod:`gateway.auth.broker`, which builds the commands as plain data.

The API is synchronous, for worker threads (``asyncio.to_thread``): ``execute`` may be
called from several threads at once (``connect`` and ``close`` from one). paho's network
loop runs in its own thread and only ever touches this object's lock, events and
dictionaries, never an event loop.

A batch larger than :data:`MAX_REQUEST_BYTES` goes out as several requests, one after the
other: the broker disconnects a client that sends a packet over its ``max_packet_size``
(:data:`gateway.auth.broker.MAX_PACKET_BYTES`), and deleting a few hundred stale accounts
at once is more than that.

Requests go out at QoS 0 on purpose: paho replays unacknowledged QoS 1 messages after a
reconnect, which would apply a command long after its caller was told it failed. A request
is sent at most once; when its answer is lost the caller gets an error and may retry.
"""

from __future__ import annotations

import json
import secrets
import ssl
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.auth.broker import CLIENT_ID_PREFIX, MAX_PACKET_BYTES
from gateway.errors import DidgwError

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"

#: The plugin's answers when the thing to delete is already gone (mosquitto 2.0).
CLIENT_NOT_FOUND = "Client not found"
ROLE_NOT_FOUND = "Role not found"

#: The largest request sent at once (half the broker's packet limit: room for the rest).
MAX_REQUEST_BYTES = MAX_PACKET_BYTES // 2

# Fields that name what a command acts on, quoted in error messages (never the password).
_SUBJECT_FIELDS = {"username": "username", "rolename": "role", "groupname": "group"}


class DynsecError(DidgwError):
    """The broker refused a dynamic-security command, or could not be asked."""

    code = "broker_refused"

    def __init__(self, message: str, *, command: str = "", error: str = "") -> None:
        super().__init__(message)
        self.command = command  # the refused command's name, "" when none was refused
        self.error = error  # the broker's own words, "" when the broker did not answer


@dataclass
class _Pending:
    """One request waiting for its answer (filled in by paho's thread)."""

    done: threading.Event = field(default_factory=threading.Event)
    responses: list[dict[str, Any]] | None = None
    failure: str = ""


class DynsecAdmin:
    """A connection to the broker as an account allowed to use the dynamic-security API.

    ``execute`` sends several commands as one request and returns the plugin's answers in
    the same order. The plugin applies commands one by one, not as a transaction: when
    one is refused, the ones before it have taken effect.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        timeout: float = 5.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.tls = tls
        self.port = port
        self.username = username
        self.timeout = timeout
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._ready = threading.Event()  # connected and subscribed to the answers
        self._answered = threading.Event()  # the first CONNACK or SUBACK arrived
        self._refusal = ""  # why the broker refused the login or the subscription
        self._subscribe_mid: int | None = None
        self._password = password
        self._client: mqtt.Client | None = None

    @property
    def _where(self) -> str:
        tls = " (TLS)" if self.tls is not None else ""
        return f"the MQTT broker at {self.host}:{self.port}{tls}"

    # -- lifecycle ---------------------------------------------------------------------

    def connect(self) -> None:
        """Log in and subscribe to the answers; raise :class:`DynsecError` if either fails.

        Once connected, paho reconnects by itself after a broker restart; ``execute``
        waits (within its timeout) until the connection is back.
        """
        if self._client is not None:
            return
        self._answered.clear()
        self._ready.clear()
        self._refusal = ""
        client = self._new_client()
        try:
            client.connect(self.host, self.port, keepalive=30, clean_start=True)
        except ssl.SSLCertVerificationError as exc:
            client.reinitialise()
            raise DynsecError(
                f"refusing {self._where}: its TLS certificate does not verify "
                f"({exc.verify_message}); check [mqtt] host and ca_file"
            ) from None
        except OSError as exc:
            client.reinitialise()  # see close()
            raise DynsecError(f"cannot connect to {self._where}: {exc}") from None
        client.loop_start()
        self._client = client
        if not self._answered.wait(self.timeout):
            self.close()
            raise DynsecError(f"{self._where} did not answer the login within {self.timeout} s")
        if self._refusal:
            refusal = self._refusal
            self.close()
            raise DynsecError(refusal)
        if not self._ready.wait(self.timeout):
            self.close()
            raise DynsecError(f"{self._where} did not confirm the subscription to {RESPONSE_TOPIC}")

    def _new_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{CLIENT_ID_PREFIX}dynsec-{secrets.token_hex(16)}",  # unguessable
            protocol=mqtt.MQTTv5,
        )
        client.username_pw_set(self.username, self._password)
        if self.tls is not None:
            client.tls_set_context(self.tls)
        client.connect_timeout = self.timeout
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        return client

    def close(self) -> None:
        """Disconnect and stop paho's thread; requests still waiting fail at once."""
        client, self._client = self._client, None
        if client is None:
            return
        client.disconnect()
        client.loop_stop()
        # paho 2.2 closes the wake-up socket pair that loop_start() opened only when the
        # client is garbage-collected; reinitialise() closes it now and drops the callbacks.
        client.reinitialise()
        self._fail_pending(f"the connection to {self._where} was closed")

    def __enter__(self) -> DynsecAdmin:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- requests ----------------------------------------------------------------------

    def execute(
        self, commands: Iterable[Mapping[str, Any]], *, ok_errors: Collection[str] = ()
    ) -> list[dict[str, Any]]:
        """Send ``commands`` as one request; return the answers, one per command, in order.

        Each answer is the plugin's dict (``command``, and ``data`` or ``error``). An
        ``error`` raises :class:`DynsecError` naming the command and the broker's reason,
        unless that reason is in ``ok_errors`` (e.g. ``"Client not found"`` when deleting).
        A batch over :data:`MAX_REQUEST_BYTES` is sent in parts, in order; a refusal stops it.
        """
        answers: list[dict[str, Any]] = []
        for part in _parts([dict(command) for command in commands], MAX_REQUEST_BYTES):
            answers += self._request(part, ok_errors)
        return answers

    def _request(
        self, batch: list[dict[str, Any]], ok_errors: Collection[str]
    ) -> list[dict[str, Any]]:
        """One request (one MQTT message) and its checked answers."""
        names = ", ".join(sorted({str(c.get("command")) for c in batch}))
        deadline = time.monotonic() + self.timeout
        client = self._client
        if client is None:
            raise DynsecError(f"not connected to {self._where}: call connect() first")
        if not self._ready.wait(max(0.0, deadline - time.monotonic())):
            why = f" ({self._refusal})" if self._refusal else ""
            raise DynsecError(f"not connected to {self._where}{why}: cannot send {names}")

        request_id = secrets.token_hex(8)
        for index, command in enumerate(batch):
            command["correlationData"] = f"{request_id}:{index}"
        pending = _Pending()
        with self._lock:
            self._pending[request_id] = pending
        try:
            info = client.publish(CONTROL_TOPIC, json.dumps({"commands": batch}), qos=0)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise DynsecError(
                    f"cannot send {names} to {self._where}: {mqtt.error_string(info.rc)}"
                )
            if not pending.done.wait(max(0.0, deadline - time.monotonic())):
                raise DynsecError(f"{self._where} did not answer {names} within {self.timeout} s")
        finally:
            with self._lock:
                self._pending.pop(request_id, None)
        if pending.responses is None:
            raise DynsecError(f"{pending.failure} before it answered {names}")
        return _checked(batch, pending.responses, ok_errors)

    # -- convenience -------------------------------------------------------------------

    def create_client(self, username: str, password: str, roles: Iterable[str] = ()) -> None:
        """A broker account ``username`` with ``password`` and these roles (which must exist)."""
        self.execute(
            [
                {
                    "command": "createClient",
                    "username": username,
                    "password": password,
                    "roles": [{"rolename": role} for role in roles],
                }
            ]
        )

    def delete_client(self, username: str, *, missing_ok: bool = False) -> None:
        """Delete the account; the broker disconnects anyone logged in with it."""
        ok = (CLIENT_NOT_FOUND,) if missing_ok else ()
        self.execute([{"command": "deleteClient", "username": username}], ok_errors=ok)

    def set_client_password(self, username: str, password: str) -> None:
        self.execute([{"command": "setClientPassword", "username": username, "password": password}])

    def disable_client(self, username: str) -> None:
        """Refuse new logins and disconnect anyone logged in with the account."""
        self.execute([{"command": "disableClient", "username": username}])

    def enable_client(self, username: str) -> None:
        self.execute([{"command": "enableClient", "username": username}])

    def create_role(self, name: str, acls: Iterable[Mapping[str, Any]] = ()) -> None:
        self.execute([{"command": "createRole", "rolename": name, "acls": [dict(a) for a in acls]}])

    def delete_role(self, name: str, *, missing_ok: bool = False) -> None:
        ok = (ROLE_NOT_FOUND,) if missing_ok else ()
        self.execute([{"command": "deleteRole", "rolename": name}], ok_errors=ok)

    def list_clients(self) -> list[str]:
        """Every account's username, the administrators' included."""
        return self._names("listClients", "clients")

    def list_roles(self) -> list[str]:
        return self._names("listRoles", "roles")

    def get_client(self, username: str) -> dict[str, Any]:
        """The account as the plugin describes it (``username``, ``roles``, ``groups``, …)."""
        (answer,) = self.execute([{"command": "getClient", "username": username}])
        client = answer.get("data", {}).get("client")
        if not isinstance(client, dict):
            raise DynsecError(
                f"{self._where} answered getClient without a client", command="getClient"
            )
        return client

    def _names(self, command: str, key: str) -> list[str]:
        (answer,) = self.execute([{"command": command, "verbose": False, "count": -1, "offset": 0}])
        names = answer.get("data", {}).get(key)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DynsecError(
                f"{self._where} answered {command} without a list of names", command=command
            )
        return names

    # -- paho's thread -----------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._refusal = f"{self._where} refused the login as {self.username!r}: {reason_code}"
            self._answered.set()
            client.disconnect()  # retrying the same credentials would only be refused again
            return
        # Subscribing here (not once after connect) re-subscribes after every reconnect.
        _, self._subscribe_mid = client.subscribe(RESPONSE_TOPIC, qos=1)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if mid != self._subscribe_mid:
            return
        if any(code.is_failure for code in reason_codes):
            self._refusal = (
                f"{self._where} refused {self.username!r} the subscription to {RESPONSE_TOPIC}: "
                f"{reason_codes[0]} (the account needs the dynamic-security administration role)"
            )
        else:
            self._ready.set()
        self._answered.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            answers = json.loads(message.payload)["responses"]
            first = answers[0]["correlationData"]
        except (ValueError, TypeError, KeyError, IndexError):
            return  # not an answer to one of our requests (another client's, or malformed)
        request_id = str(first).partition(":")[0]
        with self._lock:
            pending = self._pending.get(request_id)
        if pending is not None and isinstance(answers, list):
            pending.responses = [a if isinstance(a, dict) else {} for a in answers]
            pending.done.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._ready.clear()
        self._fail_pending(f"lost the connection to {self._where} ({reason_code})")

    def _fail_pending(self, reason: str) -> None:
        with self._lock:
            waiting = list(self._pending.values())
        for pending in waiting:
            if not pending.done.is_set():
                pending.failure = reason
                pending.done.set()


def _parts(batch: list[dict[str, Any]], limit: int) -> list[list[dict[str, Any]]]:
    """``batch`` cut, in order, into requests of at most ``limit`` bytes of JSON (a single
    command larger than that is a request of its own, and the broker's to refuse)."""
    parts: list[list[dict[str, Any]]] = []
    size = limit  # forces a first part
    for command in batch:
        length = len(json.dumps(command)) + 64  # the comma and correlationData
        if size + length > limit:
            parts.append([])
            size = len('{"commands": []}')
        parts[-1].append(command)
        size += length
    return parts


def _checked(
    batch: list[dict[str, Any]], answers: list[dict[str, Any]], ok_errors: Collection[str]
) -> list[dict[str, Any]]:
    """The answers in command order, or a :class:`DynsecError` for the first refusal."""
    by_id = {str(a.get("correlationData")): a for a in answers}
    ordered: list[dict[str, Any]] = []
    for command in batch:
        name = str(command.get("command"))
        answer = by_id.get(command["correlationData"])
        if answer is None:
            raise DynsecError(
                f"the broker's answer to {_describe(command)} is missing", command=name
            )
        error = answer.get("error")
        if error is not None and str(error) not in ok_errors:
            raise DynsecError(
                f"the broker refused {_describe(command)}: {error}", command=name, error=str(error)
            )
        ordered.append({k: v for k, v in answer.items() if k != "correlationData"})
    return ordered


def _describe(command: Mapping[str, Any]) -> str:
    """``createClient (username 'did:key:…')``: the command and what it acts on."""
    subjects = [
        f"{label} {command[key]!r}" for key, label in _SUBJECT_FIELDS.items() if key in command
    ]
    name = str(command.get("command"))
    return f"{name} ({', '.join(subjects)})" if subjects else name
