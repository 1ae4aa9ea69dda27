"""The front door's HTTP server (gateway/transports/web_server.py) on a real loopback socket,
against what a stranger on the LAN can send it: heads too large or too slow, bodies too
large or too slow, too many connections, a body that hides a second request, a path out
of the static folder. Clients are the standard library's and ``requests``, not ours.

The server's time limits are lowered for these tests (``limits``), so each waits well
under a second instead of the shipped 15-30 s; the counts are lowered the same way.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from anvil import free_port

from gateway.transports import web, web_server

pytestmark = pytest.mark.integration


class Served:
    """A :class:`web_server.Server` on a loopback port, run by its own event loop in a thread."""

    def __init__(self, server: web_server.Server, port: int) -> None:
        self.server, self.port = server, port
        self.url = f"http://127.0.0.1:{port}"
        self.seen: list[str] = []  # the paths handlers were called for

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)


def _read_all(sock: socket.socket, wait: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (or ``wait`` passes)."""
    sock.settimeout(wait)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    return data


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web_server, "HEAD_SECONDS", 0.6)
    monkeypatch.setattr(web_server, "BODY_SECONDS", 0.6)
    monkeypatch.setattr(web_server, "MAX_PER_SOURCE", 4)
    monkeypatch.setattr(web_server, "MAX_CONNECTIONS", 6)


@pytest.fixture
def served(limits: None, tmp_path: Path) -> Iterator[Served]:
    static = tmp_path / "static"
    static.mkdir()
    (static / "site.css").write_text("body { color: black }\n")
    (static / "vendor").mkdir()
    (static / "vendor" / "lib-2.0.js").write_text("// a library\n")
    (tmp_path / "secret.txt").write_text("not for the web\n")
    server = web_server.Server(client_max_size=1024, middlewares=[])
    port = free_port()
    box = Served(server, port)

    async def hello(request: web.Request) -> web.StreamResponse:
        box.seen.append(request.path)
        return web.Response(text=f"hello {request.query.get('name', 'you')}\n")

    async def echo(request: web.Request) -> web.StreamResponse:
        box.seen.append(request.path)
        form = await request.post()
        out: dict[str, Any] = {}
        for name in form:
            value = form[name]
            if isinstance(value, web.FileField):
                out[name] = {"filename": value.filename, "bytes": value.file.read().hex()}
            else:
                out[name] = value
        return web.json_response(out)

    async def ignore_body(request: web.Request) -> web.StreamResponse:
        box.seen.append(request.path)
        return web.Response(text="not read\n")

    async def item(request: web.Request) -> web.StreamResponse:
        return web.json_response(dict(request.match_info))

    server.add_routes(
        [
            web.get("/hello", hello),
            web.post("/echo", echo),
            web.post("/ignore", ignore_body),
            web.get("/items/{did}", item),
        ]
    )
    server.router.add_static("/static/", static)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start("127.0.0.1", port))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(5)
    yield box
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_it_answers_an_independent_client(served: Served) -> None:
    answer = requests.get(served.url + "/hello", params={"name": "Ana María"}, timeout=5)
    assert answer.status_code == 200
    assert answer.text == "hello Ana María\n"
    assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
    did = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
    assert requests.get(f"{served.url}/items/{did.replace(':', '%3A')}", timeout=5).json() == {
        "did": did
    }
    head = requests.head(served.url + "/hello", timeout=5)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len("hello you\n"))
    wrong = requests.post(served.url + "/hello", timeout=5)
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "GET, HEAD"
    assert requests.get(served.url + "/nowhere", timeout=5).status_code == 404


def test_forms_url_encoded_and_multipart_as_the_client_encoded_them(served: Served) -> None:
    plain = requests.post(served.url + "/echo", data={"a": "1", "b": "ünï"}, timeout=5)
    assert plain.json() == {"a": "1", "b": "ünï"}
    content = "did,name\r\ndid:key:z6Mk,Küche\r\n".encode() + bytes(range(256))[:40]
    sent = requests.post(
        served.url + "/echo",
        data={"csrf_token": "t0k"},
        files={"file": ("devices.csv", content, "text/csv")},
        timeout=5,
    )
    assert sent.json() == {
        "csrf_token": "t0k",
        "file": {"filename": "devices.csv", "bytes": content.hex()},
    }


