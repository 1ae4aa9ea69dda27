"""The gateway as issuer: issuing, revocation, the status list, and refusals that change nothing."""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlite_utils import Database

from gateway.chain.store import ChainStore
from gateway.credentials import status_list
from gateway.credentials.issuer import CredentialIssuer
from gateway.credentials.sd_jwt import present, verify_presentation
from gateway.credentials.status_source import StatusLists, checked_list
from gateway.credentials.vc import CredentialInvalid, verify_credential
from gateway.errors import CredentialError
from gateway.identity import offline_resolver
from gateway.identity.resolver import Freshness, Unreachable
from gateway.identity.signing import Signer

NOW = 1_700_000_000.0
GATEWAY = Signer.for_did_key(Ed25519PrivateKey.generate())
HOLDER = Signer.for_did_key(Ed25519PrivateKey.generate())
HOUSEHOLD = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"


@pytest.fixture
def issuer(db: Database) -> CredentialIssuer:
    return CredentialIssuer(
        db, gateway_did=GATEWAY.did, list_url="", validity_seconds=86400, status_valid_seconds=600
    )


def lists(issuer: CredentialIssuer, fetch: Any = None) -> StatusLists:
    return StatusLists(
        resolver=offline_resolver(),
        freshness=Freshness(ttl=60, max_stale=600),
        local=issuer.local_list,
        local_suspended=issuer.local_suspended,
        fetch=fetch,
    )


def issue(issuer: CredentialIssuer, kind: str = "household", fmt: str = "vc", **claims: str) -> Any:
    claims = claims or {"household": HOUSEHOLD, "role": "buyer"}
    return issuer.issue(
        kind, HOLDER.did, claims, fmt=fmt, signer=GATEWAY, now=NOW, random_bytes=os.urandom
    )


def test_a_vc_verifies_until_it_is_revoked(issuer: CredentialIssuer, db: Database) -> None:
    issued = issue(issuer)
    vc = json.loads(issued.text)
    verified = verify_credential(vc, resolver=offline_resolver(), now=NOW, status=lists(issuer))
    assert verified.subject["role"] == "buyer"
    issuer.revoke(issued.record.id, by="fm:alice", reason="moved out", now=NOW + 1)
    with pytest.raises(CredentialInvalid, match="revoked"):
        verify_credential(vc, resolver=offline_resolver(), now=NOW + 2, status=lists(issuer))
    kinds = [e.kind for e in ChainStore(db).entries()]
    assert kinds == ["credential", "credential"]
    with pytest.raises(CredentialError, match="already revoked"):
        issuer.revoke(issued.record.id, by="fm:alice", reason="again", now=NOW + 3)


def test_an_sd_jwt_stops_working_when_revoked(issuer: CredentialIssuer) -> None:
    issued = issue(issuer, fmt="sd-jwt")
    text = present(issued.text, ["role"], HOLDER, nonce="n", aud="a", iat=int(NOW))
    args: dict[str, Any] = {"resolver": offline_resolver(), "nonce": "n", "aud": "a"}
    verify_presentation(text, now=NOW, status=lists(issuer), **args)
    issuer.revoke(issued.record.id, by="fm", reason="lost phone", now=NOW)
    with pytest.raises(CredentialError, match="revoked"):
        verify_presentation(text, now=NOW, status=lists(issuer), **args)


def test_several_reasons_are_reported_together(issuer: CredentialIssuer) -> None:
    vc = json.loads(issue(issuer).text)
    vc["credentialSubject"]["role"] = "seller"
    vc["@context"] = ["https://www.w3.org/2018/credentials/v1"]
    with pytest.raises(CredentialInvalid) as caught:
        verify_credential(vc, resolver=offline_resolver(), now=NOW + 10**9, status=lists(issuer))
    text = " | ".join(caught.value.reasons)
    assert "@context must be" in text and "proof 1 of 1" in text and "expired" in text


def test_a_proof_by_someone_else_than_the_issuer_is_refused(issuer: CredentialIssuer) -> None:
    from gateway.credentials.data_integrity import add_proof

    vc = json.loads(issue(issuer).text)
    vc.pop("proof")
    forged = add_proof(vc, HOLDER, created="2023-01-01T00:00:00Z")
    with pytest.raises(CredentialInvalid, match="not the issuer"):
        verify_credential(forged, resolver=offline_resolver(), now=NOW, status=lists(issuer))


