"""Check a passkey-signed order from its record entry alone, as a receipt's reader does.

The entry's layout and why it proves the order is hers: ``gateway/market/passkey_orders.py``.
This is a second implementation of the WebAuthn assertion check (the gateway checks with
py_webauthn when it takes the order), on the standard library, ``cryptography`` and
``cbor2`` only, so that ``didgw verify-receipt`` needs nothing of the gateway's: the
challenge is the SHA-256 of the order's text; the client data says ``webauthn.get`` from an
origin on the relying party; the authenticator data names the relying party and says the
person was present and verified; the signature verifies under the COSE key (ES256, EdDSA or
RS256) over ``authenticatorData || SHA-256(clientDataJSON)``; the order names the entry's
actor. That the key is bound to that actor is entry ``binding`` (its own receipt).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

TYPE = "didgw-passkey-order"
_UP, _UV = 0x01, 0x04


class PasskeyCheckError(ValueError):
    """The entry's signature does not hold: the message says which part."""


def is_passkey_order(payload: bytes) -> bool:
    return payload[:1] == b"{" and f'"type":"{TYPE}"'.encode() in payload


def check_passkey_order(payload: bytes, actor: str) -> str:
    """What was checked (one line), or :class:`PasskeyCheckError`."""
    try:
        body = json.loads(payload)
        order_text, rp_id = body["order"], body["rp_id"]
        assertion = body["assertion"]
        auth = _b64(assertion["authenticatorData"])
        client_json = _b64(assertion["clientDataJSON"])
        signature = _b64(assertion["signature"])
        key = _b64(body["key"])
        client = json.loads(client_json)
        order = json.loads(order_text)
    except (ValueError, KeyError, TypeError) as exc:
        raise PasskeyCheckError(f"the passkey order is malformed ({exc})") from None
    if not isinstance(order, dict) or order.get("did") != actor:
        raise PasskeyCheckError(f"the order is not {actor}'s")
    challenge = base64.urlsafe_b64encode(hashlib.sha256(order_text.encode()).digest())
    if client.get("type") != "webauthn.get":
        raise PasskeyCheckError("the client data is not an assertion (webauthn.get)")
    if client.get("challenge") != challenge.rstrip(b"=").decode():
        raise PasskeyCheckError("the passkey signed something other than this order")
    if urlsplit(str(client.get("origin", ""))).hostname != rp_id:
        raise PasskeyCheckError(f"the assertion was made on {client.get('origin')}, not {rp_id}")
    if len(auth) < 37 or auth[:32] != hashlib.sha256(rp_id.encode()).digest():
        raise PasskeyCheckError(f"the authenticator data does not name {rp_id}")
    if auth[32] & (_UP | _UV) != _UP | _UV:
        raise PasskeyCheckError("the authenticator did not verify the person (UP and UV flags)")
    _verify(key, signature, auth + hashlib.sha256(client_json).digest())
    return (
        f"passkey assertion over the order by {actor} (its key bound in entry "
        f"{body.get('binding')}, whose receipt shows the binding)"
    )


def _b64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise TypeError("expected base64url text")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _verify(cose: bytes, signature: bytes, signed: bytes) -> None:
    import cbor2

    try:
        key = cbor2.loads(cose)
        kty, alg = key[1], key[3]
        if kty == 2 and alg == -7 and key[-1] == 1:  # EC2, ES256, P-256
            numbers = ec.EllipticCurvePublicNumbers(
                int.from_bytes(key[-2], "big"), int.from_bytes(key[-3], "big"), ec.SECP256R1()
            )
            numbers.public_key().verify(signature, signed, ec.ECDSA(hashes.SHA256()))
        elif kty == 1 and alg == -8 and key[-1] == 6:  # OKP, EdDSA, Ed25519
            Ed25519PublicKey.from_public_bytes(key[-2]).verify(signature, signed)
        elif kty == 3 and alg == -257:  # RSA, RS256
            numbers_rsa = rsa.RSAPublicNumbers(
                int.from_bytes(key[-2], "big"), int.from_bytes(key[-1], "big")
            )
            numbers_rsa.public_key().verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise PasskeyCheckError(f"unsupported passkey key (kty {kty}, alg {alg})")
    except InvalidSignature:
        raise PasskeyCheckError("the passkey's signature does not verify") from None
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise PasskeyCheckError(f"the passkey's key cannot be read ({exc})") from None
