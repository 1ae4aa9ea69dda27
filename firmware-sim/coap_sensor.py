"""A constrained sensor over CoAP: DID authentication, COSE-signed readings, an on-disk queue.

What a microcontroller with an Ed25519 key and a CoAP stack does, in Python (aiocoap,
cbor2, pyca/cryptography; the did:key and queue helpers of ``device.py`` beside it).
Nothing is imported from the gateway. The protocol is docs/protocol/coap.md:

1. ``POST /auth`` a CBOR hello → a CBOR challenge (nonce, gateway DID);
2. ``POST /auth`` a COSE_Sign1 response (``typ`` didgw-auth+cose) → the gateway's
   COSE_Sign1 grant (``typ`` didgw-grant+cose), checked against the gateway's did:key;
3. ``POST /r`` each reading as a COSE_Sign1 (``typ`` didgw-reading+cose), confirmable:
   aiocoap retransmits with CoAP's exponential back-off (ACK_TIMEOUT 2 s, random
   factor 1.5, MAX_RETRANSMIT 4). 2.04 is the ack (``{"seq", "entry"}``); 4.03
   ``replay`` means the gateway already has that seq; 5.03 / 4.29 are retried after
   their Max-Age; 4.01 makes the device authenticate again.

Readings go into the outbox (``device.py``'s SQLite ``Outbox``) before they are sent
and leave it when the gateway answers for them, so a restart resends exactly the same
bytes for what was not acknowledged.

    python firmware-sim/coap_sensor.py --state S --print-did
    python firmware-sim/coap_sensor.py --state S --server coap://127.0.0.1:5683 --count 10
    python firmware-sim/coap_sensor.py --state S --write-reading r.cose   # for coap-client
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from aiocoap import POST, Context, Message, Reliable
from aiocoap.error import Error as CoapError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device import (
    PASSPHRASE_ENV,
    DeviceError,
    Identity,
    Outbox,
    load_or_create_key,
    public_key_from_did,
)

AUTH_TYP, GRANT_TYP, READING_TYP = "didgw-auth+cose", "didgw-grant+cose", "didgw-reading+cose"
CBOR_CF, COSE_CF = 60, 18
EDDSA = -8


# ----------------------------------------------------------------------------- COSE


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, b"", payload])


def cose_sign1(identity: Identity, typ: str, payload: bytes) -> bytes:
    """A tagged COSE_Sign1: protected alg EdDSA, kid the DID URL (UTF-8), typ."""
    protected = cbor2.dumps({1: EDDSA, 4: identity.kid.encode(), 16: typ})
    signature = identity.private_key.sign(sig_structure(protected, payload))
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature]))


def open_cose_sign1(data: bytes, typ: str, signer_did: str) -> dict[str, Any]:
    """The CBOR payload of a COSE_Sign1 by ``signer_did`` (a did:key), checked."""
    item = cbor2.loads(data)
    if isinstance(item, cbor2.CBORTag) and item.tag == 18:
        item = item.value
    if not isinstance(item, list | tuple) or len(item) != 4:
        raise DeviceError("not a COSE_Sign1")
    protected_bytes, _unprotected, payload, signature = item
    protected = cbor2.loads(protected_bytes)
    kid = protected.get(4, b"").decode()
    if protected.get(1) != EDDSA or protected.get(16) != typ:
        raise DeviceError(f"unexpected COSE headers {protected!r}")
    if kid.partition("#")[0] != signer_did:
        raise DeviceError(f"signed by {kid}, not by {signer_did}")
    key = Ed25519PublicKey.from_public_bytes(public_key_from_did(kid))
    try:
        key.verify(signature, sig_structure(protected_bytes, payload))
    except InvalidSignature:
        raise DeviceError("the gateway's signature does not verify") from None
    body = cbor2.loads(payload)
    if not isinstance(body, dict):
        raise DeviceError("the signed payload is not a map")
    return body


def make_reading(identity: Identity, seq: int, ts_ms: int) -> bytes:
    values = {
        "energy": {"value": round(1000 + seq * 0.25, 3), "unit": "kWh"},
        "power": {"value": round(random.uniform(0, 4000), 1), "unit": "W"},  # noqa: S311
    }
    payload = {"did": identity.did, "seq": seq, "ts": ts_ms, "type": "energy", "values": values}
    return cose_sign1(identity, READING_TYP, cbor2.dumps(payload))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# ----------------------------------------------------------------------------- device


class Refused(DeviceError):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"refused {code} {reason}")
        self.code, self.reason = code, reason


@dataclass
class Session:
    gateway: str
    expires_ms: int
    readings: str


class CoapDevice:
    """One device: its identity, its outbox, and the gateway it talks to."""

    def __init__(
        self,
        identity: Identity,
        outbox: Outbox,
        server: str,
        *,
        gateway_did: str | None = None,
        log: Any = None,
    ) -> None:
        self.identity, self.outbox = identity, outbox
        self.server = server.rstrip("/")
        self.gateway_did = gateway_did
        self.session: Session | None = None
        self.accepted: dict[int, int] = {}  # seq -> entry
        self.refused: dict[int, str] = {}
        self._log = log or (lambda _m: None)

    async def _post(self, ctx: Context, path: str, payload: bytes, cf: int) -> Message:
        request = Message(
            code=POST,
            transport_tuning=Reliable,
            uri=self.server + path,
            payload=payload,
            content_format=cf,
        )
        return await ctx.request(request).response

    async def authenticate(self, ctx: Context) -> Session:
        hello = cbor2.dumps({"type": "hello", "did": self.identity.did})
        answer = await self._post(ctx, "/auth", hello, CBOR_CF)
        if not answer.code.is_successful():
            raise Refused(str(answer.code), answer.payload.decode(errors="replace"))
        challenge = cbor2.loads(answer.payload)
        gateway = challenge.get("gateway")
        if challenge.get("device") != self.identity.did or not isinstance(gateway, str):
            raise DeviceError("the challenge is not for this device")
        if self.gateway_did and gateway != self.gateway_did:
            raise DeviceError(f"challenge from {gateway}, not the pinned {self.gateway_did}")
        nonce = challenge["nonce"]
        body = {
            "type": "response",
            "nonce": nonce,
            "device": self.identity.did,
            "gateway": gateway,
            "ts": int(time.time() * 1000),
        }
        signed = cose_sign1(self.identity, AUTH_TYP, cbor2.dumps(body))
        answer = await self._post(ctx, "/auth", signed, COSE_CF)
        if not answer.code.is_successful():
            raise Refused(str(answer.code), answer.payload.decode(errors="replace"))
        grant = open_cose_sign1(answer.payload, GRANT_TYP, gateway)
        if grant.get("device") != self.identity.did or grant.get("nonce") != nonce:
            raise DeviceError("the grant is not the answer to this device's response")
        self.session = Session(gateway, int(grant["expires"]), str(grant["readings"]))
        self._log(f"authenticated with {gateway} until {self.session.expires_ms}")
        return self.session

    async def deliver(self, ctx: Context, seq: int, reading: bytes, *, attempts: int = 8) -> bool:
        """Send one queued reading until the gateway answers for it; True when accepted."""
        for _ in range(attempts):
            session = self.session
            if session is None or session.expires_ms <= time.time() * 1000 + 5000:
                session = await self.authenticate(ctx)
            try:
                answer = await self._post(ctx, session.readings, reading, COSE_CF)
            except CoapError as exc:  # no answer after CoAP's own retransmissions
                self._log(f"seq {seq}: {exc}; trying again")
                await asyncio.sleep(2)
                continue
            reason = answer.payload.decode(errors="replace")
            if answer.code.is_successful():
                ack = cbor2.loads(answer.payload)
                self.outbox.remove(seq)
                self.accepted[seq] = int(ack["entry"])
                self._log(f"seq {seq}: accepted as entry {ack['entry']}")
                return True
            if reason in ("overloaded", "unavailable", "rate_limited"):
                await asyncio.sleep(answer.opt.max_age or 2)
                continue
            if reason == "unauthenticated":
                self.session = None
                continue
            self.outbox.remove(seq)  # the gateway answered for it: replay means it has it
            self.refused[seq] = reason
            self._log(f"seq {seq}: refused {answer.code} {reason}")
            return reason == "replay"
        return False

    def next_reading(self) -> tuple[int, bytes]:
        seq, text = self.outbox.add(
            lambda s: _b64(make_reading(self.identity, s, int(time.time() * 1000))),
            int(time.time() * 1000),
        )
        return seq, base64.b64decode(text)

    def queued(self) -> list[tuple[int, bytes]]:
        return [(seq, base64.b64decode(t)) for seq, t in self.outbox.after(0, 1_000_000)]


async def run(args: argparse.Namespace, device: CoapDevice) -> int:
    ctx = await Context.create_client_context()
    try:
        if args.write_reading:
            await device.authenticate(ctx)
            seq, reading = device.next_reading()
            device.outbox.remove(seq)  # handed to another sender; the seq is used up
            Path(args.write_reading).write_bytes(reading)
            print(f"wrote seq {seq} ({len(reading)} bytes) to {args.write_reading}")
            return 0
        ok = True
        for seq, reading in device.queued():  # left over from an earlier run
            ok &= await device.deliver(ctx, seq, reading)
        for _ in range(args.count):
            seq, reading = device.next_reading()
            ok &= await device.deliver(ctx, seq, reading)
            if args.rate > 0:
                await asyncio.sleep(1 / args.rate)
        return 0 if ok else 1
    except (DeviceError, CoapError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await ctx.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="coap://127.0.0.1:5683")
    parser.add_argument("--state", required=True, help="the device's state directory")
    parser.add_argument("--key", help="Ed25519 PKCS#8 PEM key (default STATE/key.pem)")
    parser.add_argument("--count", type=int, default=1, help="readings to send (default 1)")
    parser.add_argument("--rate", type=float, default=0, help="readings per second (0: at once)")
    parser.add_argument("--gateway-did", help="accept this gateway only")
    parser.add_argument(
        "--write-reading",
        metavar="FILE",
        help="authenticate, write one signed reading to FILE (not sent), exit",
    )
    parser.add_argument("--print-did", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    state = Path(args.state)
    passphrase = os.environ.get(PASSPHRASE_ENV, "").encode() or None
    try:
        key = load_or_create_key(Path(args.key) if args.key else state / "key.pem", passphrase)
        identity = Identity.from_key(key)
        if args.print_did:
            print(identity.did)
            return 0
        outbox = Outbox(state / "coap.db", identity.did)
    except DeviceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log = None if args.quiet else print
    device = CoapDevice(identity, outbox, args.server, gateway_did=args.gateway_did, log=log)
    try:
        return asyncio.run(run(args, device))
    except KeyboardInterrupt:
        return 130
    finally:
        outbox.close()


if __name__ == "__main__":
    sys.exit(main())
