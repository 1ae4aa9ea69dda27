"""A person's wallet signing in to the gateway's web front door with OpenID4VP 1.0.

What a phone wallet does with the ``openid4vp://`` link or QR code of ``/login``
(docs/protocol/openid4vp.md): fetch the request object from ``request_uri``, check it is
signed by the DID its ``client_id`` names (``decentralized_identifier:<did:key>``), pick
the credentials that answer the DCQL query, present each disclosing only the claims
asked for, with a key-binding JWT over the request's nonce and the client_id, and post
``vp_token`` and ``state`` to ``response_uri``: encrypted to a key of the request's
``client_metadata.jwks`` as a compact JWE in ``response`` (``direct_post.jwt``: ECDH-ES,
Concat KDF, AES-GCM, written here on ``cryptography``, not with a JOSE library), or in
the clear (``direct_post``), as the request says.

For the gateway's tests and benchmarks it can also misbehave on purpose (:class:`Tamper`):
another nonce or audience, a changed disclosure, a key-binding JWT signed by another key,
a claim disclosed beyond the query; and for an encrypted response: the answer in the
clear, another ``enc``, another ``kid``, another key, a changed ciphertext, a padded
(oversized) envelope. Written with public libraries only (cryptography, joserfc, through
``device.py`` beside it); nothing is imported from the gateway.

    python firmware-sim/web_wallet.py --key bob.pem --credential bob.sdjwt 'openid4vp://?…'
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash

sys.path.insert(0, str(Path(__file__).resolve().parent))

import device as dev
from joserfc import jws
from joserfc.jwk import OKPKey

KB_TYP = "kb+jwt"
REQUEST_TYP = "oauth-authz-req+jwt"
DID_PREFIX = "decentralized_identifier:"
MAX_ANSWER_BYTES = 256 * 1024
RESPONSE_MODES = ("direct_post", "direct_post.jwt")
#: AES-GCM key sizes by JWE ``enc`` (A192GCM only to misbehave: the gateway offers none).
ENC_BITS = {"A128GCM": 128, "A192GCM": 192, "A256GCM": 256}


class WebWalletError(Exception):
    """Anything the wallet cannot do, with the reason."""


@dataclass(frozen=True)
class Tamper:
    """Ways to misbehave, for the verifier's refusals (all off by default)."""

    nonce: str | None = None  # sign over this nonce instead of the request's
    aud: str | None = None  # and this audience instead of the client_id
    disclosure: bool = False  # change a disclosed value (the issuer's digest no longer fits)
    kb_key: Ed25519PrivateKey | None = field(default=None, repr=False)  # sign the KB-JWT so
    disclose_extra: tuple[str, ...] = ()  # claims disclosed beyond the query
    # an encrypted (direct_post.jwt) request:
    plain: bool = False  # answer it in the clear anyway
    curve: str = "P-256"  # encrypt to the request's key on this curve (or X25519)
    jwe_enc: str | None = None  # this enc instead of one the request offers
    jwe_kid: str | None = None  # this kid in the header instead of the key's
    jwe_to: dict[str, str] | None = None  # encrypt to this public JWK (under the key's kid)
    jwe_flip: bool = False  # change a bit of the ciphertext
    jwe_pad: int = 0  # grow the plaintext by this many characters


