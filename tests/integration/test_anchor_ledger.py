"""Anchors on a real ledger (anvil over HTTP): readings → anchor → receipt → verification.

Also what must survive: tampering with a receipt, the ledger going away under load, the
gateway killed right after sending, a block re-organised away, and bad configuration.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import device as dev
import pytest
from anchoring import Gateway, ledger_address, wait_for, write_config
from anvil import Anvil
from broker import Mosquitto
from support import Run, free_udp_port, sensor

from gateway.anchor.encoding import decode_anchor
from gateway.anchor.verify_receipt import CHECKS, check_receipt
from gateway.transports.evm import read_ledger_view

pytestmark = pytest.mark.integration


@pytest.fixture
def state(didgw: Run, tmp_path: Path) -> tuple[Path, str, str]:
    """An initialised gateway: (state dir, gateway DID, ledger address)."""
    path = tmp_path / "state"
    out = didgw("init", "--state-dir", str(path))
    assert out.returncode == 0, out.stderr
    return path, out.stdout.split("Gateway DID: ")[1].split()[0], ledger_address(out.stdout)


@pytest.fixture
def device_factory(didgw: Run, mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Any]:
    made: list[Any] = []

    def make(state: Path, gateway_did: str, name: str = "meter") -> Any:
        device = dev.Device(
            f"{mosquitto.host}:{mosquitto.port}",
            account_broker=f"{mosquitto.host}:{mosquitto.accounts_port}",
            key_path=tmp_path / f"{name}.pem",
            state_dir=tmp_path / f"{name}-state",
            prefix=mosquitto.prefix,
            gateway_did=gateway_did,
        )
        registered = didgw(
            "device", "register", device.did, "--name", name, "--kind", "meter",
            "--state-dir", str(state),
        )  # fmt: skip
        assert registered.returncode == 0, registered.stderr
        made.append(device)
        return device

    yield make
    for device in made:
        device.stop()


def send(device: Any, count: int, start: int = 0) -> None:
    for i in range(count):
        device.publish_reading("energy", {"import_kwh": {"value": start + i, "unit": "kWh"}})


def on_chain_sizes(anvil: Anvil, address: str, gateway: Gateway) -> list[int]:
    """The tree sizes the ledger holds anchors of, one per anchor transaction."""
    sizes = []
    for anchor in gateway.anchors():
        if anchor.tx_hash is None:
            continue
        tx = anvil.rpc("eth_getTransactionByHash", "0x" + anchor.tx_hash.hex())
        if tx is not None and tx["blockNumber"] is not None:
            assert tx["from"].lower() == address.lower()
            sizes.append(decode_anchor(bytes.fromhex(tx["input"][2:])).size)
    return sizes


# -- the happy path, and tampering ---------------------------------------------------------


def _other_end(text: str) -> str:
    """``text`` with its last two characters changed (never to what they already were)."""
    return text[:-2] + ("BB" if text.endswith("AA") else "AA")


TAMPER: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("version", lambda r: r.update(version=2), "receipt_format"),
    ("entry.ts", lambda r: r["entry"].update(ts=r["entry"]["ts"] + 1), "inclusion_proof"),
    ("entry.kind", lambda r: r["entry"].update(kind="note"), "inclusion_proof"),
    ("entry.actor", lambda r: r["entry"].update(actor=r["gateway"]), "device_signature"),
    ("entry.commitment", lambda r: r["entry"].update(commitment="00" * 32), "payload_commitment"),
    ("entry.salt", lambda r: r["entry"].update(salt="00" * 16), "payload_commitment"),
    ("payload", lambda r: r["payload"].update(data=_other_end(r["payload"]["data"])),
     "device_signature"),
    ("payload value", lambda r: r["payload"].update(data=_other_end(r["payload"]["data"])),
     "payload_commitment"),
    ("inclusion.path", lambda r: r["inclusion"]["path"].__setitem__(0, "11" * 32),
     "inclusion_proof"),
    ("inclusion.tree_size", lambda r: r["inclusion"].update(tree_size=1), "inclusion_proof"),
    ("checkpoint.time", lambda r: r.update(checkpoint=r["checkpoint"].replace("time ", "time 1")),
     "checkpoint_signature"),
    ("checkpoint.signature", lambda r: r.update(checkpoint=r["checkpoint"][:-6] + "AAAA=\n"),
     "checkpoint_signature"),
    ("binding", lambda r: r.update(binding=r["binding"][:-4] + "AAAA"), "ledger_binding"),
    ("gateway", lambda r: r.update(gateway=r["entry"]["actor"]), "checkpoint_signature"),
    ("ledger.chain_id", lambda r: r["ledger"].update(chain_id=1), "ledger_transaction"),
    ("ledger.tx_hash", lambda r: r["ledger"].update(tx_hash="0x" + "22" * 32),
     "ledger_transaction"),
    ("ledger.block_number", lambda r: r["ledger"].update(block_number=0), "ledger_transaction"),
    ("ledger.block_hash", lambda r: r["ledger"].update(block_hash="0x" + "33" * 32),
     "ledger_transaction"),
    ("ledger.address", lambda r: r["ledger"].update(address="0x" + "44" * 20), "ledger_binding"),
]  # fmt: skip


def test_readings_anchored_receipt_verifies_and_tampering_is_caught(  # noqa: PLR0917
    didgw: Run,
    anvil: Anvil,
    mosquitto: Mosquitto,
    device_factory: Any,
    state: tuple[Path, str, str],
    tmp_path: Path,
) -> None:
    path, gateway_did, address = state
    anvil.fund(address)
    gateway = Gateway(path, write_config(tmp_path / "gw.toml", anvil, mosquitto), mosquitto)
    gateway.start()
    device = device_factory(path, gateway_did)
    try:
        device.start(timeout=15)
        send(device, 20)
        assert device.wait_acked(timeout=20), device.stats
        size = gateway.record_size()
        assert wait_for(lambda: gateway.anchored_size() >= size), gateway.output()
    finally:
        assert gateway.stop() == 0, gateway.output()
    reading = [a["entry"] for a in device.acks if a["status"] == "accepted"][-1]

    out = tmp_path / "receipt.json"
    made = didgw("receipt", str(reading), "-o", str(out), "--state-dir", str(path))
    assert made.returncode == 0, made.stderr
    checked = didgw("verify-receipt", str(out), "--rpc", anvil.url)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for name in CHECKS:
        assert f"pass  {name}:" in checked.stdout, checked.stdout
    assert "receipt verifies" in checked.stdout
    again = didgw("receipt", str(reading), "-o", str(out), "--state-dir", str(path))
    assert again.returncode == 1 and "already exists" in again.stderr  # never overwritten

    receipt = json.loads(out.read_text())
    assert receipt["entry"]["actor"] == device.did
    for name, tamper, check in TAMPER:
        changed = copy.deepcopy(receipt)
        tamper(changed)
        tx_hash = bytes.fromhex(changed["ledger"]["tx_hash"][2:])
        report = check_receipt(changed, read_ledger_view(anvil.url, tx_hash))
        assert check in report.failed(), (name, report.checks)

    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps({**receipt, "entry": {**receipt["entry"], "ts": 1}}))
    refused = didgw("verify-receipt", str(tampered), "--rpc", anvil.url)
    assert refused.returncode == 1
    assert "FAIL  inclusion_proof:" in refused.stdout


def test_a_coap_readings_receipt_checks_its_cose_signature(
    didgw: Run, anvil: Anvil, state: tuple[Path, str, str], tmp_path: Path
) -> None:
    path, _, address = state
    anvil.fund(address)
    port = free_udp_port()
    gateway = Gateway(path, write_config(tmp_path / "gw.toml", anvil, coap_port=port))
    dev = tmp_path / "coap-sensor"
    did = sensor("--print-did", state=dev).stdout.strip()
    registered = didgw(
        "device", "register", did, "--name", "coap", "--kind", "sensor", "--state-dir", str(path)
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    gateway.start()
    try:
        sent = sensor("--server", f"coap://127.0.0.1:{port}", "--count", "2", state=dev)
        assert sent.returncode == 0 and "seq 2: accepted" in sent.stdout, sent.stdout + sent.stderr
        size = gateway.record_size()
        assert wait_for(lambda: gateway.anchored_size() >= size), gateway.output()
    finally:
        assert gateway.stop() == 0, gateway.output()
    out = tmp_path / "receipt.json"
    made = didgw("receipt", str(size - 1), "-o", str(out), "--state-dir", str(path))
    assert made.returncode == 0, made.stderr
    assert json.loads(out.read_text())["payload"]["encoding"] == "base64"  # CBOR, not text
    checked = didgw("verify-receipt", str(out), "--rpc", anvil.url)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"pass  device_signature: COSE_Sign1 signed by {did}#" in checked.stdout


# -- offline first ------------------------------------------------------------------------


def test_ledger_down_under_load_readings_flow_then_anchors_catch_up_once(
    anvil: Anvil,
    mosquitto: Mosquitto,
    device_factory: Any,
    state: tuple[Path, str, str],
    tmp_path: Path,
) -> None:
    path, gateway_did, address = state
    anvil.fund(address)
    gateway = Gateway(path, write_config(tmp_path / "gw.toml", anvil, mosquitto), mosquitto)
    gateway.start()
    device = device_factory(path, gateway_did)
    stop = threading.Event()
    sent = [0]

    def load() -> None:  # about 100 readings/s until told to stop
        while not stop.is_set():
            send(device, 5, start=sent[0])
            sent[0] += 5
            time.sleep(0.05)

    try:
        device.start(timeout=15)
        pump = threading.Thread(target=load, daemon=True)
        pump.start()
        assert wait_for(lambda: gateway.anchored_size() > 0), gateway.output()
        anvil.stop()
        down_at = gateway.record_size()
        # Readings keep being accepted and checkpoints keep being queued while it is down.
        assert wait_for(lambda: gateway.record_size() > down_at + 200, 20)
        assert wait_for(lambda: sum(a.state == "queued" for a in gateway.anchors()) >= 3, 10)
        assert gateway.anchored_size() <= down_at
        anvil.start()
        time.sleep(1)
        stop.set()
        pump.join()
        assert device.wait_acked(timeout=30), device.stats
        assert device.stats["accepted"] == sent[0]
        size = gateway.record_size()
        assert wait_for(lambda: gateway.anchored_size() >= size, 30), gateway.output()
    finally:
        stop.set()
        assert gateway.stop() == 0, gateway.output()
    anchors = gateway.anchors()
    confirmed = [a for a in anchors if a.state == "confirmed"]
    superseded = [a for a in anchors if a.state == "superseded"]
    assert superseded, "the backlog was caught up with one anchor covering the older checkpoints"
    by_id = {a.id: a for a in anchors}
    for old in superseded:
        cover = by_id[old.covered_by or -1]
        assert cover.state == "confirmed" and cover.size > old.size
    # Each checkpoint anchored once: one transaction per confirmed anchor, nothing else.
    sizes = on_chain_sizes(anvil, address, gateway)
    assert sorted(sizes) == sorted(a.size for a in confirmed)
    assert len(set(sizes)) == len(sizes)
    assert anvil.transactions_from(address) == len(confirmed)
    assert confirmed[-1].size == gateway.record_size()


# -- crashes and dropped transactions ----------------------------------------------------------


def note(didgw: Run, path: Path, text: str) -> None:
    assert didgw("chain", "note", text, "--state-dir", str(path)).returncode == 0


def test_killed_right_after_sending_no_duplicate_no_gap(
    didgw: Run, state: tuple[Path, str, str], tmp_path: Path
) -> None:
    # A ledger that does not mine on its own: the gateway's transaction stays in the pool,
    # so the gateway can be killed (SIGKILL) for real between sending and seeing a receipt.
    anvil = Anvil(tmp_path / "anvil", no_mining=True)
    anvil.start()
    try:
        path, _, address = state
        anvil.fund(address)
        gateway = Gateway(path, write_config(tmp_path / "gw.toml", anvil))
        note(didgw, path, "first")
        gateway.start()

        def sent() -> Any:
            flight = [a for a in gateway.anchors() if a.state == "sent"]
            if flight and anvil.rpc("eth_getTransactionByHash", "0x" + flight[0].tx_hash.hex()):
                return flight[0]
            return None

        assert wait_for(sent), gateway.output()
        first = sent()
        gateway.kill()
        anvil.mine()  # the transaction is included while the gateway is dead
        gateway.start()
        assert wait_for(lambda: gateway.anchored_size() == 1), gateway.output()
        [done] = gateway.anchors()
        assert done.tx_hash == first.tx_hash and done.sends == 1

        # Again, but this time the ledger restarts and forgets its pool: the transaction
        # is dropped, and the gateway must send the same bytes again.
        note(didgw, path, "second")
        assert wait_for(sent), gateway.output()
        second = sent()
        gateway.kill()
        anvil.restart(no_mining=False)  # state file kept, pool not: mines at once from now on
        gateway.start()
        assert wait_for(lambda: gateway.anchored_size() == 2), gateway.output()
        assert gateway.stop() == 0
        confirmed = [a for a in gateway.anchors() if a.state == "confirmed"]
        assert [a.size for a in confirmed] == [1, 2]
        assert [a.nonce for a in confirmed] == [0, 1]
        assert confirmed[1].tx_hash == second.tx_hash
        assert anvil.transactions_from(address) == 2
        assert sorted(on_chain_sizes(anvil, address, gateway)) == [1, 2]
    finally:
        anvil.stop()


def test_reorged_anchor_is_detected_and_sent_again(
    didgw: Run, anvil: Anvil, state: tuple[Path, str, str], tmp_path: Path
) -> None:
    path, _, address = state
    anvil.fund(address)
    snapshot = anvil.rpc("evm_snapshot")
    gateway = Gateway(path, write_config(tmp_path / "gw.toml", anvil, confirmations=3))
    note(didgw, path, "to be re-orged")
    gateway.start()
    try:
        assert wait_for(lambda: any(a.block_number for a in gateway.anchors())), gateway.output()
        [mined] = gateway.anchors()
        assert mined.state == "sent"  # 1 of 3 confirmations
        anvil.rpc("evm_revert", snapshot)  # the block with the anchor is gone
        anvil.fund(address)  # (the balance went back too)
        assert wait_for(lambda: "unknown to the ledger; re-sending" in gateway.output())
        assert wait_for(lambda: anvil.rpc("eth_getTransactionReceipt", "0x" + mined.tx_hash.hex()))
        anvil.mine(3)
        assert wait_for(lambda: gateway.anchored_size() == 1), gateway.output()
    finally:
        assert gateway.stop() == 0, gateway.output()
    [done] = gateway.anchors()
    block = anvil.rpc("eth_getBlockByNumber", hex(done.block_number), False)
    assert bytes.fromhex(block["hash"][2:]) == done.block_hash
    assert anvil.transactions_from(address) == 1


def test_anchor_priced_out_by_the_base_fee_is_replaced_and_anchored_once(
    didgw: Run, anvil: Anvil, state: tuple[Path, str, str], tmp_path: Path
) -> None:
    path, _, address = state
    anvil.fund(address)
    anvil.rpc("evm_setAutomine", False)  # blocks only when the test mines them
    config = write_config(tmp_path / "gw.toml", anvil)
    gateway = Gateway(path, config)
    note(didgw, path, "anchored in a fee spike")
    gateway.start()
    try:
        assert wait_for(lambda: any(a.tx_hash for a in gateway.anchors())), gateway.output()
        [first] = gateway.anchors()
        assert first.tx_hash is not None
        pending = anvil.rpc("eth_getTransactionByHash", "0x" + first.tx_hash.hex())
        offered = int(pending["maxFeePerGas"], 16)
        # The base fee jumps above what the transaction offers: anvil drops it when it
        # mines the next block, and it could never be mined anyway.
        anvil.rpc("anvil_setNextBlockBaseFeePerGas", hex(offered * 4))
        anvil.mine()
        assert wait_for(lambda: "below the base fee" in gateway.output()), gateway.output()
        [replaced] = gateway.anchors()
        assert replaced.tx_hash != first.tx_hash and replaced.nonce == first.nonce
        again = anvil.rpc("eth_getTransactionByHash", "0x" + replaced.tx_hash.hex())
        assert int(again["maxFeePerGas"], 16) >= offered * 4  # what the base fee now asks
        status = didgw("anchor", "status", "--config", str(config), "--state-dir", str(path))
        tx = "0x" + replaced.tx_hash.hex()
        assert f"in flight:      size 1, tx {tx} (nonce 0), sent 2 time(s)" in status.stdout
        anvil.mine()
        assert wait_for(lambda: gateway.anchored_size() == 1), gateway.output()
    finally:
        assert gateway.stop() == 0, gateway.output()
    [done] = gateway.anchors()
    assert done.tx_hash == replaced.tx_hash and done.sends == 2
    assert anvil.transactions_from(address) == 1  # anchored once
    out = tmp_path / "receipt.json"
    assert didgw("receipt", "0", "-o", str(out), "--state-dir", str(path)).returncode == 0
    checked = didgw("verify-receipt", str(out), "--rpc", anvil.url)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_anchor_reorganised_away_after_confirmation_is_sent_again(
    didgw: Run, anvil: Anvil, state: tuple[Path, str, str], tmp_path: Path
) -> None:
    path, _, address = state
    anvil.fund(address)
    snapshot = anvil.rpc("evm_snapshot")
    gateway = Gateway(path, write_config(tmp_path / "gw.toml", anvil))  # 1 confirmation
    note(didgw, path, "confirmed, then re-orged")
    gateway.start()
    try:
        assert wait_for(lambda: gateway.anchored_size() == 1), gateway.output()
        [confirmed] = gateway.anchors()
        anvil.rpc("evm_revert", snapshot)  # deeper than `confirmations`: the block is gone
        anvil.fund(address)
        assert wait_for(lambda: "took it away; following it again" in gateway.output())
        tx = "0x" + confirmed.tx_hash.hex()
        assert wait_for(lambda: anvil.rpc("eth_getTransactionReceipt", tx))  # sent again
        assert wait_for(lambda: gateway.anchored_size() == 1), gateway.output()
    finally:
        assert gateway.stop() == 0, gateway.output()
    [again] = gateway.anchors()
    assert again.tx_hash == confirmed.tx_hash  # the same transaction, once
    block = anvil.rpc("eth_getBlockByNumber", hex(again.block_number), False)
    assert bytes.fromhex(block["hash"][2:]) == again.block_hash  # where it is now
    assert anvil.transactions_from(address) == 1
    out = tmp_path / "receipt.json"
    assert didgw("receipt", "0", "-o", str(out), "--state-dir", str(path)).returncode == 0
    checked = didgw("verify-receipt", str(out), "--rpc", anvil.url)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- bad configuration ------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["unreachable", "wrong_chain", "unfunded"])
def test_bad_ledger_config_is_reported_and_readings_keep_flowing(  # noqa: PLR0917
    fault: str,
    didgw: Run,
    anvil: Anvil,
    mosquitto: Mosquitto,
    device_factory: Any,
    state: tuple[Path, str, str],
    tmp_path: Path,
) -> None:
    path, gateway_did, address = state
    if fault != "unfunded":
        anvil.fund(address)
    options: dict[str, Any] = {}
    if fault == "unreachable":
        anvil.stop()  # nothing listens on its port any more
        options["rpc_url"] = anvil.url
    if fault == "wrong_chain":
        options["chain_id"] = 1
    config = write_config(tmp_path / "gw.toml", anvil, mosquitto, **options)
    gateway = Gateway(path, config, mosquitto)
    gateway.start()
    device = device_factory(path, gateway_did)
    try:
        device.start(timeout=15)
        send(device, 10)
        assert device.wait_acked(timeout=20), device.stats
        refused = [a for a in device.acks.copy() if a.get("status") != "accepted"]
        assert device.stats["accepted"] == 10, (device.stats, refused)
        expected = {
            "unreachable": "cannot reach the ledger",
            "wrong_chain": "is chain 31337, but [anchor] chain_id is 1",
            "unfunded": "holds 0 wei",
        }[fault]
        assert wait_for(lambda: expected in gateway.output()), gateway.output()
        status = didgw("anchor", "status", "--config", str(config), "--state-dir", str(path))
        assert status.returncode == 1, status.stdout
        assert expected.split(",", maxsplit=1)[0] in status.stdout, status.stdout
        assert gateway.anchored_size() == 0
    finally:
        assert gateway.stop() == 0, gateway.output()


def test_anchoring_without_a_ledger_key_refuses_to_start(
    didgw: Run, state: tuple[Path, str, str], tmp_path: Path
) -> None:
    path, _, _ = state
    (path / "keys" / "ledger.pem").unlink()
    config = write_config(tmp_path / "gw.toml", None, rpc_url="http://127.0.0.1:9")
    result = didgw("run", "--config", str(config), "--state-dir", str(path))
    assert result.returncode == 78  # a restart would not bring the key back
    assert "no ledger account yet; run: didgw init" in result.stderr
    again = didgw("init", "--state-dir", str(path))  # the documented way to get one
    assert "Ledger account key:" in again.stdout and "(created)" in again.stdout
    assert (path / "keys" / "ledger.pem").stat().st_mode & 0o777 == 0o600
