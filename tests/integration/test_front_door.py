"""The HTTP edge of a real ``didgw run``: what every request passes, whoever sends it."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from gateway_process import GatewayProcess
from support import Run

from gateway.identity import certs

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


def test_static_files_are_revalidated_and_do_not_spend_a_strangers_limit(
    front_door: GatewayProcess,
) -> None:
    """A signed-out page view costs one request of the limit, not one per stylesheet and
    script: the static files are not counted, and a browser revalidates them (304) instead
    of fetching them again. Pages stay limited however many files are fetched first, and a
    path that only looks static is counted."""
    with front_door.config.open("a") as f:
        f.write("source_rate = 0.5\nsource_burst = 3\n")
    front_door.start()
    first = requests.get(front_door.url + "/static/didgw.css", timeout=10)
    assert first.status_code == 200 and first.headers["Cache-Control"] == "no-cache"
    tag = first.headers["ETag"]
    for _ in range(30):
        again = requests.get(
            front_door.url + "/static/didgw.css", headers={"If-None-Match": tag}, timeout=10
        )
        assert again.status_code == 304 and again.content == b""
        assert again.headers["X-Content-Type-Options"] == "nosniff"
    assert requests.get(front_door.url + "/static/login.js", timeout=10).status_code == 200
    codes = [requests.get(front_door.url + "/", timeout=10).status_code for _ in range(5)]
    assert codes[:3] == [200] * 3 and codes[3:] == [429, 429], codes
    looks_static = requests.post(front_door.url + "/static/didgw.css", timeout=10)
    assert looks_static.status_code == 429


def _https_get(port: int, name: str, ca: Path, path: str = "/") -> tuple[int, str]:
    """GET over TLS to 127.0.0.1:port, checking the certificate against ``ca`` for ``name``."""
    context = ssl.create_default_context(cafile=str(ca))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.sock = context.wrap_socket(raw, server_hostname=name)
    connection.request("GET", path, headers={"Host": f"{name}:{port}"})
    answer = connection.getresponse()
    body = answer.read().decode()
    hsts = answer.getheader("Strict-Transport-Security") or ""
    connection.close()
    return answer.status, hsts + "\n" + body


def test_beyond_loopback_it_speaks_https_only_with_a_certificate_of_the_gateways_ca(
    front_door: GatewayProcess,
) -> None:
    port = int(front_door.url.rsplit(":", 1)[1])
    with front_door.config.open("a") as f:
        f.write(f'host = "0.0.0.0"\npublic_url = "https://gateway.test:{port}"\n')
    front_door.start()
    assert front_door.wait_for("front door on https://gateway.test:")
    ca = front_door.state / "tls" / "ca.crt"
    status, text = _https_get(port, "gateway.test", ca)
    assert status == 200 and "max-age=" in text
    assert (front_door.state / "tls" / "http.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(requests.exceptions.ConnectionError):  # no plain HTTP beside it
        requests.get(f"http://127.0.0.1:{port}/", timeout=10)
    with pytest.raises(ssl.SSLCertVerificationError):  # a name it was not issued for
        _https_get(port, "elsewhere.test", ca)


def test_an_operators_certificate_is_served_even_on_loopback(
    front_door: GatewayProcess, tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key = certs.generate_key()
    ca = certs.new_ca(ca_key, common_name="Another CA", now=time.time())
    names = certs.parse_names(["gateway.test"], [])
    cert = certs.issue_server(ca_key, ca, key.public_key(), names, now=time.time(), days=30)
    (tmp_path / "ca.pem").write_bytes(certs.to_pem(ca))
    (tmp_path / "server.pem").write_bytes(certs.to_pem(cert, ca))
    key_file = tmp_path / "server.key"
    key_file.write_bytes(certs.private_pem(key))
    key_file.chmod(0o600)
    with front_door.config.open("a") as f:
        f.write(f'cert_file = "{tmp_path / "server.pem"}"\nkey_file = "{key_file}"\n')
    front_door.start()
    port = int(front_door.url.rsplit(":", 1)[1])
    status, _ = _https_get(port, "gateway.test", tmp_path / "ca.pem")
    assert status == 200
    assert not (front_door.state / "tls" / "http.crt").exists()


def test_a_flood_of_refused_sign_ins_is_counted_not_logged_line_by_line(
    front_door: GatewayProcess,
) -> None:
    with front_door.config.open("a") as f:
        f.write("source_rate = 1000.0\nsource_burst = 1000\n")
    front_door.start()
    for i in range(100):
        answer = requests.post(
            front_door.url + "/oid4vp/response", data={"state": f"s{i}", "vp_token": "{}"},
            timeout=10,
        )  # fmt: skip
        assert answer.status_code == 400
    time.sleep(0.5)
    assert front_door.output.count("sign-in refused") == 20


def test_deeply_nested_json_is_refused_as_malformed_never_a_server_error(
    front_door: GatewayProcess, didgw: Run
) -> None:
    made = didgw(
        "api-token", "create", "ops", "--role", "operator", "--state-dir", str(front_door.state)
    )
    assert made.returncode == 0, made.stderr
    operator = {"Authorization": f"Bearer {made.stdout.strip()}"}
    with front_door.config.open("a") as f:
        f.write("source_rate = 1000.0\nsource_burst = 1000\n")
    front_door.start()
    deep = b"[" * 60_000  # below the 64 KiB body cap, far past the JSON parser's recursion
    json_body = {"Content-Type": "application/json"}
    for path, headers in (
        ("/passkeys/login", json_body),
        ("/api/devices", {**json_body, **operator}),
        ("/oid4vci/credential", {**json_body, "Authorization": "Bearer not-a-token"}),
    ):
        answer = requests.post(front_door.url + path, data=deep, headers=headers, timeout=10)
        assert 400 <= answer.status_code < 500, (path, answer.status_code, answer.text[:200])
    header = base64.urlsafe_b64encode(b"[" * 3000).rstrip(b"=").decode()
    cursor = requests.get(
        front_door.url + f"/api/devices?after={header[:1000]}", headers=operator, timeout=10
    )
    assert cursor.status_code == 400
    assert "Traceback" not in front_door.output


def test_the_ledger_libraries_leave_pythons_recursion_limit_alone() -> None:
    """eth-account and web3 (no longer used by the gateway) import py_ecc, which raises the
    limit to 100,000: then a deeply nested JSON body overflows the C stack and kills the
    gateway instead of being refused. Whatever the ledger's code imports must not."""
    probe = (
        "import sys\n"
        "from cryptography.hazmat.primitives.asymmetric import ec\n"
        "from gateway.anchor.account import Fees, LedgerAccount\n"
        "from gateway.transports.evm import EvmLedger, read_ledger_view\n"
        "EvmLedger('http://127.0.0.1:9', timeout=1)\n"
        "LedgerAccount(ec.generate_private_key(ec.SECP256K1()))\n"
        "print(sys.getrecursionlimit())\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert ran.stdout.strip() == "1000"


def test_pages_speak_the_readers_language_and_the_switch_stays_on_this_site(
    front_door: GatewayProcess,
) -> None:
    front_door.start()
    korean = requests.get(
        front_door.url + "/", headers={"Accept-Language": "ko-KR,ko;q=0.9"}, timeout=10
    )
    assert '<html lang="ko">' in korean.text and "로그인" in korean.text
    english = requests.get(front_door.url + "/", headers={"Accept-Language": "en-US"}, timeout=10)
    assert '<html lang="en">' in english.text and "Sign in" in english.text
    switched = requests.post(
        front_door.url + "/lang", data={"lang": "ko", "next": "//evil.example/"},
        allow_redirects=False, timeout=10,
    )  # fmt: skip
    assert switched.status_code == 303 and switched.headers["Location"] == "/"
    cookie = switched.cookies["didgw_lang"]
    chosen = requests.get(
        front_door.url + "/login", headers={"Cookie": f"didgw_lang={cookie}"}, timeout=10
    )
    assert "지갑으로 로그인" in chosen.text  # the reader's choice, whatever her browser says