@dataclass(frozen=True)
class AuthorizationRequest:
    """A request object whose signature checked out against its client_id's DID."""

    client_id: str
    claims: dict[str, Any]
    jwt: str

    @property
    def nonce(self) -> str:
        return str(self.claims["nonce"])

    @property
    def state(self) -> str:
        return str(self.claims["state"])


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    form: dict[str, str]


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _http(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if data is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 - http(s) only
    if not url.startswith(("http://", "https://")):
        raise WebWalletError(f"{url!r} is not an http(s) URL")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return answer.status, answer.read(MAX_ANSWER_BYTES)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(MAX_ANSWER_BYTES)


def parse_link(link: str) -> tuple[str, str]:
    """(client_id, request_uri) of an ``openid4vp://?client_id=…&request_uri=…`` link."""
    parsed = urllib.parse.urlsplit(link)
    if parsed.scheme != "openid4vp":
        raise WebWalletError("not an openid4vp:// link")
    query = dict(urllib.parse.parse_qsl(parsed.query))
    if "client_id" not in query or "request_uri" not in query:
        raise WebWalletError("the link needs client_id and request_uri")
    return query["client_id"], query["request_uri"]


def fetch_request(link: str) -> AuthorizationRequest:
    """The request object of ``link``, checked: signed by the client_id's DID key."""
    client_id, request_uri = parse_link(link)
    if not client_id.startswith(DID_PREFIX):
        raise WebWalletError(f"this wallet trusts {DID_PREFIX} verifiers only")
    did = client_id.removeprefix(DID_PREFIX)
    status, body = _http(request_uri)
    if status != 200:
        raise WebWalletError(f"request_uri answered {status}: {body[:200]!r}")
    token = body.decode("ascii").strip()
    header = json.loads(dev.b64u_decode(token.split(".")[0], "request object header"))
    if header.get("typ") != REQUEST_TYP or header.get("alg") != "EdDSA":
        raise WebWalletError(f"the request object's header is {header}")
    kid = header.get("kid", "")
    if kid.partition("#")[0] != did:
        raise WebWalletError(f"the request object is signed by {kid}, not by {did}")
    key = OKPKey.import_key(
        {"kty": "OKP", "crv": "Ed25519", "x": _b64u(dev.public_key_from_did(kid))}
    )
    try:
        claims = json.loads(jws.deserialize_compact(token, key, algorithms=["EdDSA"]).payload)
    except Exception as exc:
        raise WebWalletError(f"the request object's signature does not verify: {exc}") from None
    if claims.get("client_id") != client_id:
        raise WebWalletError("the request object does not match its link")
    if claims.get("response_mode") not in RESPONSE_MODES:
        raise WebWalletError(f"this wallet answers by {' or '.join(RESPONSE_MODES)} only")
    return AuthorizationRequest(client_id, claims, token)


def _issuer_payload(sd_jwt: str) -> dict[str, Any]:
    token = sd_jwt.split("~", maxsplit=1)[0]
    value: dict[str, Any] = json.loads(dev.b64u_decode(token.split(".")[1], "SD-JWT payload"))
    return value


def choose(query: dict[str, Any], credentials: Sequence[str]) -> dict[str, tuple[str, list[str]]]:
    """DCQL, the part the gateway uses: per credential query id, (credential, claims to
    disclose), for the first option of the credential set that the wallet can answer."""
    by_id: dict[str, tuple[str, list[str]]] = {}
    for q in query["credentials"]:
        for credential in credentials:
            if _issuer_payload(credential).get("vct") in q.get("meta", {}).get("vct_values", []):
                by_id[q["id"]] = (credential, [c["path"][0] for c in q.get("claims", [])])
                break
    for option in query.get("credential_sets", [{"options": [[q["id"]]]}])[0]["options"]:
        if all(i in by_id for i in option):
            return {i: by_id[i] for i in option}
    raise WebWalletError("no credential of this wallet answers the request")


def present(
    sd_jwt: str,
    disclose: Sequence[str],
    identity: dev.Identity,
    *,
    nonce: str,
    aud: str,
    iat: int,
    tamper: Tamper = Tamper(),
) -> str:
    """The presentation of ``sd_jwt`` disclosing ``disclose``, with a key-binding JWT."""
    parts = sd_jwt.strip().split("~")
    wanted = set(disclose) | set(tamper.disclose_extra)
    chosen = []
    for encoded in parts[1:-1]:
        value = json.loads(dev.b64u_decode(encoded, "disclosure"))
        if len(value) == 3 and value[1] in wanted:
            changed = [value[0], value[1], f"{value[2]}-changed"]
            chosen.append(_b64u(_json(changed)) if tamper.disclosure else encoded)
    presented = "~".join([parts[0], *chosen]) + "~"
    claims = {
        "iat": iat,
        "aud": tamper.aud if tamper.aud is not None else aud,
        "nonce": tamper.nonce if tamper.nonce is not None else nonce,
        "sd_hash": _b64u(hashlib.sha256(presented.encode("ascii")).digest()),
    }
    signer = identity
    if tamper.kb_key is not None:  # another key, under the holder's kid
        signer = dev.Identity(tamper.kb_key, identity.did, identity.kid)
    return presented + signer.sign_jws(KB_TYP, _json(claims))


def respond(
    request: AuthorizationRequest,
    credentials: Sequence[str],
    identity: dev.Identity,
    *,
    tamper: Tamper = Tamper(),
    now: float | None = None,
) -> dict[str, str]:
    """The form answering ``request``: ``vp_token`` and ``state`` (``direct_post``), or
    the two sealed in ``response`` (``direct_post.jwt``)."""
    iat = int(time.time() if now is None else now)
    vp_token = {
        query_id: [
            present(
                credential,
                claims,
                identity,
                nonce=request.nonce,
                aud=request.client_id,
                iat=iat,
                tamper=tamper,
            )
        ]
        for query_id, (credential, claims) in choose(
            request.claims["dcql_query"], credentials
        ).items()
    }
    form = {"vp_token": json.dumps(vp_token), "state": request.state}
    if request.claims.get("response_mode") == "direct_post.jwt" and not tamper.plain:
        return {"response": seal(request, form, tamper)}
    return form


def _with_length(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _agree(jwk: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """ECDH with a new ephemeral key against ``jwk``: (Z, the ephemeral public JWK)."""
    if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
        x, y = (int.from_bytes(dev.b64u_decode(jwk[c], "EC coordinate"), "big") for c in "xy")
        peer = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        mine = ec.generate_private_key(ec.SECP256R1())
        numbers = mine.public_key().public_numbers()
        epk = {"kty": "EC", "crv": "P-256"}
        epk |= {
            "x": _b64u(numbers.x.to_bytes(32, "big")),
            "y": _b64u(numbers.y.to_bytes(32, "big")),
        }
        return mine.exchange(ec.ECDH(), peer), epk
    if jwk.get("kty") == "OKP" and jwk.get("crv") == "X25519":
        peer_x = x25519.X25519PublicKey.from_public_bytes(dev.b64u_decode(jwk["x"], "OKP x"))
        mine_x = x25519.X25519PrivateKey.generate()
        epk = {"kty": "OKP", "crv": "X25519", "x": _b64u(mine_x.public_key().public_bytes_raw())}
        return mine_x.exchange(peer_x), epk
    raise WebWalletError(f"cannot encrypt to a {jwk.get('kty')}/{jwk.get('crv')} key")


def encrypt(payload: bytes, jwk: dict[str, Any], enc: str, tamper: Tamper = Tamper()) -> str:
    """A compact JWE of ``payload`` to ``jwk``: ECDH-ES (direct key agreement, RFC 7518
    §4.6), the content key from the Concat KDF over Z (no apu, no apv), AES-GCM with the
    protected header as additional data."""
    z, epk = _agree(tamper.jwe_to or jwk)
    bits = ENC_BITS[enc]
    other_info = _with_length(enc.encode()) + _with_length(b"") * 2 + bits.to_bytes(4, "big")
    cek = ConcatKDFHash(hashes.SHA256(), bits // 8, other_info).derive(z)
    header = {"alg": "ECDH-ES", "enc": enc, "kid": tamper.jwe_kid or jwk["kid"], "epk": epk}
    protected = _b64u(_json(header))
    iv = os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, payload, protected.encode("ascii"))
    ciphertext, tag = bytearray(sealed[:-16]), sealed[-16:]
    if tamper.jwe_flip:
        ciphertext[0] ^= 1
    return ".".join([protected, "", _b64u(iv), _b64u(bytes(ciphertext)), _b64u(tag)])


def seal(request: AuthorizationRequest, form: dict[str, str], tamper: Tamper = Tamper()) -> str:
    """The ``response`` JWE of a ``direct_post.jwt`` answer: ``vp_token`` (an object, not
    a string: the payload's members are the response's parameters) and ``state``."""
    metadata = request.claims.get("client_metadata", {})
    keys = [k for k in metadata.get("jwks", {}).get("keys", []) if k.get("use", "enc") == "enc"]
    chosen = [
        k for k in keys if k.get("crv") == tamper.curve and k.get("alg", "ECDH-ES") == "ECDH-ES"
    ]
    if not chosen:
        raise WebWalletError(f"the request offers no ECDH-ES key on {tamper.curve}")
    offered = metadata.get("encrypted_response_enc_values_supported", ["A128GCM"])
    enc = tamper.jwe_enc or next((e for e in offered if e in ENC_BITS), "")
    if not enc:
        raise WebWalletError(f"the request offers no enc this wallet has: {offered}")
    payload: dict[str, Any] = {"vp_token": json.loads(form["vp_token"]), "state": form["state"]}
    if tamper.jwe_pad:
        payload["padding"] = "x" * tamper.jwe_pad
    return encrypt(_json(payload), chosen[0], enc, tamper)


def post(request: AuthorizationRequest, form: dict[str, str]) -> Answer:
    """Send ``form`` to the request's ``response_uri``."""
    status, body = _http(request.claims["response_uri"], urllib.parse.urlencode(form).encode())
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {"text": body.decode(errors="replace")}
    return Answer(status, answer if isinstance(answer, dict) else {}, form)


def sign_in(
    link: str,
    credentials: Sequence[str],
    identity: dev.Identity,
    *,
    tamper: Tamper = Tamper(),
) -> Answer:
    """The whole wallet side of a sign-in."""
    request = fetch_request(link)
    return post(request, respond(request, credentials, identity, tamper=tamper))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--key", type=Path, required=True, help="holder key (PKCS#8 PEM)")
    parser.add_argument("--credential", type=Path, action="append", required=True)
    parser.add_argument("link", help="the openid4vp:// link of the sign-in page")
    args = parser.parse_args(argv)
    identity = dev.Identity.from_key(dev.load_or_create_key(args.key))
    credentials = [p.read_text().strip() for p in args.credential]
    try:
        answer = sign_in(args.link, credentials, identity)
    except WebWalletError as exc:
        print(f"web_wallet: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"status": answer.status, **answer.body}))
    return 0 if answer.status == 200 else 1


if __name__ == "__main__":
    raise SystemExit(main())
