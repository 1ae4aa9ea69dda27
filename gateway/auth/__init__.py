"""Devices and people proving who they are, and the checks on what they send: the sans-IO core.

Nothing here opens a socket, starts a thread or reads the clock; the MQTT and CoAP sides
(``run/``) hand in payloads and the time and send what comes back. May import the
foundations and the core below it (``identity``, ``credentials``, ``registry``, ``chain``).

* ``strict``: the strict JSON/CBOR/JWS/COSE checking toolkit, and the refusal reasons;
* ``handshake``: the DID challenge-response every transport holds (:class:`Handshake`):
  nonces, the clock window, the session length, the counts;
* ``mqtt_messages`` and ``mqtt_auth``: devices over MQTT (:class:`Authenticator`);
* ``coap_auth``: devices over CoAP (CBOR and COSE_Sign1);
* ``wallet`` and ``person_requests``: people's wallets and what they ask for;
* ``secret``: the broker password, encrypted to the client's one-time X25519 key;
* ``readings``: the checks on a signed reading (:class:`ReadingChecker`);
* ``broker``: the broker's access policy, as dynamic-security commands.

The public surface most callers need is re-exported here.
"""

from gateway.auth.handshake import Handshake
from gateway.auth.mqtt_auth import Authenticator, Grant, Outgoing
from gateway.auth.readings import (
    ClockWindow,
    Measurement,
    Reading,
    ReadingChecker,
    ReadingRefused,
)
from gateway.auth.secret import SecretError, open_secret, seal_secret
from gateway.auth.strict import REASONS, AuthRefused

__all__ = [
    "REASONS",
    "AuthRefused",
    "Authenticator",
    "ClockWindow",
    "Grant",
    "Handshake",
    "Measurement",
    "Outgoing",
    "Reading",
    "ReadingChecker",
    "ReadingRefused",
    "SecretError",
    "open_secret",
    "seal_secret",
]
