"""W3C Bitstring Status List: the revocation bits of the credentials the gateway issues.

A status list is a bitstring of at least 131,072 bits (16 KiB, the specification's
minimum, so one credential's index hides among many), bit 0 being the most significant
bit of the first byte. It is published as ``encodedList`` = multibase base64url (``u``)
of its GZIP compression, inside a ``BitstringStatusListCredential`` signed by the
gateway. A credential points at its bit with a ``BitstringStatusListEntry``.

Pure functions: building, encoding, decoding, reading a bit. Fetching and freshness are
in :mod:`gateway.credentials.status_source`.
"""

from __future__ import annotations

import base64
import gzip
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.errors import CredentialError

MIN_BITS = 131_072
MAX_BYTES = 1 << 20  # a decompressed list larger than this is refused (a gzip bomb)
PURPOSE = "revocation"
V2_CONTEXT = "https://www.w3.org/ns/credentials/v2"


def bitstring(revoked: Iterable[int], size_bits: int = MIN_BITS) -> bytes:
    """A bitstring of ``size_bits`` with the given indexes set."""
    data = bytearray(size_bits // 8)
    for index in revoked:
        if not 0 <= index < size_bits:
            raise CredentialError(f"status index {index} is outside the list")
        data[index // 8] |= 0x80 >> (index % 8)
    return bytes(data)


def encode_list(bits: bytes) -> str:
    """Multibase base64url (no padding) of the GZIP-compressed bitstring."""
    compressed = gzip.compress(bits, compresslevel=9, mtime=0)
    return "u" + base64.urlsafe_b64encode(compressed).rstrip(b"=").decode("ascii")


def decode_list(encoded: Any) -> bytes:
    """The bitstring inside ``encodedList``; refuses anything malformed or oversized."""
    if not isinstance(encoded, str) or not encoded.startswith("u") or len(encoded) > MAX_BYTES:
        raise CredentialError("encodedList must be multibase base64url ('u…')")
    text = encoded[1:]
    try:
        compressed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        bits = inflater.decompress(compressed, MAX_BYTES + 1)
    except (ValueError, zlib.error) as exc:
        raise CredentialError(f"encodedList is not base64url GZIP: {exc}") from None
    if len(bits) > MAX_BYTES or inflater.unconsumed_tail:
        raise CredentialError("encodedList expands beyond 1 MiB; refused")
    if len(bits) * 8 < MIN_BITS:
        raise CredentialError(f"the status list has {len(bits) * 8} bits; at least {MIN_BITS}")
    return bits


def bit(bits: bytes, index: int) -> bool:
    """Bit ``index`` (0 = the leftmost bit of the first byte)."""
    if not 0 <= index < len(bits) * 8:
        raise CredentialError(f"status index {index} is outside the list of {len(bits) * 8}")
    return bool(bits[index // 8] & (0x80 >> (index % 8)))


def status_entry(list_url: str, index: int) -> dict[str, Any]:
    """The ``credentialStatus`` of a credential whose revocation bit is ``index``."""
    return {
        "id": f"{list_url}#{index}",
        "type": "BitstringStatusListEntry",
        "statusPurpose": PURPOSE,
        "statusListIndex": str(index),
        "statusListCredential": list_url,
    }


def list_credential(
    issuer: str, list_url: str, bits: bytes, *, valid_from: str, valid_until: str
) -> dict[str, Any]:
    """The unsigned ``BitstringStatusListCredential`` (sign it with data_integrity.add_proof)."""
    return {
        "@context": [V2_CONTEXT],
        "id": list_url,
        "type": ["VerifiableCredential", "BitstringStatusListCredential"],
        "issuer": issuer,
        "validFrom": valid_from,
        "validUntil": valid_until,
        "credentialSubject": {
            "id": f"{list_url}#list",
            "type": "BitstringStatusList",
            "statusPurpose": PURPOSE,
            "encodedList": encode_list(bits),
        },
    }


def entry_index(entry: Mapping[str, Any]) -> tuple[str, int]:
    """(list URL, index) of a ``BitstringStatusListEntry``; refuses other kinds."""
    if entry.get("type") != "BitstringStatusListEntry":
        raise CredentialError(f"credentialStatus type {entry.get('type')!r} is not supported")
    if entry.get("statusPurpose") != PURPOSE:
        raise CredentialError(f"status purpose {entry.get('statusPurpose')!r} is not revocation")
    url, index = entry.get("statusListCredential"), entry.get("statusListIndex")
    if not isinstance(url, str) or not url:
        raise CredentialError("credentialStatus has no statusListCredential")
    if not isinstance(index, str) or not index.isdigit() or len(index) > 12:
        raise CredentialError("statusListIndex must be a decimal string")
    return url, int(index)


def list_bits(credential: Mapping[str, Any], *, issuer: str, list_url: str) -> bytes:
    """The bitstring of a status list credential, after checking it is the one asked for."""
    types = credential.get("type")
    if not isinstance(types, list) or "BitstringStatusListCredential" not in types:
        raise CredentialError("the status list is not a BitstringStatusListCredential")
    if credential.get("id") != list_url:
        raise CredentialError(f"the status list is {credential.get('id')!r}, not {list_url!r}")
    if credential.get("issuer") != issuer:
        raise CredentialError("the status list is not issued by the credential's issuer")
    subject = credential.get("credentialSubject")
    if not isinstance(subject, dict) or subject.get("statusPurpose") != PURPOSE:
        raise CredentialError("the status list is not a revocation list")
    return decode_list(subject.get("encodedList"))
