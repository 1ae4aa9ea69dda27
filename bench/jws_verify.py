"""Throughput of the verification recipe on a did:key-signed compact JWS (the hot path's check).

    python bench/jws_verify.py [--quick]

Compares the full recipe (parse, resolve kid, check relationship, verify) with a
bare Ed25519 verify of the same bytes, by OpenSSL (``cryptography``) and by
libsodium (PyNaCl, which the recipe uses), so the recipe's overhead is visible.
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import os
import sys

# bench/http.py has the name of the standard library's http package: this folder comes off
# the import path before anything imports http.client (paho, aiohttp, requests, web3 do).
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

import argparse
import base64
import json
import time

from nacl.signing import VerifyKey

from gateway.identity import offline_resolver, sign_jws, verify_jws
from gateway.identity.keystore import generate_key
from gateway.identity.signing import Signer


def rate(fn: object, seconds: float) -> float:
    assert callable(fn)
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            fn()
        count += 100
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s per figure instead of 5 s")
    seconds = 1.0 if parser.parse_args().quick else 5.0
    signer = Signer.for_did_key(generate_key())
    payload = json.dumps({"seq": 1, "ts": 1_700_000_000, "kWh": 1.234}).encode()
    token = sign_jws(payload, signer)
    resolver = offline_resolver()
    head, body, sig = token.split(".")
    raw_sig = base64.urlsafe_b64decode(sig + "==")
    public = signer.private_key.public_key()
    signing_input = f"{head}.{body}".encode()

    recipe = rate(
        lambda: verify_jws(token, resolver=resolver, relationship="assertionMethod", now=0.0),
        seconds,
    )
    bare = rate(lambda: public.verify(raw_sig, signing_input), seconds)
    sodium_key = VerifyKey(public.public_bytes_raw())
    sodium = rate(lambda: sodium_key.verify(signing_input, raw_sig), seconds)
    result = {
        "bench": "jws_verify",
        "recipe_verifications_per_s": round(recipe),
        "bare_ed25519_verifications_per_s": round(bare),
        "recipe_us": round(1e6 / recipe, 1),
        "bare_us": round(1e6 / bare, 1),
        "bare_libsodium_verifications_per_s": round(sodium),
        "bare_libsodium_us": round(1e6 / sodium, 1),
    }
    print(f"verify_jws recipe: {recipe:,.0f}/s ({1e6 / recipe:.0f} us each)")
    print(f"bare Ed25519, OpenSSL:   {bare:,.0f}/s ({1e6 / bare:.0f} us each)")
    print(f"bare Ed25519, libsodium: {sodium:,.0f}/s ({1e6 / sodium:.0f} us each)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
