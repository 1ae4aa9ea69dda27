"""Helpers for the anchoring tests: ``didgw run`` with [anchor] on, and what it left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import support
from anvil import Anvil
from broker import Mosquitto

from gateway.anchor.queue import Anchor, AnchorQueue
from gateway.chain.store import ChainStore
from gateway.db import connect

DIDGW = str(Path(sys.executable).with_name("didgw"))


def write_config(
    path: Path,
    anvil: Anvil | None,
    broker: Mosquitto | None = None,
    *,
    rpc_url: str | None = None,
    coap_port: int | None = None,
    **anchor: Any,
) -> Path:
    """A gateway config with anchoring on (every 0.5 s, 1 confirmation unless told);
    MQTT through ``broker`` or off, and CoAP on ``coap_port`` if given."""
    settings: dict[str, Any] = {
        "enabled": True,
        "rpc_url": rpc_url or (anvil.url if anvil else ""),
        "every_seconds": 0.5,
        "confirmations": 1,
        "poll_seconds": 0.2,
        "rpc_timeout": 2.0,
        **anchor,
    }
    lines = ["[anchor]"]
    for key, value in settings.items():
        text = (
            f'"{value}"'
            if isinstance(value, str)
            else str(value).lower()
            if isinstance(value, bool)
            else repr(value)
        )
        lines.append(f"{key} = {text}")
    if broker is None:
        lines += ["[mqtt]", "enabled = false"]
    else:
        lines += ["[mqtt]", broker.gateway_settings().rstrip("\n")]
    if coap_port is not None:
        lines += ["[coap]", "enabled = true", f"port = {coap_port}"]
    path.write_text("\n".join(lines) + "\n")
    return path


class Gateway:
    """``didgw run`` as a subprocess; its output goes to a file so it never blocks."""

    def __init__(self, state: Path, config: Path, broker: Mosquitto | None = None) -> None:
        self.state, self.config, self.broker = state, config, broker
        self.process: subprocess.Popen[bytes] | None = None
        self.log = state.parent / "gateway.log"

    def start(self) -> None:
        env = {
            **os.environ,
            "DIDGW_STATE_DIR": str(self.state),
            "DIDGW_CONFIG": str(self.config),
            "PYTHONUNBUFFERED": "1",
        }
        if self.broker is not None:
            env["DIDGW_MQTT_PASSWORD"] = self.broker.gateway_password
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [DIDGW, "run"], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        assert wait_for(lambda: " running (state " in self.output() or self.exited(), 30)
        assert not self.exited(), self.output()

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: no clean-up of any kind
        self.process.wait(timeout=10)

    def anchors(self) -> list[Anchor]:
        db = connect(self.state / "didgw.db")
        try:
            return list(AnchorQueue(db).recent(10_000))[::-1]
        finally:
            db.close()

    def record_size(self) -> int:
        store = ChainStore(connect(self.state / "didgw.db"))
        try:
            return store.size
        finally:
            store.close()

    def anchored_size(self) -> int:
        return max((a.size for a in self.anchors() if a.state == "confirmed"), default=0)


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0) -> bool:
    """support.wait_for, with the longer default an anchor round and its confirmations need."""
    return support.wait_for(predicate, timeout)


def ledger_address(init_output: str) -> str:
    return init_output.split("Ledger account: ")[1].split(maxsplit=1)[0]
