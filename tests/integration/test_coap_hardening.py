"""What an anonymous peer on the network can do to ``didgw run``'s CoAP server, tried for real.

Each test runs the real gateway (``[coap] enabled``, on a free loopback port) and
sends hand-made datagrams from sockets on several loopback addresses (each one a
"peer" to the per-peer limits): block-wise uploads that never finish, blocks out
of order, blocks past the rate limit, and the smallest request that makes the
gateway answer with its largest unauthenticated response.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from coap_gateway import CoapGateway, write_config
from support import Run, free_udp_port, wait_until

from gateway.ops.broker import free_port

pytestmark = pytest.mark.integration

UNLIMITED = {"peer_rate": 1000000, "peer_burst": 1000000}
READINGS = ("r",)
BLOCK = b"\x00" * 64  # one 64-byte block (SZX 2)


@pytest.fixture
def start(didgw: Run, tmp_path: Path) -> Iterator[Any]:
    """``start(**coap_keys)``: a gateway serving CoAP, metrics on a free port; killed after."""
    running: list[CoapGateway] = []

    def launch(**coap: Any) -> CoapGateway:
        state = tmp_path / "state"
        if not state.exists():
            assert didgw("init", "--state-dir", str(state)).returncode == 0
        port = free_udp_port()
        metrics = f"[metrics]\nport = {free_port()}\n"
        config = write_config(tmp_path / "gateway.toml", port, extra=metrics, **coap)
        gateway = CoapGateway(state, config, port)
        gateway.start()
        running.append(gateway)
        return gateway

    yield launch
    for gateway in running:
        gateway.kill()


def metric(gateway: CoapGateway, name: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    port = int(gateway.config.read_text().split("[metrics]\nport = ")[1].split()[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None


def test_every_block_counts_against_the_peer_rate_limit(start: Any) -> None:
    """A block-wise upload of 20 blocks from a peer allowed a burst of 5: blocks 6 to 20 are
    refused 4.29 like any request (before: only block 0 was counted, all 20 went through)."""
    gateway = start(peer_rate=0.001, peer_burst=5)
    peer = gateway.peer()
    codes = [peer.send(READINGS, payload=BLOCK, block1=(n, True, 2))[0] for n in range(20)]
    print("20 blocks, burst 5:", dict(Counter(codes)))
    assert codes == ["2.31"] * 5 + ["4.29"] * 15
    gateway.stop()


def test_out_of_order_and_unexpected_blocks_are_request_entity_incomplete(start: Any) -> None:
    """50 uploads that skip a block, and blocks of uploads that never began: each is answered
    4.08 Request Entity Incomplete (RFC 7959 §2.9.2), nothing is logged as a crash, and the
    gateway goes on serving (before: 50 times 5.00 Internal Server Error, 50 tracebacks)."""
    gateway = start(**UNLIMITED)
    peer, stranger = gateway.peer(), gateway.peer("127.0.0.2")
    answers: list[tuple[str, bytes]] = []
    for _ in range(50):
        assert peer.send(READINGS, payload=BLOCK, block1=(0, True, 2))[0] == "2.31"
        answers.append(peer.send(READINGS, payload=BLOCK, block1=(2, True, 2))[:2])  # 1 skipped
    for n in (1, 7, 200):  # no block 0 from this peer: nothing to continue
        answers.append(stranger.send(READINGS, payload=BLOCK, block1=(n, False, 2))[:2])
    print("out of order:", dict(Counter(answers)))
    assert set(answers) == {("4.08", b"incomplete")}
    assert peer.send((".well-known", "core"), method="GET")[0] == "2.05"  # still serving
    assert gateway.stop() == 0
    assert "Traceback" not in gateway.output
    assert " ERROR " not in gateway.output, gateway.output


def test_partial_uploads_are_bounded_per_peer_and_in_total(start: Any) -> None:
    """One peer opens 8 block-wise uploads, then 200 peers open 4 each (800), and each goes
    on to send 14 KiB of its 16 KiB in 1 KiB blocks and never finishes: the gateway holds at
    most 4 uploads per peer address (a peer's fifth replaces its oldest) and 64 in all (the
    defaults); uploads past the total are refused 5.03 with Max-Age, and what it holds is
    what its metric says (before: all 808 were kept)."""
    gateway = start(**UNLIMITED)
    block = b"\x01" * 1024
    before_kb = gateway.memory_kb()
    greedy = [gateway.peer("127.0.9.9") for _ in range(8)]
    first = [p.send(READINGS, payload=block, block1=(0, True, 6))[0] for p in greedy]
    flood = [gateway.peer(f"127.0.1.{2 + i // 4}") for i in range(800)]
    answers = [p.send(READINGS, payload=block, block1=(0, True, 6))[:3] for p in flood]
    # Which uploads the gateway still holds: those whose next blocks it takes.
    greedy_kept = [p.send(READINGS, payload=block, block1=(1, True, 6))[0] for p in greedy]
    flood_kept = []
    for p in flood:
        codes = [p.send(READINGS, payload=block, block1=(1, True, 6))[0]]
        for n in range(2, 14):
            if codes[-1] != "2.31":
                break
            codes.append(p.send(READINGS, payload=block, block1=(n, True, 6))[0])
        flood_kept.append(codes[-1])
    after_kb = gateway.memory_kb()
    held = metric(gateway, "didgw_coap_partial_uploads")
    print(
        f"RSS {before_kb} kB before, {after_kb} kB after 808 partial uploads; held {held}; "
        f"first blocks {dict(Counter(first + [a[0] for a in answers]))}; "
        f"continued: one peer's {greedy_kept.count('2.31')} of 8, "
        f"the flood's {flood_kept.count('2.31')} of 800"
    )
    assert greedy_kept == ["4.08"] * 4 + ["2.31"] * 4  # that peer's newest four
    assert flood_kept.count("2.31") == 60  # what was left of the 64
    assert set(flood_kept) == {"2.31", "4.08"}
    assert held == 64
    refused = [a for a in answers if a[0] != "2.31"]
    assert len(refused) == 740
    assert {(code, payload) for code, payload, _ in refused} == {("5.03", b"overloaded")}
    assert all(options.max_age == 2 for _, _, options in refused)
    gateway.stop()


def test_partial_uploads_expire_and_are_released(start: Any) -> None:
    """Uploads whose next block does not come within partial_upload_seconds are dropped: the
    metric falls back to 0 and a late block is 4.08 (the device starts again)."""
    gateway = start(partial_upload_seconds=1, **UNLIMITED)
    peers = [gateway.peer(f"127.0.3.{i + 2}") for i in range(10)]
    for p in peers:
        assert p.send(READINGS, payload=BLOCK, block1=(0, True, 2))[0] == "2.31"
    assert metric(gateway, "didgw_coap_partial_uploads") == 10
    wait_until(lambda: metric(gateway, "didgw_coap_partial_uploads") == 0, "the uploads to expire")
    assert peers[0].send(READINGS, payload=BLOCK, block1=(1, True, 2))[:2] == (
        "4.08",
        b"incomplete",
    )
    gateway.stop()


def _minimal_get(path: tuple[str, ...], mid: int, *, non: bool = False) -> bytes:
    """The smallest request an attacker can send: no token, one Uri-Path option per segment."""
    from aiocoap import CON, GET, NON, Message

    message = Message(code=GET, uri_path=path)
    message.mtype, message.mid, message.token = (NON if non else CON), mid, b""
    return message.encode()


def test_no_unauthenticated_answer_is_more_than_three_times_its_request(start: Any) -> None:
    """GET /status-list and GET /.well-known/core, the smallest requests that name them: each
    answer (and each block of the list, fetched block by block) is at most three times the
    size of the request that caused it, QUIC's factor for an unverified address (before: 1,030
    bytes of list for a 16-byte request, 64 times)."""
    gateway = start()
    peer = gateway.peer()
    worst: dict[str, float] = {}
    for i, path in enumerate((("status-list",), (".well-known", "core"))):
        for non in (False, True):
            request = _minimal_get(path, 1000 + 2 * i + non, non=non)
            code, _, _, size = peer.request(request)
            assert code == "2.05"
            worst["/".join(path)] = max(worst.get("/".join(path), 0), size / len(request))
    print("largest answer / request:", {k: round(v, 2) for k, v in worst.items()})
    assert max(worst.values()) <= 3.0, worst
    body, etags, n, szx = b"", set(), 0, 6  # first ask for 1 KiB blocks, as a client may
    while True:  # then at the size the server chose (RFC 7959 §2.4)
        code, payload, options, size = peer.send(
            ("status-list",), method="GET", block2=(n, False, szx)
        )
        assert code == "2.05"
        worst["status-list, block by block"] = max(
            worst.get("status-list, block by block", 0), size / peer.sent
        )
        block = options.block2
        assert block is not None and block.start == len(body)
        body += payload
        etags.add(options.etag)
        if not block.more:
            break
        n, szx = block.block_number + 1, block.size_exponent
    print("largest block / request:", round(worst["status-list, block by block"], 2))
    assert worst["status-list, block by block"] <= 3.0
    assert len(etags) == 1  # one representation across the blocks
    credential = json.loads(body)
    assert "BitstringStatusListCredential" in credential["type"]
    gateway.stop()


def test_a_constrained_client_still_reads_the_whole_list(start: Any, tmp_path: Path) -> None:
    """libcoap's client and aiocoap (the simulator's stack) follow the blocks on their own:
    both get the same signed list, byte for byte."""
    import asyncio

    from aiocoap import GET, Context, Message

    gateway = start()
    libcoap = subprocess.run(
        ["coap-client-notls", "-B", "10", "-m", "get", f"{gateway.uri}/status-list"],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout

    async def fetch() -> bytes:
        context = await Context.create_client_context()
        try:
            request = Message(code=GET, uri=f"{gateway.uri}/status-list")
            return bytes((await context.request(request).response).payload)
        finally:
            await context.shutdown()

    assert asyncio.run(fetch()) + b"\n" == libcoap  # (the client prints a newline after it)
    assert json.loads(libcoap)["proof"]["cryptosuite"] == "eddsa-jcs-2022"
    gateway.stop()


def test_didgw_run_logs_a_server_off_loopback_at_warning(didgw: Run, tmp_path: Path) -> None:
    """The metrics on every interface (briefly, on a free port): ``didgw run`` says so at
    WARNING when it starts, naming the key and why (before: only "metrics on
    http://0.0.0.0:…" at INFO)."""
    state = tmp_path / "state"
    assert didgw("init", "--state-dir", str(state)).returncode == 0
    port = free_udp_port()
    metrics = f'[metrics]\nhost = "0.0.0.0"\nport = {free_port()}\n'
    gateway = CoapGateway(state, write_config(tmp_path / "g.toml", port, extra=metrics), port)
    gateway.start()
    try:
        assert gateway.stop() == 0
    finally:
        gateway.kill()
    warnings = [line for line in gateway.output.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, gateway.output
    assert "[metrics] host: the metrics are served on every interface" in warnings[0]
