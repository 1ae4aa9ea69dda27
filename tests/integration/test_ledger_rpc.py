"""The ledger's JSON-RPC client: what it reads from anvil is what web3.py reads, and a node
that misbehaves gets a clear error, never a hang or a crash.

web3.py is a test dependency only: the gateway speaks JSON-RPC itself
(``gateway/transports/jsonrpc.py``). The misbehaving nodes are real HTTP(S) servers on
loopback, each answering in one wrong way.
"""

from __future__ import annotations

import base64
import http.server
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anvil import Anvil
from pki import Pki, Tarpit, make_pki, server_context
from support import import_keeping_recursion_limit

from gateway.anchor.account import Fees, LedgerAccount
from gateway.anchor.ledger import LedgerError, LedgerUnavailable
from gateway.identity import keystore
from gateway.transports.evm import EvmLedger, read_ledger_view
from gateway.transports.jsonrpc import JsonRpc

pytestmark = pytest.mark.integration
Web3 = import_keeping_recursion_limit("web3").Web3


# -- against anvil, beside web3.py -------------------------------------------------------------


def test_our_client_reads_from_anvil_what_web3_reads(anvil: Anvil) -> None:
    account = LedgerAccount(keystore.generate_ledger_key())
    anvil.fund(account.address, 10**18)
    ours = EvmLedger(anvil.url, timeout=5)
    w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 5}))

    fees = Fees.for_base_fee(ours.base_fee(), priority_fee=10**9, cap=10**12)
    signed = account.sign_anchor(b"DIDGW\x01test", chain_id=ours.chain_id(), nonce=0, fees=fees)
    ours.send_raw(signed.raw)
    ours.send_raw(signed.raw)  # the node has it already: not an error

    assert ours.chain_id() == w3.eth.chain_id == anvil.chain_id
    assert ours.head() == w3.eth.block_number >= 1
    assert ours.base_fee() == w3.eth.get_block("latest")["baseFeePerGas"]
    assert ours.balance(account.address) == w3.eth.get_balance(account.address) < 10**18
    for pending, block in ((False, "latest"), (True, "pending")):
        assert ours.nonce(account.address, pending=pending) == 1
        assert w3.eth.get_transaction_count(account.address, block) == 1
    theirs = w3.eth.get_transaction_receipt(signed.tx_hash)
    receipt = ours.receipt(signed.tx_hash)
    assert receipt is not None
    assert (receipt.block_number, receipt.block_hash, receipt.status) == (
        theirs["blockNumber"], bytes(theirs["blockHash"]), theirs["status"] == 1
    )  # fmt: skip
    assert ours.known(signed.tx_hash)
    tx = w3.eth.get_transaction(signed.tx_hash)
    view = read_ledger_view(anvil.url, signed.tx_hash)
    assert view is not None
    assert view.sender.lower() == tx["from"].lower() == account.address.lower()
    assert view.recipient is not None and view.recipient.lower() == tx["to"].lower()
    assert (view.value, view.data) == (tx["value"], bytes(tx["input"])) == (0, b"DIDGW\x01test")
    assert (view.block_number, view.block_hash) == (tx["blockNumber"], bytes(tx["blockHash"]))

    unknown = bytes(32)
    assert ours.receipt(unknown) is None and not ours.known(unknown)
    assert read_ledger_view(anvil.url, unknown) is None


def test_a_refused_transaction_says_what_the_node_said(anvil: Anvil) -> None:
    account = LedgerAccount(keystore.generate_ledger_key())  # not funded
    ours = EvmLedger(anvil.url, timeout=5)
    fees = Fees.for_base_fee(ours.base_fee(), priority_fee=10**9, cap=10**12)
    signed = account.sign_anchor(b"x", chain_id=ours.chain_id(), nonce=0, fees=fees)
    with pytest.raises(LedgerError, match=r"refused eth_sendRawTransaction: .*funds") as refused:
        ours.send_raw(signed.raw)
    assert not isinstance(refused.value, LedgerUnavailable)


# -- nodes that misbehave ------------------------------------------------------------------------


class Node(http.server.BaseHTTPRequestHandler):
    """Answers a JSON-RPC request in the way its path names."""

    protocol_version = "HTTP/1.1"
    hits: list[str]

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.hits.append(self.path)
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer: dict[str, Any] = {"jsonrpc": "2.0", "id": request["id"]}
        path = self.path.strip("/")
        if path == "v3/KEY-secret":  # a provider's URL: the key in the path, or basic auth
            wanted = "Basic " + base64.b64encode(b"user:pa ss").decode()
            if self.headers.get("Authorization") not in (None, wanted):
                self._send(401, b"who are you")
                return
            self._send(200, json.dumps({**answer, "result": "0x7a69"}).encode())
        elif path == "ok":
            self._send(200, json.dumps({**answer, "result": "0x7a69"}).encode())
        elif path in ("refuse", "already", "refuse-500"):
            message = "already known" if path == "already" else "insufficient funds for gas"
            body = json.dumps({**answer, "error": {"code": -32000, "message": message}})
            self._send(500 if path == "refuse-500" else 200, body.encode())
        elif path.isdigit():
            self._send(int(path), b"<html>no</html>", {"Content-Type": "text/html"})
        elif path == "redirect":
            self._send(307, b"", {"Location": "/ok"})
        elif path == "html":
            self._send(200, b"<html>a login page</html>")
        elif path == "deep":
            self._send(200, b"[" * 200_000)
        elif path == "other-id":
            self._send(200, json.dumps({**answer, "id": -1, "result": "0x1"}).encode())
        elif path == "not-hex":
            self._send(200, json.dumps({**answer, "result": "31337"}).encode())
        elif path == "endless":  # no Content-Length: the body ends when the connection does
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b'{"jsonrpc": "2.0", "result": "' + b"0" * 5000 + b'"}')
        elif path == "huge":  # says how much is coming: refused before reading it
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            self.wfile.write(b"{")


