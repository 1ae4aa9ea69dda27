"""Encrypted P1 telegrams (Luxembourg's Smarty, Sagemcom's T210-D-R), sans-IO.

These meters wrap each telegram in a DLMS general-global-cipher APDU (IEC 62056-5-3,
security suite 0: AES-128-GCM) and send the frame as bytes::

    DB 08 <system title, 8>  82 <length, 2>  30 <invocation counter, 4>  <ciphertext> <tag, 12>

The nonce is the system title and the invocation counter (12 bytes), the additional
authenticated data the security control byte (0x30) and the authentication key: for
Smarty one key for all meters (published in the Luxmetering specification), for the
T210-D-R one per meter. The encryption key is the meter's own secret (from the grid
operator); the gateway keeps it like its other keys (``keys/meters/<id>.dlms``, 0600).

:class:`EncryptedSplitter` takes the bytes off the wire and returns the telegrams inside,
checked as plain ones (their own CRC too), or what was refused and why: ``decrypt``
(wrong key, or a frame altered on the line: the GCM tag does not check), ``replay`` (the
invocation counter is not above the last accepted one: an old frame sent again),
``truncated`` (the frame ends early or is longer than the size limit) and the plain
telegram's reasons. A refused frame becomes nothing; its bytes are dropped.
"""

from __future__ import annotations

import dataclasses

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gateway.energy.p1 import (
    MAX_TELEGRAM,
    REJECT_REASONS,
    P1Error,
    Rejected,
    Telegram,
    parse_telegram,
)
from gateway.energy.variants import PLAIN_OF, VARIANTS

DECRYPT_REASONS = ("decrypt", "replay")
_TAG = 0xDB  # general-global-cipher
_SECURITY = 0x30  # authenticated and encrypted, suite 0
_TAG_LEN = 12
_HEAD = 2 + 8 + 1  # DB 08 <system title> then the length's first byte


def decrypt_frame(frame: bytes, key: bytes, authentication_key: bytes) -> tuple[int, bytes]:
    """The invocation counter and plaintext of one whole frame; raises :class:`P1Error`
    (``decrypt``) when it does not authenticate."""
    title = frame[2:10]
    body = frame[_body_start(frame) :]
    if len(body) < 1 + 4 + _TAG_LEN or body[0] != _SECURITY:
        raise P1Error("decrypt", f"security control {body[:1].hex()} is not 30 (AES-GCM)")
    counter = int.from_bytes(body[1:5], "big")
    ciphertext, tag = body[5:-_TAG_LEN], body[-_TAG_LEN:]
    decryptor = Cipher(
        algorithms.AES(key), modes.GCM(title + body[1:5], tag, min_tag_length=_TAG_LEN)
    ).decryptor()
    decryptor.authenticate_additional_data(bytes([_SECURITY]) + authentication_key)
    try:
        plain = decryptor.update(ciphertext) + decryptor.finalize()
    except InvalidTag:
        raise P1Error("decrypt", "the frame does not authenticate: wrong key or altered") from None
    return counter, plain


def _body_start(frame: bytes) -> int:
    return _HEAD + (2 if frame[10] == 0x82 else 1 if frame[10] == 0x81 else 0)


def _frame_length(buf: bytearray) -> int | None:
    """The whole frame's length from its header, or None when the header is not whole."""
    if len(buf) < _HEAD:
        return None
    first = buf[10]
    if first == 0x82:
        if len(buf) < _HEAD + 2:
            return None
        return _HEAD + 2 + int.from_bytes(buf[11:13], "big")
    if first == 0x81:
        if len(buf) < _HEAD + 1:
            return None
        return _HEAD + 1 + buf[11]
    return _HEAD + first if first < 0x80 else -1


class EncryptedSplitter:
    """Decrypted, checked telegrams out of a byte stream of DLMS frames.

    ``key`` is the meter's 16-byte encryption key; ``authentication_key`` the variant's
    fixed one unless given (the T210-D-R's is per meter). ``last_counter`` is the highest
    invocation counter already accepted (frames at or below it are replays).
    """

    def __init__(
        self,
        variant: str,
        key: bytes,
        authentication_key: bytes | None = None,
        *,
        last_counter: int = -1,
        max_frame: int = MAX_TELEGRAM,
    ) -> None:
        spec = VARIANTS[variant]
        if not spec.encrypted:
            raise ValueError(f"{variant!r} is not an encrypted variant")
        auth = authentication_key or spec.authentication_key
        if len(key) != 16 or auth is None or len(auth) != 16:
            raise ValueError(f"{variant} needs a 16-byte encryption and authentication key")
        self._key, self._auth = key, auth
        self._variant = variant
        self._plain = PLAIN_OF[variant]
        self._buf = bytearray()
        self._max = max_frame
        self.last_counter = last_counter
        self.counts: dict[str, int] = dict.fromkeys(
            ("telegrams", *REJECT_REASONS, *DECRYPT_REASONS, "noise_bytes", "unknown_lines"), 0
        )

    def feed(self, chunk: bytes) -> list[Telegram | Rejected]:
        buf = self._buf
        buf += chunk
        out: list[Telegram | Rejected] = []
        while True:
            start = buf.find(bytes([_TAG, 0x08]))
            if start < 0:
                keep = 1 if buf.endswith(bytes([_TAG])) else 0
                self.counts["noise_bytes"] += len(buf) - keep
                del buf[: len(buf) - keep]
                return out
            if start:
                self.counts["noise_bytes"] += start
                del buf[:start]
            length = _frame_length(buf)
            if length is None:
                return out
            if length < 0 or length > self._max or length < _HEAD + 5 + _TAG_LEN:
                out.append(self._reject("truncated", "not a frame length within the limit"))
                del buf[:1]
                continue
            if len(buf) < length:
                return out
            frame = bytes(buf[:length])
            del buf[:length]
            out.append(self._open(frame))

    def _open(self, frame: bytes) -> Telegram | Rejected:
        try:
            counter, plain = decrypt_frame(frame, self._key, self._auth)
            if counter <= self.last_counter:
                raise P1Error(
                    "replay",
                    f"invocation counter {counter} is not above the last one ({self.last_counter})",
                )
            telegram = parse_telegram(plain, self._plain)
        except P1Error as exc:
            return self._reject(exc.reason, exc.detail)
        self.last_counter = counter
        self.counts["telegrams"] += 1
        self.counts["unknown_lines"] += telegram.unknown
        return dataclasses.replace(telegram, frame_counter=counter, variant=self._variant)

    def _reject(self, reason: str, detail: str) -> Rejected:
        self.counts[reason] += 1
        return Rejected(reason, detail)
