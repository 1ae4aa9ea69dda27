"""Credential verification throughput, one core: a VC 2.0 with an eddsa-jcs-2022 proof, and an
SD-JWT VC presentation with key binding (the gateway's own household credential in both).

    python bench/creds.py [--quick]

Each figure is the whole check as the gateway makes it: for the VC, shape, JCS of the
document and of the proof config, the Ed25519 signature, the issuer binding, the validity
window and the revocation bit (own status list, read from an in-memory database); for the
SD-JWT, both JWS, every disclosure digest, the key binding (nonce, audience, sd_hash, age)
and the revocation bit. The last line is one JSON object with the figures.
"""

from __future__ import annotations

import os
import sys

# bench/http.py has the name of the standard library's http package: this folder comes off
# the import path before anything imports http.client (paho, aiohttp, requests, web3 do).
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

import argparse
import json
import time

from gateway.credentials.issuer import CredentialIssuer
from gateway.credentials.sd_jwt import present, verify_presentation
from gateway.credentials.status_source import StatusLists
from gateway.credentials.vc import verify_credential
from gateway.db import connect, migrate
from gateway.identity import offline_resolver
from gateway.identity.keystore import generate_key
from gateway.identity.resolver import Freshness
from gateway.identity.signing import Signer
from gateway.migrations import MIGRATIONS

HOUSEHOLD = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"


def rate(fn: object, seconds: float) -> float:
    assert callable(fn)
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            fn()
        count += 50
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s per figure instead of 5 s")
    seconds = 1.0 if parser.parse_args().quick else 5.0
    assert MIGRATIONS
    db = connect(":memory:")
    migrate(db, now=time.time())
    gateway, holder = Signer.for_did_key(generate_key()), Signer.for_did_key(generate_key())
    issuer = CredentialIssuer(
        db, gateway_did=gateway.did, list_url="", validity_seconds=86400, status_valid_seconds=600
    )
    now = time.time()
    claims = {"household": HOUSEHOLD, "role": "seller", "name": "Alice Example"}
    vc = json.loads(
        issuer.issue(
            "household",
            holder.did,
            claims,
            fmt="vc",
            signer=gateway,
            now=now,
            random_bytes=os.urandom,
        ).text
    )
    sd = issuer.issue(
        "household",
        holder.did,
        claims,
        fmt="sd-jwt",
        signer=gateway,
        now=now,
        random_bytes=os.urandom,
    ).text
    presentation = present(
        sd, ["household", "role"], holder, nonce="n", aud=gateway.did, iat=int(now)
    )
    resolver = offline_resolver()
    status = StatusLists(resolver=resolver, freshness=Freshness(), local=issuer.local_list)

    def check_vc() -> None:
        verify_credential(vc, resolver=resolver, now=now, status=status)

    def check_sd() -> None:
        verify_presentation(
            presentation, resolver=resolver, now=now, nonce="n", aud=gateway.did, status=status
        )

    check_vc()
    check_sd()
    result = {
        "vc_verify_per_s": round(rate(check_vc, seconds)),
        "sdjwt_verify_per_s": round(rate(check_sd, seconds)),
        "seconds_per_figure": seconds,
    }
    print(f"VC (eddsa-jcs-2022) verify:        {result['vc_verify_per_s']:>8}/s")
    print(f"SD-JWT VC presentation verify:     {result['sdjwt_verify_per_s']:>8}/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