class QuietServer(http.server.ThreadingHTTPServer):
    """A node whose client hangs up mid-answer (the time-out and size tests) is expected:
    no traceback on the test run's output."""

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@pytest.fixture
def node() -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []
    handler = type("Handler", (Node,), {"hits": hits})
    server = QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("path", "unavailable", "message"),
    [
        (
            "refuse",
            False,
            r"refused eth_chainId: insufficient funds for gas \(JSON-RPC error -32000\)",
        ),
        ("refuse-500", False, "refused eth_chainId: insufficient funds"),
        ("500", True, "answered eth_chainId with HTTP 500"),
        ("502", True, "HTTP 502"),
        ("429", True, "HTTP 429"),
        ("404", False, "answered eth_chainId with HTTP 404"),
        ("401", False, "HTTP 401"),
        ("redirect", False, "HTTP 307 .*redirects are not followed"),
        ("html", False, "answered eth_chainId with something that is not JSON"),
        ("deep", False, "something that is not JSON"),
        ("other-id", False, "not a JSON-RPC 2.0 response to it"),
        ("not-hex", False, r"gave eth_chainId as '31337', not a hex quantity"),
        ("huge", False, "more than 4194304 bytes"),
    ],
)
def test_each_wrong_answer_is_a_clear_error(
    node: tuple[str, list[str]], path: str, unavailable: bool, message: str
) -> None:
    url, hits = node
    # Python's own limit: a module that raised it (py_ecc does, under web3 and eth-account)
    # would turn the 200,000-deep answer into a crash of the whole test run.
    assert sys.getrecursionlimit() == 1000, "import web3/eth_account via support.py"
    with pytest.raises(LedgerError, match=message) as raised:
        EvmLedger(f"{url}/{path}", timeout=5).chain_id()
    assert isinstance(raised.value, LedgerUnavailable) == unavailable
    assert url in str(raised.value) and f"/{path}" not in str(raised.value)  # no path: keys
    assert hits == [f"/{path}"]  # one request; a redirect is not followed
    assert sys.getrecursionlimit() == 1000


def test_an_answer_without_length_is_read_up_to_the_cap_only(node: tuple[str, list[str]]) -> None:
    url, _ = node
    with pytest.raises(LedgerError, match="with more than 1000 bytes; not reading further"):
        JsonRpc(f"{url}/endless", timeout=5, max_answer=1000).call("eth_chainId")
    assert JsonRpc(f"{url}/ok", timeout=5, max_answer=1000).call("eth_chainId") == "0x7a69"


def test_already_known_transactions_are_not_errors(node: tuple[str, list[str]]) -> None:
    url, _ = node
    EvmLedger(f"{url}/already", timeout=5).send_raw(b"\x02\xc0")
    with pytest.raises(LedgerError, match="insufficient funds"):
        EvmLedger(f"{url}/refuse", timeout=5).send_raw(b"\x02\xc0")


def test_credentials_in_the_url_are_used_and_never_shown(node: tuple[str, list[str]]) -> None:
    url, _ = node
    host = url.removeprefix("http://")
    assert EvmLedger(f"http://user:pa%20ss@{host}/v3/KEY-secret", timeout=5).chain_id() == 31337
    with pytest.raises(LedgerError) as refused:
        EvmLedger(f"http://user:wrong@{host}/v3/KEY-secret", timeout=5).chain_id()
    assert str(refused.value) == (
        f"the ledger at http://{host} answered eth_chainId with HTTP 401 Unauthorized"
    )
    assert "secret" not in repr(EvmLedger(f"http://u:secret@{host}/KEY-secret", timeout=5))


def test_no_node_and_no_http_url() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(LedgerUnavailable, match=f"cannot reach the ledger at .*:{port}: .*refused"):
        EvmLedger(f"http://127.0.0.1:{port}", timeout=2).head()
    for url in ("file:///etc/passwd", "ftp://example.com/", "http://"):
        with pytest.raises(LedgerError, match="must be an http:// or https:// URL"):
            EvmLedger(url, timeout=2)


# -- HTTPS ----------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def https_node(cert: Path, key: Path) -> tuple[str, QuietServer]:
    handler = type("Handler", (Node,), {"hits": []})
    server = QuietServer(("127.0.0.1", 0), handler)
    server.socket = server_context(cert, key).wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"https://localhost:{server.server_address[1]}/ok", server


def test_https_verifies_the_nodes_certificate(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    # The system's authorities, as the default context loads them, are here the test CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    good, good_server = https_node(pki.server_cert, pki.server_key)
    rogue, rogue_server = https_node(pki.rogue_cert, pki.rogue_key)
    try:
        assert EvmLedger(good, timeout=5).chain_id() == 31337
        with pytest.raises(LedgerUnavailable, match="certificate verify failed"):
            EvmLedger(rogue, timeout=5).chain_id()
    finally:
        for server in (good_server, rogue_server):
            server.shutdown()
            server.server_close()


def test_a_node_that_answers_a_byte_at_a_time_is_given_up_on(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each byte comes well within the time-out; the whole answer would take 20 s."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    tarpit = Tarpit(pki, b'{"jsonrpc": "2.0", "id": 1, "result": "0x1"}' + b" " * 55, interval=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable, match="no answer within 1 s"):
            EvmLedger(f"https://localhost:{tarpit.port}", timeout=1).head()
        assert time.monotonic() - started < 10
    finally:
        tarpit.stop()