@pytest.mark.parametrize(
    ("kind", "claims", "message"),
    [
        ("household", {"household": HOUSEHOLD}, "missing"),
        ("household", {"household": HOUSEHOLD, "role": "landlord"}, "one of"),
        ("household", {"household": "not-a-did", "role": "buyer"}, "household"),
        ("facility-manager", {"colour": "red"}, "unknown"),
        ("pilot", {}, "unknown credential type"),
        ("device-owner", {"device": "did:key:z6Mk\x00"}, "printable"),
    ],
)
def test_bad_claims_are_refused_and_nothing_is_issued(
    issuer: CredentialIssuer, db: Database, kind: str, claims: dict[str, str], message: str
) -> None:
    with pytest.raises(CredentialError, match=message):
        issue(issuer, kind, **claims)
    assert issuer.records() == [] and ChainStore(db).size == 0


def test_sd_jwt_needs_a_did_key_subject(issuer: CredentialIssuer) -> None:
    with pytest.raises(CredentialError, match="did:key"):
        issuer.issue(
            "facility-manager",
            "did:web:example.com",
            {},
            fmt="sd-jwt",
            signer=GATEWAY,
            now=NOW,
            random_bytes=os.urandom,
        )


def test_the_signed_status_list_verifies_and_expires(issuer: CredentialIssuer) -> None:
    issued = issue(issuer)
    issuer.revoke(issued.record.id, by="fm", reason="r", now=NOW)
    signed = issuer.status_list_credential(GATEWAY, now=NOW)
    bits = checked_list(
        signed, url=issuer.list_url, issuer=GATEWAY.did, resolver=offline_resolver(), now=NOW
    )
    assert status_list.bit(bits, issued.record.status_index)
    assert sum(bin(b).count("1") for b in bits) == 1
    with pytest.raises(CredentialError, match="validUntil"):
        checked_list(
            signed,
            url=issuer.list_url,
            issuer=GATEWAY.did,
            resolver=offline_resolver(),
            now=NOW + 601,
        )


def test_a_remote_status_list_fails_closed_when_too_stale(issuer: CredentialIssuer) -> None:
    url = "https://issuer.example/status/1"
    other = CredentialIssuer(
        issuer._db,
        gateway_did=GATEWAY.did,
        list_url=url,
        validity_seconds=86400,
        status_valid_seconds=10**6,
    )
    body = json.dumps(other.status_list_credential(GATEWAY, now=NOW)).encode()
    down = {"on": False}

    def fetch(_: str) -> bytes:
        if down["on"]:
            raise Unreachable("network is down")
        return body

    source = StatusLists(
        resolver=offline_resolver(), freshness=Freshness(ttl=60, max_stale=600), fetch=fetch
    )
    entry = status_list.status_entry(url, 5)
    assert source.revoked(entry, issuer=GATEWAY.did, now=NOW) is False
    down["on"] = True
    assert source.revoked(entry, issuer=GATEWAY.did, now=NOW + 300) is False  # stale, still usable
    with pytest.raises(CredentialError, match="failing closed"):
        source.revoked(entry, issuer=GATEWAY.did, now=NOW + 601)


def test_a_status_list_whose_proof_names_another_key_is_refused_unresolved(
    issuer: CredentialIssuer,
) -> None:
    """The list comes from the network: a proof naming a did:web elsewhere would send the
    gateway to that host. It is refused before anything is resolved."""
    signed = issuer.status_list_credential(GATEWAY, now=NOW)
    signed["proof"]["verificationMethod"] = "did:web:elsewhere.example#key-1"

    class Offline:
        def resolve(self, did: str, *, now: float) -> Any:
            raise AssertionError(f"{did} was resolved")

    with pytest.raises(CredentialError, match="someone other than its issuer"):
        checked_list(signed, url=issuer.list_url, issuer=GATEWAY.did, resolver=Offline(), now=NOW)


def test_bitstring_order_and_limits() -> None:
    bits = status_list.bitstring([0, 9, status_list.MIN_BITS - 1])
    assert bits[0] == 0x80 and bits[1] == 0x40 and bits[-1] == 0x01
    assert status_list.decode_list(status_list.encode_list(bits)) == bits
    with pytest.raises(CredentialError, match="at least"):
        status_list.decode_list(status_list.encode_list(b"\x00" * 100))
    with pytest.raises(CredentialError, match="1 MiB"):
        status_list.decode_list(status_list.encode_list(b"\x00" * (2 << 20)))
    with pytest.raises(CredentialError):
        status_list.decode_list("zabc")
    with pytest.raises(CredentialError):
        status_list.entry_index({"type": "StatusList2021Entry"})


