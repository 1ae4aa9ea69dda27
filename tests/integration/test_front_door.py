"""The HTTP edge of a real ``didgw run``: what every request passes, whoever sends it."""

from __future__ import annotations

import pytest
import requests
from gateway_process import GatewayProcess

pytestmark = pytest.mark.integration


def test_every_answer_carries_the_security_headers(front_door: GatewayProcess) -> None:
    front_door.start()
    for path in ("/", "/no-such-page", "/static/didgw.css"):
        answer = requests.get(front_door.url + path, timeout=10)
        csp = answer.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
        assert "frame-ancestors 'none'" in csp, path
        assert answer.headers["Referrer-Policy"] == "no-referrer", path
        assert answer.headers["X-Content-Type-Options"] == "nosniff", path
        assert "aiohttp" not in answer.headers.get("Server", ""), path


def test_a_body_over_64_kib_is_refused_unread(front_door: GatewayProcess) -> None:
    front_door.start()
    answer = requests.post(front_door.url + "/logout", data=b"x" * (65 * 1024), timeout=10)
    assert answer.status_code == 413


def test_a_stranger_is_rate_limited_and_told_when_to_come_back(
    front_door: GatewayProcess,
) -> None:
    with front_door.config.open("a") as f:
        f.write("source_rate = 1.0\nsource_burst = 5\n")
    front_door.start()
    codes = [requests.get(front_door.url + "/", timeout=10).status_code for _ in range(8)]
    assert codes[:5] == [200] * 5
    assert 429 in codes[5:]
    refused = requests.get(front_door.url + "/", timeout=10)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
