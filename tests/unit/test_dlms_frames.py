"""Encrypted P1 frames (Smarty, Sagemcom T210-D-R): made here with pycryptodome's AES-GCM,
opened by the gateway with pyca/cryptography, and the same frames opened by dsmr-parser
(dlms_cosem) as a check of the framing; wrong keys, altered frames and replays refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from Crypto.Cipher import AES
from dsmr_parser import telegram_specifications as specs
from dsmr_parser.exceptions import DecryptionError
from dsmr_parser.parsers import TelegramParser
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.energy.dlms_frames import EncryptedSplitter
from gateway.energy.p1 import Rejected, Telegram, crc16
from gateway.energy.variants import SMARTY_AUTHENTICATION_KEY

VECTORS = Path(__file__).parents[1] / "vectors" / "dsmr"
PLAIN = (VECTORS / "smarty-plain.txt").read_bytes()
T210 = (VECTORS / "sagemcom-t210.txt").read_bytes()
KEY = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
TITLE = b"SAG\x01\x02\x03\x04\x05"


def seal(
    plain: bytes,
    counter: int,
    key: bytes = KEY,
    auth: bytes = SMARTY_AUTHENTICATION_KEY,
    title: bytes = TITLE,
) -> bytes:
    """One general-global-cipher frame, as the meter sends it (IEC 62056-5-3, suite 0)."""
    ic = counter.to_bytes(4, "big")
    cipher = AES.new(key, AES.MODE_GCM, nonce=title + ic, mac_len=12)
    cipher.update(b"\x30" + auth)
    ciphertext, tag = cipher.encrypt_and_digest(plain)
    body = b"\x30" + ic + ciphertext + tag
    return b"\xdb\x08" + title + b"\x82" + len(body).to_bytes(2, "big") + body


def feed(splitter: EncryptedSplitter, stream: bytes, chunk: int = 11) -> list:
    out = []
    for i in range(0, len(stream), chunk):
        out += splitter.feed(stream[i : i + chunk])
    return out


def test_smarty_frames_open_to_the_published_telegram():
    splitter = EncryptedSplitter("smarty", KEY)
    out = feed(splitter, seal(PLAIN, 1) + b"\x00noise\xdb" + seal(PLAIN, 2))
    assert [type(x) for x in out] == [Telegram, Telegram]
    t = out[0]
    assert t.variant == "smarty" and t.frame_counter == 1 and t.equipment_id == "SAG1030700012701"
    assert (t.total_import_wh, t.total_export_wh, t.power_export_w) == (273764, 112743030, 897)
    assert splitter.last_counter == 2 and splitter.counts["noise_bytes"] == 7


def test_dsmr_parser_opens_the_same_frames():
    """An independent reading of the framing: dsmr-parser's MSN (Smarty) specification."""
    frame = seal(PLAIN, 0x10000001)
    theirs = TelegramParser(specs.MSN).parse(frame.hex(), encryption_key=KEY.hex())
    assert theirs.ELECTRICITY_IMPORTED_TOTAL.value * 1000 == 273764
    [ours] = EncryptedSplitter("smarty", KEY).feed(frame)
    assert isinstance(ours, Telegram) and ours.total_import_wh == 273764
    with pytest.raises(DecryptionError):  # and they refuse a wrong key as we do
        TelegramParser(specs.MSN).parse(frame.hex(), encryption_key=bytes(16).hex())


def test_sagemcom_t210_frames_need_their_own_authentication_key():
    auth = bytes(range(16, 32))
    frame = seal(T210, 7, auth=auth)
    [ok] = EncryptedSplitter("sagemcom-t210-encrypted", KEY, auth).feed(frame)
    assert isinstance(ok, Telegram) and ok.total_import_wh == 6545766
    with pytest.raises(ValueError, match="authentication key"):
        EncryptedSplitter("sagemcom-t210-encrypted", KEY)


def test_a_wrong_key_is_refused_and_nothing_comes_out():
    splitter = EncryptedSplitter("smarty", bytes(16))
    out = feed(splitter, seal(PLAIN, 1) + seal(PLAIN, 2))
    assert [(type(x), x.reason) for x in out] == [(Rejected, "decrypt")] * 2
    assert splitter.counts["decrypt"] == 2 and splitter.counts["telegrams"] == 0
    assert splitter.last_counter == -1


@pytest.mark.parametrize("position", [2, 9, 14, 15, 100, -13, -1])
def test_an_altered_frame_is_refused(position):
    frame = bytearray(seal(PLAIN, 5))
    frame[position] ^= 0x01  # the system title, the counter, the ciphertext, the tag
    splitter = EncryptedSplitter("smarty", KEY)
    out = splitter.feed(bytes(frame) + seal(PLAIN, 6))
    assert [x.reason for x in out if isinstance(x, Rejected)] == ["decrypt"]
    assert [x.total_import_wh for x in out if isinstance(x, Telegram)] == [273764]


def test_replayed_and_older_frames_are_refused():
    splitter = EncryptedSplitter("smarty", KEY, last_counter=10)
    out = feed(splitter, seal(PLAIN, 10) + seal(PLAIN, 11) + seal(PLAIN, 11) + seal(PLAIN, 3))
    assert [getattr(x, "reason", "ok") for x in out] == ["replay", "ok", "replay", "replay"]
    assert splitter.last_counter == 11


def test_a_decrypted_telegram_is_still_checked_as_a_telegram():
    bad_crc = PLAIN.replace(b"273.764", b"273.765")
    no_crc = PLAIN[: PLAIN.rindex(b"!") + 1] + b"\r\n"
    body = PLAIN[: PLAIN.rindex(b"!") + 1].replace(b"1-0:2.8.0(112743.030*kWh)\r\n", b"")
    missing = body + b"%04X\r\n" % crc16(body)
    splitter = EncryptedSplitter("smarty", KEY)
    out = splitter.feed(seal(bad_crc, 1) + seal(no_crc, 2) + seal(missing, 3))
    assert [x.reason for x in out] == ["crc", "crc", "garbled"]


def test_frame_lengths_are_bounded():
    huge = b"\xdb\x08" + TITLE + b"\x82\xff\xff" + b"\x30" * 50
    splitter = EncryptedSplitter("smarty", KEY)
    out = splitter.feed(huge + seal(PLAIN, 1))
    assert out[0].reason == "truncated" and isinstance(out[-1], Telegram)
    assert len(splitter._buf) == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=64))
def test_arbitrary_bytes_never_become_readings(noise, chunk):
    splitter = EncryptedSplitter("smarty", KEY)
    out = feed(splitter, b"\xdb\x08" + noise, chunk) + feed(splitter, noise, chunk)
    assert not any(isinstance(x, Telegram) for x in out)
