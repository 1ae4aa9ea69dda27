"""An order a person signed with her passkey in the browser. Sans-IO.

A browser holds no key of hers that a verifier could know, but her passkey is one: bound
to her DID on the record (``passkey-bound``, with its public key) after she signed in
with her credential. To place an order from a page, the gateway writes the order as
canonical JSON (the members of a person's JWS order, ``orders.py``), and her
authenticator signs a WebAuthn assertion whose challenge is the SHA-256 of exactly that
text, after verifying her (PIN, fingerprint or face: user verification is required).
The entry of kind ``passkey-order`` keeps everything a third party needs::

    {"type": "didgw-passkey-order", "order": "<the order's JSON text>",
     "passkey": "<SHA-256 of the credential id, hex>", "binding": <entry seq>,
     "key": "<COSE public key, base64url>", "rp_id": "gw.example.org",
     "assertion": {"authenticatorData": "…", "clientDataJSON": "…", "signature": "…"}}

To check it: SHA-256 of ``order`` is the challenge in ``clientDataJSON`` (type
``webauthn.get``, origin on ``rp_id``); ``authenticatorData`` names ``rp_id`` (its
SHA-256) and has the user-present and user-verified flags; ``signature`` verifies over
``authenticatorData || SHA-256(clientDataJSON)`` under ``key``; and entry ``binding`` is
the ``passkey-bound`` entry of the same person with the same ``passkey`` and ``key``.
``gateway/anchor/verify_receipt.py`` does the first four from a receipt alone.

Why the gateway cannot invent her orders: it never holds the passkey's private key, and
the key it checks against was put on the record when she bound the passkey, in her sign-in
with her wallet's credential; a key it bound in her name later would be a new entry she
sees in her passkeys and her data export. The order's ``seq`` (unique per household) and
``ts`` make each signature good for one order only.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from gateway.market.orders import OrderRefused, SignedOrder, parse_order

KIND = "passkey-order"
TYPE = "didgw-passkey-order"
MAX_ENTRY_BYTES = 8192


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64u(text: Any) -> bytes:
    if not isinstance(text, str) or len(text) > 4096:
        raise OrderRefused("malformed", None, "expected a base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise OrderRefused("malformed", None, "expected a base64url string") from None


def order_text(
    *,
    did: str,
    household: str,
    seq: int,
    ts: int,
    side: str,
    interval: int,
    wh: int,
    price: int,
) -> str:
    """The order as she signs it: canonical JSON (sorted members, no spaces)."""
    body = {
        "did": did,
        "household": household,
        "seq": seq,
        "ts": ts,
        "side": side,
        "interval": interval,
        "wh": wh,
        "price": price,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def challenge_of(text: str) -> bytes:
    """The WebAuthn challenge that signs ``text``: its SHA-256."""
    return hashlib.sha256(text.encode("utf-8")).digest()


@dataclass(frozen=True)
class Signature:
    """Her passkey's answer, as the record keeps it."""

    passkey: str  # SHA-256 of the credential id, hex
    binding: int  # the passkey-bound entry
    key: bytes  # COSE
    rp_id: str
    authenticator_data: bytes
    client_data_json: bytes
    signature: bytes


def entry_payload(text: str, signed: Signature) -> bytes:
    body = {
        "type": TYPE,
        "order": text,
        "passkey": signed.passkey,
        "binding": signed.binding,
        "key": b64u(signed.key),
        "rp_id": signed.rp_id,
        "assertion": {
            "authenticatorData": b64u(signed.authenticator_data),
            "clientDataJSON": b64u(signed.client_data_json),
            "signature": b64u(signed.signature),
        },
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def signed_order(text: str, payload: bytes) -> SignedOrder:
    """The order in ``text`` as the market takes it, its token the entry's payload."""
    try:
        obj = json.loads(text)
    except ValueError:
        raise OrderRefused("malformed", None, "the order is not JSON") from None
    if not isinstance(obj, dict):
        raise OrderRefused("malformed", None, "the order is not a JSON object")
    return parse_order(obj, payload, person=True)


def read_entry(payload: bytes) -> tuple[SignedOrder, Signature]:
    """A recorded passkey order and its signature, parsed (not yet checked)."""
    if len(payload) > MAX_ENTRY_BYTES:
        raise OrderRefused("malformed", None, "the entry is too large")
    try:
        body = json.loads(payload)
    except ValueError:
        raise OrderRefused("malformed", None, "the entry is not JSON") from None
    if not isinstance(body, dict) or body.get("type") != TYPE:
        raise OrderRefused("malformed", None, f"not a {TYPE}")
    assertion = body.get("assertion")
    if not isinstance(assertion, dict) or not isinstance(body.get("order"), str):
        raise OrderRefused("malformed", None, "order and assertion are required")
    binding, rp_id, passkey = body.get("binding"), body.get("rp_id"), body.get("passkey")
    if type(binding) is not int or not isinstance(rp_id, str) or not isinstance(passkey, str):
        raise OrderRefused("malformed", None, "binding, rp_id and passkey are required")
    signed = Signature(
        passkey,
        binding,
        unb64u(body.get("key")),
        rp_id,
        unb64u(assertion.get("authenticatorData")),
        unb64u(assertion.get("clientDataJSON")),
        unb64u(assertion.get("signature")),
    )
    return signed_order(body["order"], payload), signed
