"""A person's wallet speaking didgw's wallet protocol (docs/protocol/people.md).

Its own did:key (a PKCS#8 key file, made on first use), the credentials the gateway issued
to it (SD-JWT VC files written by ``didgw cred issue … --format sd-jwt -o FILE``), and the
protocol: hello → challenge, a presentation disclosing only the claims asked for with a
key-binding JWT over the gateway's nonce and DID and a fresh X25519 key, the grant (its
broker password sealed to that key), then requests on its own topic. Written with public
libraries only (cryptography, joserfc, paho-mqtt, through ``device.py`` beside it);
nothing is imported from the gateway.

    python firmware-sim/wallet.py --key bob.pem --gateway did:key:z6Mk… --print-did
    python firmware-sim/wallet.py --broker mqtts://gateway.local:8884 \\
        --account-broker mqtts://gateway.local:8883 --tls-pin AB:CD:… \\
        --key bob.pem --credential bob.sdjwt --gateway did:key:z6Mk… \\
        suspend did:key:z6MkDEV… --reason lost
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import queue
import secrets
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent))

import device as dev

KB_TYP = "kb+jwt"
ORDER_TYP = "didgw-order+jws"
#: What a well-formed hello of this wallet's can be refused (docs/protocol/people.md): only
#: these end an attempt before its presentation is out.
HELLO_REFUSALS = frozenset({"not_permitted", "rate_limited", "unavailable"})


class WalletError(Exception):
    """Anything the wallet cannot do, with the reason."""


class Refused(WalletError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"the gateway refused: {reason}")
        self.reason = reason


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _disclosure_name(encoded: str) -> str | None:
    value = json.loads(dev.b64u_decode(encoded, "disclosure"))
    return value[1] if isinstance(value, list) and len(value) == 3 else None


def present(
    sd_jwt: str,
    disclose: Iterable[str],
    identity: dev.Identity,
    *,
    nonce: str,
    aud: str,
    epk: bytes,
    iat: int,
) -> str:
    """An SD-JWT presentation with only the ``disclose`` claims and a key-binding JWT.

    The key-binding JWT (``typ`` kb+jwt, signed by the holder key) carries ``iat``, ``aud``,
    ``nonce``, ``sd_hash`` (SHA-256 over everything up to its last ``~``) and ``epk``."""
    parts = sd_jwt.strip().split("~")
    if len(parts) < 2 or parts[-1]:
        raise WalletError("the credential is not an issued SD-JWT (<JWT>~<disclosures>~)")
    wanted = set(disclose)
    chosen = [d for d in parts[1:-1] if _disclosure_name(d) in wanted]
    found = {_disclosure_name(d) for d in chosen}
    if wanted - found:
        raise WalletError(f"the credential cannot disclose {sorted(wanted - found)}")
    presented = "~".join([parts[0], *chosen]) + "~"
    sd_hash = _b64u(hashlib.sha256(presented.encode("ascii")).digest())
    claims = {"iat": iat, "aud": aud, "nonce": nonce, "sd_hash": sd_hash, "epk": _b64u(epk)}
    return presented + identity.sign_jws(KB_TYP, _json(claims))


def make_order(
    identity: dev.Identity,
    *,
    household: str,
    seq: int,
    side: str,
    interval: int,
    wh: int,
    price: int,
    ts_ms: int,
) -> str:
    """An order for ``household``, signed by the person (``typ`` didgw-order+jws)."""
    body = {
        "did": identity.did,
        "household": household,
        "seq": seq,
        "ts": ts_ms,
        "side": side,
        "interval": interval,
        "wh": wh,
        "price": price,
    }
    return identity.sign_jws(ORDER_TYP, _json(body))


@dataclass(frozen=True)
class Session:
    username: str
    password: bytes = field(repr=False)
    expires_ms: int
    requests: str
    responses: str
    permissions: list[str]


class Wallet:
    """One person's wallet: authenticate, then send requests and read the answers."""

    def __init__(
        self,
        broker: str,
        *,
        key_path: Path,
        gateway_did: str,
        prefix: str = "didgw",
        timeout: float = 15.0,
        account_broker: str | None = None,
        tls: dev.Trust | None = None,
    ) -> None:
        # Where to authenticate, and the accounts listener the session's account connects
        # to (client id = username); both read, and TLS chosen, as for a device (device.py,
        # Device): one trust anchor, plain MQTT only to this machine.
        try:
            where, account, self.trust = dev.resolve_brokers(
                broker,
                account_broker,
                tls,
                exposed="the presentation, the broker password and every request",
            )
        except dev.DeviceError as exc:
            raise WalletError(str(exc)) from None
        self.host, self.port = where.host, where.port
        self.account_host, self.account_port = account.host, account.port
        self._auth_tls, self._account_tls = where.tls, account.tls
        self.identity = dev.Identity.from_key(dev.load_or_create_key(Path(key_path)))
        self.did = self.identity.did
        self.gateway_did, self.prefix, self.timeout = gateway_did, prefix, timeout
        self.session: Session | None = None
        self._link: Any = None
        self._answers: queue.Queue[bytes] = queue.Queue()
        self.refusal_grace = dev.REFUSAL_GRACE

    # -- authentication --------------------------------------------------------------

    def authenticate(
        self,
        credentials: Sequence[str],
        disclose: Iterable[str],
        *,
        mutate: Any = None,
    ) -> Session:
        """Present ``credentials`` disclosing only ``disclose``; returns the session.

        ``mutate(nonce, aud) -> (nonce, aud)`` lets a test sign for another nonce or
        audience (the gateway must refuse it)."""
        reply = secrets.token_urlsafe(18)
        inbox: queue.Queue[bytes] = queue.Queue()
        link = self._open(f"{self.prefix}/auth/res/{reply}", inbox.put, None, None)
        try:
            auth = f"{self.prefix}/auth/wallet"
            link.publish(auth, _json({"type": "hello", "did": self.did, "reply": reply}))
            challenge = self._challenge(inbox)
            gateway, nonce = dev.check_challenge(
                challenge, did=self.did, gateway_did=self.gateway_did
            )
            nonce_text, aud = challenge["nonce"], gateway
            if mutate is not None:
                nonce_text, aud = mutate(nonce_text, aud)
            epk = X25519PrivateKey.generate()
            epk_public = dev._raw_public(epk)
            presentations = [
                present(
                    c,
                    disclose,
                    self.identity,
                    nonce=nonce_text,
                    aud=aud,
                    epk=epk_public,
                    iat=int(time.time()),
                )
                for c in credentials
            ]
            body = {
                "type": "presentation",
                "did": self.did,
                "reply": reply,
                "presentations": presentations,
            }
            link.publish(auth, _json(body))
            grant = self._grant(self._answer(inbox), gateway, nonce, epk)
        finally:
            link.close()
        self.session = grant
        return grant

    def _grant(self, raw: bytes, gateway: str, nonce: bytes, epk: X25519PrivateKey) -> Session:
        if raw.lstrip().startswith(b"{"):
            message = json.loads(raw)
            raise Refused(str(message.get("reason")))
        payload = dev._verified_grant_payload(raw, gateway)
        if payload.get("type") != "grant" or payload.get("person") != self.did:
            raise WalletError("the grant is not for this wallet")
        if payload.get("username") != self.did:
            raise WalletError("the grant's username is not this wallet's DID")
        password = dev.decrypt_secret(
            epk,
            dev.b64u_decode(payload["epk"], "grant epk"),
            nonce=nonce,
            iv=dev.b64u_decode(payload["iv"], "grant iv"),
            ciphertext=dev.b64u_decode(payload["secret"], "grant secret"),
            did=self.did,
        )
        return Session(
            self.did,
            password,
            int(payload["expires"]),
            str(payload["requests"]),
            str(payload["responses"]),
            list(payload.get("permissions", [])),
        )

    # -- requests ------------------------------------------------------------------

    def connect(self) -> None:
        """Connect with the session's account, subscribed to its responses."""
        if self.session is None:
            raise WalletError("authenticate first")
        s = self.session
        self._link = self._open(
            s.responses, self._answers.put, s.username, s.password, account=True
        )

    def request(self, action: str, **fields: Any) -> dict[str, Any]:
        """Send one request and wait for its answer."""
        if self._link is None or self.session is None:
            raise WalletError("connect first")
        rid = secrets.token_hex(8)
        self._link.publish(self.session.requests, _json({"id": rid, "action": action, **fields}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                answer = json.loads(self._answers.get(timeout=0.1))
            except queue.Empty:
                if self._link.closed.is_set():
                    raise WalletError("the broker closed the connection") from None
                continue
            if answer.get("id") == rid:
                return dict(answer)
        raise TimeoutError(f"no answer to {action} in {self.timeout} s")

    def order(
        self, household: str, *, side: str, wh: int, price: int, interval: int, seq: int = 0
    ) -> dict[str, Any]:
        now = int(time.time() * 1000)
        token = make_order(
            self.identity,
            household=household,
            seq=seq or now,
            side=side,
            interval=interval,
            wh=wh,
            price=price,
            ts_ms=now,
        )
        return self.request("order", order=token)

    @property
    def connected(self) -> bool:
        return self._link is not None and not self._link.closed.is_set()

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None

    # -- internals -------------------------------------------------------------------

    def _open(
        self, topic: str, on_message: Any, username: Any, password: Any, account: bool = False
    ) -> Any:
        link = dev._Link(
            self.account_host if account else self.host,
            self.account_port if account else self.port,
            # the broker's prefix and 128 random bits: an id nobody can guess and take over
            client_id=f"{dev.CLIENT_ID_PREFIX}wallet-{secrets.token_hex(16)}",
            subscribe=topic,
            on_message=on_message,
            username=username,
            password=password,
            tls=self._tls(account),
        )
        link.open(self.timeout)
        return link

    def _tls(self, account: bool) -> Any:
        """The TLS context for the authentication (or the ``account``) connection; None: plain."""
        if self.trust is None or not (self._account_tls if account else self._auth_tls):
            return None
        if account:
            return self.trust.context(self.account_host, self.account_port, self.timeout)
        return self.trust.context(self.host, self.port, self.timeout)

    # The reply topic is public: anyone who reads the challenge can send a presentation of
    # his own in this wallet's name and reply token, and the gateway's refusal of it arrives
    # here. As the device simulator does (device.py), a refusal ends the attempt only when
    # this wallet's own message must have caused it: before the presentation, a refusal of
    # the hello; after it, a refusal that no grant follows within REFUSAL_GRACE seconds.

    def _challenge(self, inbox: queue.Queue[bytes]) -> dict[str, Any]:
        """The challenge; refusals of someone else's presentation are passed over."""
        deadline, refused = time.monotonic() + self.timeout, None
        while True:
            try:
                message = json.loads(inbox.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                if refused is not None:
                    raise Refused(refused) from None
                raise TimeoutError(f"no challenge from the gateway in {self.timeout} s") from None
            if message.get("type") == "refused":
                refused = str(message.get("reason"))
                if refused in HELLO_REFUSALS:
                    raise Refused(refused)
                continue
            if message.get("type") != "challenge":
                raise WalletError(f"expected a challenge, got {message.get('type')!r}")
            return dict(message)

    def _answer(self, inbox: queue.Queue[bytes]) -> bytes:
        """The grant (a compact JWS) or, if none follows it in time, the first refusal."""
        deadline, refused = time.monotonic() + self.timeout, None
        while True:
            try:
                raw = inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                if refused is not None:
                    return refused
                raise TimeoutError(f"no grant from the gateway in {self.timeout} s") from None
            if not raw.lstrip().startswith(b"{"):
                return raw
            if refused is None:
                refused = raw
                deadline = min(deadline, time.monotonic() + self.refusal_grace)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--broker",
        default="localhost:1883",
        help="where to authenticate: HOST:PORT (TLS on 8883 and 8884), mqtts://HOST[:PORT] "
        "(TLS) or mqtt://HOST[:PORT]; plain only to this machine [default: localhost:1883]",
    )
    parser.add_argument(
        "--account-broker",
        help="the accounts listener, for requests, as --broker (e.g. mqtts://HOST:8883) "
        "[default: --broker]",
    )
    parser.add_argument("--tls-ca", type=Path, help="the broker's CA certificate (PEM): TLS")
    parser.add_argument("--tls-pin", help="or the SHA-256 fingerprint of that certificate: TLS")
    parser.add_argument("--key", type=Path, required=True, help="the wallet's key (made if new)")
    parser.add_argument("--gateway", required=True, help="the gateway's DID (pinned)")
    parser.add_argument("--prefix", default="didgw")
    parser.add_argument("--credential", type=Path, action="append", default=[])
    parser.add_argument("--print-did", action="store_true", help="print the wallet's DID, exit")
    parser.add_argument("--disclose", action="append", default=[], help="a claim to show")
    sub = parser.add_subparsers(dest="action")
    reg = sub.add_parser("register", help="register a device (facility manager)")
    reg.add_argument("did")
    reg.add_argument("--name", required=True)
    reg.add_argument("--kind", default="sensor")
    for name in ("suspend", "revoke"):
        p = sub.add_parser(name, help=f"{name} a device (facility manager)")
        p.add_argument("did")
        p.add_argument("--reason", required=True)
    order = sub.add_parser("order", help="an order for your household")
    order.add_argument("--household", required=True)
    order.add_argument("--side", choices=("buy", "sell"), required=True)
    order.add_argument("--wh", type=int, required=True)
    order.add_argument("--price", type=int, required=True)
    order.add_argument("--interval", type=int, required=True, help="its start, Unix ms")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        trust = dev.Trust(args.tls_ca, args.tls_pin) if args.tls_ca or args.tls_pin else None
        wallet = Wallet(
            args.broker,
            key_path=args.key,
            gateway_did=args.gateway,
            prefix=args.prefix,
            account_broker=args.account_broker,
            tls=trust,
        )
    except (WalletError, dev.DeviceError) as exc:
        print(f"wallet: {exc}", file=sys.stderr)
        return 1
    if args.print_did:
        print(wallet.did)
        return 0
    if not args.credential or args.action is None:
        parser.error("give --credential FILE and an action (register, suspend, revoke, order)")
    try:
        creds = [p.read_text().strip() for p in args.credential]
        session = wallet.authenticate(creds, args.disclose)
        print(f"authenticated as {wallet.did}: {', '.join(session.permissions)}")
        wallet.connect()
        if args.action == "order":
            answer = wallet.order(
                args.household, side=args.side, wh=args.wh, price=args.price, interval=args.interval
            )
        elif args.action == "register":
            answer = wallet.request("register", did=args.did, name=args.name, kind=args.kind)
        else:
            answer = wallet.request(args.action, did=args.did, reason=args.reason)
    except (WalletError, dev.DeviceError, OSError, TimeoutError) as exc:
        print(f"wallet: {exc}", file=sys.stderr)
        return 1
    finally:
        wallet.close()
    print(json.dumps(answer))
    return 0 if answer.get("status") in ("done", "accepted") else 1


if __name__ == "__main__":
    sys.exit(main())
