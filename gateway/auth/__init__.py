"""Devices proving who they are, and the checks on what they send: the sans-IO core.

Nothing here opens a socket, starts a thread or reads the clock; the MQTT and CoAP sides
(``run/``) hand in payloads and the time and send what comes back. May import the
foundations and the core below it (``identity``, ``credentials``, ``registry``, ``chain``).

* ``messages``: the auth messages of the wire protocol, parsed strictly;
* ``secret``: the broker password, encrypted to the device's one-time X25519 key;
* ``handshake``: the DID challenge-response (:class:`Authenticator`);
* ``readings``: the checks on a signed reading (:class:`ReadingChecker`);
* ``broker``: the broker's access policy, as dynamic-security commands.

The public surface of the first four is re-exported here.
"""

from gateway.auth.handshake import Authenticator, Grant, Outgoing
from gateway.auth.messages import REASONS, AuthRefused
from gateway.auth.readings import Measurement, Reading, ReadingChecker, ReadingRefused
from gateway.auth.secret import SecretError, open_secret, seal_secret

__all__ = [
    "REASONS",
    "AuthRefused",
    "Authenticator",
    "Grant",
    "Measurement",
    "Outgoing",
    "Reading",
    "ReadingChecker",
    "ReadingRefused",
    "SecretError",
    "open_secret",
    "seal_secret",
]
