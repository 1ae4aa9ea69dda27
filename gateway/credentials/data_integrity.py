"""Data Integrity proofs with the ``eddsa-jcs-2022`` cryptosuite (W3C vc-di-eddsa, §3.3).

Why JCS and not RDF canonicalisation: the gateway runs on small boxes and must verify
thousands of credentials a second; JCS (RFC 8785, through the maintained ``rfc8785``
package) needs no JSON-LD processing and no remote contexts, so nothing is fetched at
run time. The hash that is signed is ``SHA-256(JCS(proof config)) ‖ SHA-256(JCS(document
without proof))``, the proof config carrying the document's ``@context``.

Proof sets (a list under ``proof``) are verified proof by proof against the document
without any proof: the set fails if any of its proofs fails. Proof chains
(``previousProof``) are refused rather than half-checked. The signature itself goes
through :mod:`gateway.identity.signing`, which resolves the verification method and
checks that it is authorised for the proof's purpose.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import base58
import rfc8785

from gateway.errors import CredentialError, DidgwError
from gateway.identity.resolver import Resolver
from gateway.identity.signing import Signer, VerifiedKey, resolve_key

CRYPTOSUITE = "eddsa-jcs-2022"
PROOF_TYPE = "DataIntegrityProof"
PURPOSES = ("assertionMethod", "authentication")


def canonical(value: Any) -> bytes:
    """RFC 8785 canonical JSON; refuses what JCS cannot represent exactly."""
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise CredentialError(f"cannot canonicalise the document (RFC 8785): {exc}") from None


def parse_datetime(value: Any, what: str) -> float:
    """An XML Schema dateTimeStamp (with a time zone), as Unix seconds."""
    if not isinstance(value, str) or len(value) > 64:
        raise CredentialError(f"{what} must be a date-time string")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CredentialError(f"{what} {value!r} is not a date-time") from None
    if moment.tzinfo is None:
        raise CredentialError(f"{what} {value!r} has no time zone")
    return moment.timestamp()


def format_datetime(seconds: float) -> str:
    """Unix seconds as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def hash_data(unsecured: Mapping[str, Any], proof_config: Mapping[str, Any]) -> bytes:
    """The 64 bytes that are signed: hash of the proof config, then of the document."""
    return (
        hashlib.sha256(canonical(proof_config)).digest()
        + hashlib.sha256(canonical(unsecured)).digest()
    )


def proof_config(
    document: Mapping[str, Any],
    verification_method: str,
    *,
    created: str,
    purpose: str = "assertionMethod",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The proof options (everything but ``proofValue``), with the document's ``@context``."""
    config: dict[str, Any] = {
        "type": PROOF_TYPE,
        "cryptosuite": CRYPTOSUITE,
        "created": created,
        "verificationMethod": verification_method,
        "proofPurpose": purpose,
        **(extra or {}),
    }
    if "@context" in document:
        config["@context"] = document["@context"]
    return config


def add_proof(
    document: Mapping[str, Any],
    signer: Signer,
    *,
    created: str,
    purpose: str = "assertionMethod",
) -> dict[str, Any]:
    """The document with one more ``eddsa-jcs-2022`` proof by ``signer``.

    A document that already has a proof gets a proof set (a list); every proof in it
    signs the document without proofs, so each can be checked on its own.
    """
    unsecured = {k: v for k, v in document.items() if k != "proof"}
    config = proof_config(unsecured, signer.kid, created=created, purpose=purpose)
    signature = signer.sign(hash_data(unsecured, config))
    proof = {**config, "proofValue": "z" + base58.b58encode(signature).decode("ascii")}
    existing = document.get("proof")
    if existing is None:
        return {**unsecured, "proof": proof}
    proofs = existing if isinstance(existing, list) else [existing]
    return {**unsecured, "proof": [*proofs, proof]}


@dataclass(frozen=True)
class VerifiedProof:
    """One proof that checked out, and the key that made it."""

    verification_method: str
    controller: str  # the DID of the key
    purpose: str
    created: float | None
    key: VerifiedKey


def verify_proofs(
    document: Mapping[str, Any],
    *,
    resolver: Resolver,
    now: float,
    purpose: str = "assertionMethod",
) -> list[VerifiedProof]:
    """Check every proof of ``document``; refuse it if there is none or any one fails."""
    proofs = document.get("proof")
    if proofs is None:
        raise CredentialError("the document has no proof")
    items = proofs if isinstance(proofs, list) else [proofs]
    if not items:
        raise CredentialError("the document has an empty proof set")
    unsecured = {k: v for k, v in document.items() if k != "proof"}
    verified = []
    for number, proof in enumerate(items, 1):
        where = f"proof {number} of {len(items)}"
        try:
            verified.append(
                verify_one(unsecured, proof, resolver=resolver, now=now, purpose=purpose)
            )
        except DidgwError as exc:
            raise CredentialError(f"{where}: {exc}") from None
    return verified


def verify_one(
    unsecured: Mapping[str, Any],
    proof: Any,
    *,
    resolver: Resolver,
    now: float,
    purpose: str,
) -> VerifiedProof:
    """The cryptosuite's verification algorithm for one proof over ``unsecured``."""
    if not isinstance(proof, dict):
        raise CredentialError("a proof must be a JSON object")
    if proof.get("type") != PROOF_TYPE or proof.get("cryptosuite") != CRYPTOSUITE:
        raise CredentialError(
            f"unsupported proof {proof.get('type')!r}/{proof.get('cryptosuite')!r}; "
            f"only {PROOF_TYPE} with {CRYPTOSUITE} is accepted"
        )
    if "previousProof" in proof:
        raise CredentialError("proof chains (previousProof) are not supported")
    if proof.get("proofPurpose") != purpose:
        raise CredentialError(f"proofPurpose is {proof.get('proofPurpose')!r}, not {purpose!r}")
    signature = _signature(proof.get("proofValue"))
    vm = proof.get("verificationMethod")
    if not isinstance(vm, str) or "#" not in vm:
        raise CredentialError("verificationMethod must be a DID URL")
    created = None
    if "created" in proof:
        created = parse_datetime(proof["created"], "proof created")
    if "expires" in proof and parse_datetime(proof["expires"], "proof expires") <= now:
        raise CredentialError("the proof has expired")
    config = {k: v for k, v in proof.items() if k != "proofValue"}
    document = dict(unsecured)
    if "@context" in config:
        context = _as_list(config["@context"])
        if _as_list(document.get("@context"))[: len(context)] != context:
            raise CredentialError("the proof's @context does not match the document's")
        document["@context"] = config["@context"]
    key = resolve_key(vm, resolver=resolver, relationship=purpose, now=now)
    if not key.verifies(signature, hash_data(document, config)):
        raise CredentialError(f"the signature by {vm} does not verify")
    return VerifiedProof(vm, key.did, purpose, created, key)


def _signature(value: Any) -> bytes:
    if not isinstance(value, str) or not value.startswith("z") or len(value) > 200:
        raise CredentialError("proofValue must be multibase base58btc ('z…')")
    try:
        signature = bytes(base58.b58decode(value[1:]))
    except ValueError:
        raise CredentialError("proofValue is not base58btc") from None
    if len(signature) != 64:
        raise CredentialError(f"proofValue holds {len(signature)} bytes, not an Ed25519 signature")
    return signature


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]
