"""A real anvil (the local EVM dev chain from the npm package @foundry-rs/anvil) for tests.

Installed by ``scripts/setup.sh --dev`` under ``scripts/anvil/node_modules``. Each
instance listens on a free loopback port, keeps its chain in ``--state FILE`` so it
survives :meth:`Anvil.restart` (on the same port), and is stopped by the fixture.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from support import ROOT

ANVIL = ROOT / "scripts" / "anvil" / "node_modules" / ".bin" / "anvil"
HOST = "127.0.0.1"
CHAIN_ID = 31337


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def missing_anvil() -> str:
    return "" if os.access(ANVIL, os.X_OK) else f"{ANVIL} is not installed"


class Anvil:
    """One dev chain: start, stop, restart on the same port and state file."""

    def __init__(
        self,
        directory: Path,
        *,
        block_time: float | None = None,
        no_mining: bool = False,
        chain_id: int = CHAIN_ID,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.block_time = block_time
        self.no_mining = no_mining
        self.chain_id = chain_id
        self.state = directory / "anvil-state.json"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        args = [
            str(ANVIL),
            "--host", HOST,
            "--port", str(self.port),
            "--state", str(self.state),
            "--chain-id", str(self.chain_id),
            "--accounts", "1",
        ]  # fmt: skip
        if self.block_time is not None:
            args += ["--block-time", str(self.block_time)]
        if self.no_mining:
            args.append("--no-mining")
        log = (self.directory / "anvil.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.rpc("eth_chainId")
                return
            except OSError:
                if self.proc.poll() is not None:
                    log_text = (self.directory / "anvil.log").read_text()
                    raise RuntimeError(f"anvil exited: {log_text}") from None
                time.sleep(0.05)
        raise RuntimeError("anvil did not start")

    def stop(self) -> None:
        """SIGTERM: anvil writes its state file on the way out."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, *, no_mining: bool | None = None) -> None:
        self.stop()
        if no_mining is not None:
            self.no_mining = no_mining
        self.start()

    def rpc(self, method: str, *params: Any) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
        request = urllib.request.Request(  # noqa: S310 - our own http://127.0.0.1 URL
            self.url, body.encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            reply = json.loads(answer.read())
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def fund(self, address: str, wei: int = 10**18) -> None:
        self.rpc("anvil_setBalance", address, hex(wei))

    def mine(self, blocks: int = 1) -> None:
        self.rpc("anvil_mine", hex(blocks))

    def transactions_from(self, address: str) -> int:
        """How many transactions the account has had mined (its nonce)."""
        return int(self.rpc("eth_getTransactionCount", address, "latest"), 16)
