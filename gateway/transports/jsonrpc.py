"""JSON-RPC 2.0 over HTTP(S), on the standard library, bounded: how the gateway asks a ledger node.

A node is not trusted to behave: every call has a deadline (``timeout`` for the
whole exchange, not per read: past it the socket is shut, even in the middle of a
status line that comes one byte at a time), the answer is read up to
``max_answer`` bytes and no further, redirects are not followed (a POST cannot be
replayed safely, and an ``https`` URL must not be downgraded), and HTTPS verifies
the node's certificate and name with Python's default context (the system's
certificate authorities). Proxies named in the environment are not used.

Failures become the ledger's two errors (``gateway/anchor/ledger.py``):
:class:`LedgerUnavailable` when the node could not be asked (refused, reset,
timed out, HTTP 429 or 5xx: try again later) and :class:`LedgerError` when it
answered something else than a result (a JSON-RPC error object, another HTTP
status, an answer that is not JSON-RPC or is too large); each names the method and
the node by scheme, host and port only, since the rest of a provider's URL often
holds an API key that must not reach the logs. One connection per call: calls are
rare (a few per anchoring round) and nothing is left half-open after a failure.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import json
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import unquote, urlsplit

from gateway.anchor.ledger import LedgerError, LedgerUnavailable

__all__ = ["MAX_ANSWER", "JsonRpc", "RpcRefusal"]

#: The largest answer read from a node. The biggest the gateway asks for is a block
#: header with its transaction hashes (about 70 bytes per transaction).
MAX_ANSWER = 4 * 1024 * 1024
_CHUNK = 64 * 1024


class RpcRefusal(LedgerError):
    """The node answered with a JSON-RPC error object: ``rpc_code`` and its message."""

    def __init__(self, message: str, rpc_code: int | None, rpc_message: str) -> None:
        super().__init__(message)
        self.rpc_code = rpc_code
        self.rpc_message = rpc_message


class _Late(Exception):
    """The deadline passed while the node was still answering."""


class JsonRpc:
    """One node's JSON-RPC endpoint."""

    def __init__(self, url: str, *, timeout: float, max_answer: int = MAX_ANSWER) -> None:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            raise LedgerError("the ledger URL must be an http:// or https:// URL with a host")
        self.url = url
        self.where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        self.timeout = timeout
        self.max_answer = max_answer
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"JsonRpc({self.where})"

    def call(self, method: str, *params: Any) -> Any:
        """The ``result`` of ``method(params)``; None is a valid result (e.g. "not found")."""
        call_id = next(self._ids)
        body = json.dumps({"jsonrpc": "2.0", "id": call_id, "method": method, "params": params})
        deadline = time.monotonic() + self.timeout
        connection = self._connection()
        watchdog = threading.Timer(self.timeout, _shut, (connection,))
        watchdog.daemon = True
        watchdog.start()
        try:
            connection.connect()
            connection.request("POST", self._target, body.encode(), self._headers)
            answer = connection.getresponse()
            text = self._read(answer, deadline, method)
            status, reason = answer.status, answer.reason
        except (OSError, http.client.HTTPException, _Late) as exc:
            late = isinstance(exc, (TimeoutError, _Late)) or time.monotonic() >= deadline
            raise self._unreachable(
                f"no answer within {self.timeout:g} s" if late else exc
            ) from None
        finally:
            watchdog.cancel()
            connection.close()
        if status != 200:
            raise self._http_error(status, reason, text, method)
        return self._result(text, call_id, method)

    # -- the parts of a call --------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def _read(self, answer: http.client.HTTPResponse, deadline: float, method: str) -> bytes:
        declared = answer.getheader("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_answer:
            raise self._too_large(method)
        chunks: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                raise _Late
            chunk = answer.read1(_CHUNK)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_answer:
                raise self._too_large(method)
            chunks.append(chunk)

    def _result(self, text: bytes, call_id: int, method: str) -> Any:
        try:
            answer = json.loads(text)
        except (ValueError, RecursionError):
            raise LedgerError(
                f"the ledger at {self.where} answered {method} with something that is not JSON"
            ) from None
        if not isinstance(answer, dict) or answer.get("id") != call_id:
            raise LedgerError(
                f"the ledger at {self.where} answered {method} with something that is not a "
                "JSON-RPC 2.0 response to it"
            )
        refusal = self._refusal(answer, method)
        if refusal is not None:
            raise refusal
        if "result" not in answer:
            raise LedgerError(f"the ledger at {self.where} answered {method} without a result")
        return answer["result"]

    def _refusal(self, answer: Any, method: str) -> RpcRefusal | None:
        """The JSON-RPC error object of ``answer`` as an exception, if it has one."""
        if not isinstance(answer, dict) or answer.get("error") is None:
            return None
        error = answer["error"]
        code = error.get("code") if isinstance(error, dict) else None
        message = str(error.get("message", error) if isinstance(error, dict) else error)[:500]
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        suffix = "" if code is None else f" (JSON-RPC error {code})"
        return RpcRefusal(
            f"the ledger at {self.where} refused {method}: {message}{suffix}", code, message
        )

    def _http_error(self, status: int, reason: str, text: bytes, method: str) -> LedgerError:
        """A JSON-RPC error object sent with an HTTP error status is still the node's refusal;
        otherwise 429 and 5xx mean "later" and anything else a refusal by the server."""
        try:
            refusal = self._refusal(json.loads(text), method)
        except (ValueError, RecursionError):
            refusal = None
        if refusal is not None:
            return refusal
        what = f"the ledger at {self.where} answered {method} with HTTP {status} {reason}"
        if status == 429 or status >= 500:
            return LedgerUnavailable(what)
        if 300 <= status < 400:
            return LedgerError(f"{what}: redirects are not followed; give the final URL")
        return LedgerError(what)

    def _unreachable(self, reason: object) -> LedgerUnavailable:
        text = str(getattr(reason, "strerror", None) or reason) or type(reason).__name__
        return LedgerUnavailable(f"cannot reach the ledger at {self.where}: {text}")

    def _too_large(self, method: str) -> LedgerError:
        return LedgerError(
            f"the ledger at {self.where} answered {method} with more than "
            f"{self.max_answer} bytes; not reading further"
        )


def _shut(connection: http.client.HTTPConnection) -> None:
    """End a read that the deadline has passed: the blocked ``recv`` returns at once.

    The plain socket's ``shutdown`` (not ``SSLSocket.shutdown``, which would pull the TLS
    state from under the reading thread)."""
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