def test_a_head_over_the_cap_is_refused_431_however_it_is_made_up(served: Served) -> None:
    many_small = "".join(f"X-{i}: y\r\n" for i in range(4000))
    one_large = f"X-Big: {'y' * (web_server.MAX_HEAD_BYTES + 10)}\r\n"
    for extra in (many_small, one_large):
        with served.connect() as sock:
            sock.sendall(f"GET /hello HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
            answer = _read_all(sock)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
        assert b"Connection: close" in answer
    assert served.seen == []


def test_a_malformed_request_is_refused_400_and_the_connection_closed(served: Served) -> None:
    for junk in (
        b"GET\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\r\n\r\n",
        b"GET / HTTP/9\r\n\r\n",
    ):
        with served.connect() as sock:
            sock.sendall(junk)
            assert _read_all(sock).startswith(b"HTTP/1.1 400 "), junk
    assert served.seen == []


def test_a_head_sent_a_byte_at_a_time_is_cut_off(served: Served) -> None:
    """Slowloris: the head must be whole within HEAD_SECONDS, however steadily it trickles."""
    with served.connect() as sock:
        started = time.monotonic()
        closed = False
        for byte in b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 100:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.05)
            if time.monotonic() - started > 3:
                break
        closed = closed or _read_all(sock, wait=2) == b""
    assert closed
    assert time.monotonic() - started < 3
    assert served.seen == []


def test_an_idle_keep_alive_connection_is_closed(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert _read_all(sock, wait=3) == b""  # closed by the server, not by the wait
        assert time.monotonic() - started < 2


def test_a_body_over_the_cap_is_refused_unread_whether_declared_or_chunked(
    served: Served,
) -> None:
    with served.connect() as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
        )
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:80]
    with served.connect() as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
        )
        for _ in range(3):
            sock.sendall(b"200\r\n" + b"a" * 0x200 + b"\r\n")
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:80]
    assert b"Connection: close" in answer


def test_a_body_that_trickles_is_cut_off_408(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\na="
        )
        answer = _read_all(sock, wait=3)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]


def test_a_body_left_unread_cannot_smuggle_a_second_request(served: Served) -> None:
    """The handler does not read the body, so the connection is closed after the answer:
    the body's bytes are never taken for the next request."""
    hidden = b"GET /hello?name=smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    with served.connect() as sock:
        sock.sendall(
            b"POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(hidden) + hidden
        )
        answer = _read_all(sock)
    assert answer.count(b"HTTP/1.1 ") == 1 and b"not read" in answer
    assert b"smuggled" not in answer and served.seen == ["/ignore"]


def test_a_request_framed_two_ways_is_refused(served: Served) -> None:
    """Content-Length beside Transfer-Encoding: the framing a request smuggler relies on."""
    with served.connect() as sock:
        sock.sendall(
            b"POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400 ") and answer.count(b"HTTP/1.1 ") == 1
    assert served.seen == []


def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(
            b"GET /hello?name=one HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /hello?name=two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        answer = _read_all(sock)
    assert answer.index(b"hello one") < answer.index(b"hello two")


def test_connections_are_capped_per_address_and_in_all(served: Served) -> None:
    held = [served.connect() for _ in range(web_server.MAX_PER_SOURCE)]
    time.sleep(0.1)
    extra = served.connect()
    assert _read_all(extra, wait=2) == b""  # closed at once, nothing said
    extra.close()
    held.pop().close()
    time.sleep(0.1)
    answer = requests.get(served.url + "/hello", timeout=5)  # room again
    assert answer.status_code == 200
    for sock in held:
        sock.close()


def test_static_files_stay_in_their_folder(served: Served) -> None:
    first = requests.get(served.url + "/static/site.css", timeout=5)
    assert first.text.startswith("body") and first.headers["Cache-Control"] == "no-cache"
    same = requests.get(
        served.url + "/static/site.css",
        headers={"If-None-Match": first.headers["ETag"]},
        timeout=5,
    )
    assert same.status_code == 304 and same.content == b""
    assert "Content-Length" not in same.headers
    vendored = requests.get(served.url + "/static/vendor/lib-2.0.js", timeout=5)
    assert vendored.text == "// a library\n"
    assert vendored.headers["Content-Type"] == "text/javascript; charset=utf-8"
    for path in (
        "/static/../secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/%2e%2e%2fsecret.txt",
        "/static/..%5csecret.txt",
        "/static/vendor/../../secret.txt",
        "/static/vendor/%2e%2e/%2e%2e/secret.txt",
        "/static/.hidden.css",
        "/static/",
        "/static/nothing.css",
    ):
        with served.connect() as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            answer = _read_all(sock)
        assert answer.startswith(b"HTTP/1.1 404 "), (path, answer[:60])
        assert b"not for the web" not in answer


def test_expect_100_continue_is_answered_before_the_body(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n\r\n"
        )
        sock.settimeout(2)
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"a=1")
        assert _read_all(sock).endswith(b'{"a": "1"}')