def test_a_suspended_credential_is_refused_until_resumed(
    issuer: CredentialIssuer, db: Database
) -> None:
    vc_issued, sd_issued = issue(issuer), issue(issuer, fmt="sd-jwt")
    vc = json.loads(vc_issued.text)
    text = present(sd_issued.text, ["role"], HOLDER, nonce="n", aud="a", iat=int(NOW))
    args: dict[str, Any] = {"resolver": offline_resolver(), "nonce": "n", "aud": "a"}
    for record in (vc_issued.record, sd_issued.record):
        suspended = issuer.suspend(record.id, by="fm:alice", reason="phone lost", now=NOW + 1)
        assert suspended.suspended and suspended.state == "suspended" and not suspended.revoked
        assert (suspended.suspended_by, suspended.suspend_reason) == ("fm:alice", "phone lost")
        assert suspended.to_json()["suspended"] is True
    with pytest.raises(CredentialInvalid, match="suspended"):
        verify_credential(vc, resolver=offline_resolver(), now=NOW + 2, status=lists(issuer))
    with pytest.raises(CredentialError, match="is suspended"):
        verify_presentation(text, now=NOW + 2, status=lists(issuer), **args)
    assert sorted(issuer.suspended_indexes()) == sorted(
        [vc_issued.record.status_index, sd_issued.record.status_index]
    )
    # not published: the signed list has no bit set, and its revision did not change
    assert issuer.revoked_indexes() == [] and issuer.revision() == 0
    for record in (vc_issued.record, sd_issued.record):
        resumed = issuer.resume(record.id, by="fm:alice", reason="found it", now=NOW + 3)
        assert resumed.state == "valid" and resumed.suspended_ms is None
    verify_credential(vc, resolver=offline_resolver(), now=NOW + 4, status=lists(issuer))
    verify_presentation(text, now=NOW + 4, status=lists(issuer), **args)
    actions = [json.loads(e.payload)["action"] for e in ChainStore(db).entries()]
    assert actions == ["issue", "issue", "suspend", "suspend", "resume", "resume"]
    entry = json.loads(list(ChainStore(db).entries())[2].payload)
    assert (entry["id"], entry["by"], entry["reason"]) == (
        vc_issued.record.id,
        "fm:alice",
        "phone lost",
    )


def test_suspension_refusals_change_nothing(issuer: CredentialIssuer, db: Database) -> None:
    issued = issue(issuer)
    cred_id = issued.record.id
    with pytest.raises(CredentialError, match="already in force"):
        issuer.resume(cred_id, by="fm", reason="r", now=NOW)
    with pytest.raises(CredentialError, match="needs a reason"):
        issuer.suspend(cred_id, by="fm", reason="  ", now=NOW)
    with pytest.raises(CredentialError, match="no credential"):
        issuer.suspend("urn:uuid:nope", by="fm", reason="r", now=NOW)
    issuer.suspend(cred_id, by="fm", reason="r", now=NOW)
    with pytest.raises(CredentialError, match="already suspended"):
        issuer.suspend(cred_id, by="fm", reason="again", now=NOW)
    issuer.revoke(cred_id, by="fm", reason="moved out", now=NOW + 1)  # a suspended one can be
    record = issuer.get(cred_id)
    assert record.state == "revoked" and not record.suspended
    for change in (issuer.suspend, issuer.resume):
        with pytest.raises(CredentialError, match="revoked, which is permanent"):
            change(cred_id, by="fm", reason="r", now=NOW + 2)
    assert issuer.get(cred_id) == record
    actions = [json.loads(e.payload)["action"] for e in ChainStore(db).entries()]
    assert actions == ["issue", "suspend", "revoke"]


def test_the_table_itself_refuses_to_touch_a_revoked_credential(
    issuer: CredentialIssuer, db: Database
) -> None:
    issued = issue(issuer)
    issuer.revoke(issued.record.id, by="fm", reason="r", now=NOW)
    with pytest.raises(sqlite3.IntegrityError, match="stays revoked"):
        db.execute("UPDATE credentials SET suspended_ms = 1 WHERE id = ?", [issued.record.id])


def test_another_issuers_credential_is_never_taken_as_suspended(issuer: CredentialIssuer) -> None:
    issued = issue(issuer)
    issuer.suspend(issued.record.id, by="fm", reason="r", now=NOW)
    entry = status_list.status_entry(issuer.list_url, issued.record.status_index)
    source = lists(issuer)
    assert source.suspended(entry, issuer=GATEWAY.did) is True
    assert source.suspended(entry, issuer=HOLDER.did) is False  # not ours to say
    other = status_list.status_entry("https://elsewhere.example/list", 5)
    assert source.suspended(other, issuer=GATEWAY.did) is False
