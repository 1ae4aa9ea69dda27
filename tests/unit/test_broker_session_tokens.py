"""The gateway's side of broker sessions: tokens it mints, and the deny file it keeps."""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

import pytest

from gateway.auth import broker_tokens
from gateway.errors import StateError
from gateway.run.broker_sessions import KEEP_SECONDS, BrokerSessions

DID = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
OTHER = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
NOW = 1_790_000_000


def sessions(tmp_path: Path, clock: list[float]) -> tuple[BrokerSessions, bytes]:
    key = secrets.token_bytes(broker_tokens.KEY_BYTES)
    made = BrokerSessions(
        key, "site", tmp_path / "tokens", random_bytes=lambda n: b"\x07" * n, clock=lambda: clock[0]
    )
    return made, key


def test_a_token_names_its_did_kind_prefix_and_ends_with_the_session(tmp_path: Path) -> None:
    clock = [NOW + 0.4]
    made, key = sessions(tmp_path, clock)
    token = made.token(DID, "device", (NOW + 600) * 1000 + 999)
    claims = broker_tokens.verify(token, key, NOW)
    assert (claims.sub, claims.kind, claims.pfx, claims.iat, claims.exp) == (
        DID, "device", "site", NOW, NOW + 600)  # fmt: skip
    person = broker_tokens.verify(made.token(OTHER, "person", NOW * 1000 + 1), key, NOW)
    assert person.kind == "person" and person.exp == NOW + 1  # never less than a second


def test_the_deny_file_exists_from_the_start_and_voids_tokens_up_to_now(tmp_path: Path) -> None:
    clock = [float(NOW)]
    made, _ = sessions(tmp_path, clock)
    assert made.deny_path.read_text() == ""  # the plugin refuses every DID without it
    assert stat.S_IMODE(made.deny_path.stat().st_mode) == 0o640
    made.void({DID})
    clock[0] += 10
    made.void({OTHER, DID}, at=NOW + 5)
    assert made.deny_path.read_text() == "".join(f"{d} {NOW + 5}\n" for d in sorted({DID, OTHER}))
    made.void({DID}, at=NOW + 1)  # an older change never moves a line back
    assert made.denied()[DID] == NOW + 5
    assert not list(made.deny_path.parent.glob(".*"))  # written whole, then renamed


def test_lines_are_kept_while_a_token_they_void_may_live_and_survive_a_restart(
    tmp_path: Path,
) -> None:
    clock = [float(NOW)]
    made, _ = sessions(tmp_path, clock)
    made.void({DID})
    clock[0] = NOW + KEEP_SECONDS - 1
    made.void({OTHER})
    again, _ = sessions(tmp_path, clock)  # the gateway restarts: it reads the file
    assert again.denied() == {DID: NOW, OTHER: NOW + KEEP_SECONDS - 1}
    clock[0] = NOW + KEEP_SECONDS + 1
    again.void(set())
    assert again.denied() == {OTHER: NOW + KEEP_SECONDS - 1}


def test_a_deny_file_that_cannot_be_written_is_an_error_that_says_where(tmp_path: Path) -> None:
    clock = [float(NOW)]
    made, _ = sessions(tmp_path, clock)
    made.deny_path.unlink()
    made.deny_path.mkdir()  # (root writes anywhere: a directory in the way fails for all)
    with pytest.raises(StateError, match=r"cannot write the broker's deny file .*deny"):
        made.void({DID})


def test_many_dids_are_voided_each_at_its_own_second_in_one_write(tmp_path: Path) -> None:
    clock = [float(NOW)]
    made, _ = sessions(tmp_path, clock)
    before = made.deny_path.stat().st_ino
    made.void_each({DID: NOW - 30.9, OTHER: NOW - 10})
    assert made.denied() == {DID: NOW - 31, OTHER: NOW - 10}
    assert made.deny_path.stat().st_ino != before  # the file replaced whole
