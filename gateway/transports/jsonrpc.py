"""JSON-RPC 2.0 over HTTP(S), on the standard library, bounded: how the gateway asks a ledger node.

A node is not trusted to behave: every call has a deadline (``timeout`` for the
whole call, not per read), the answer is read up to ``max_answer`` bytes and no
further, redirects are not followed (a POST cannot be replayed safely, and an
``https`` URL must not be downgraded), and HTTPS verifies the node's certificate
and name with Python's default context (the system's certificate authorities).

Failures become the ledger's two errors (``gateway/anchor/ledger.py``):
:class:`LedgerUnavailable` when the node could not be asked (refused, reset,
timed out, HTTP 429 or 5xx: try again later) and :class:`LedgerError` when it
answered something else than a result (a JSON-RPC error object, another HTTP
error, an answer that is not JSON-RPC or is too large); each names the node and
the method. A new connection per call: calls are rare (a few per anchoring round)
and nothing is left half-open after a failure.
"""

from __future__ import annotations

import http.client
import itertools
import json
import ssl
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx then surfaces as an HTTPError


class JsonRpc:
    """One node's JSON-RPC endpoint."""

    def __init__(self, url: str, *, timeout: float, max_answer: int = MAX_ANSWER) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LedgerError(f"ledger URL {url!r} must be an http:// or https:// URL")
        self.url = url
        self.timeout = timeout
        self.max_answer = max_answer
        self._ids = itertools.count(1)
        self._opener = urllib.request.build_opener(
            _NoRedirect, urllib.request.HTTPSHandler(context=ssl.create_default_context())
        )

    def __repr__(self) -> str:
        return f"JsonRpc({self.url})"

    def call(self, method: str, *params: Any) -> Any:
        """The ``result`` of ``method(params)``; None is a valid result (e.g. "not found")."""
        call_id = next(self._ids)
        body = json.dumps({"jsonrpc": "2.0", "id": call_id, "method": method, "params": params})
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            self.url,
            body.encode(),
            {"Content-Type": "application/json", "Accept": "application/json"},
            method="POST",
        )
        deadline = time.monotonic() + self.timeout
        try:
            with self._opener.open(request, timeout=self.timeout) as answer:
                text = self._read(answer, deadline, method)
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc, deadline, method) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        return self._result(text, call_id, method)

    # -- the parts of a call --------------------------------------------------------------

    def _read(self, answer: Any, deadline: float, method: str) -> bytes:
        declared = answer.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_answer:
            raise self._too_large(method)
        chunks: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError("timed out")
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
                f"the ledger at {self.url} answered {method} with something that is not JSON"
            ) from None
        if not isinstance(answer, dict) or answer.get("id") != call_id:
            raise LedgerError(
                f"the ledger at {self.url} answered {method} with something that is not a "
                "JSON-RPC 2.0 response to it"
            )
        refusal = self._refusal(answer, method)
        if refusal is not None:
            raise refusal
        if "result" not in answer:
            raise LedgerError(f"the ledger at {self.url} answered {method} without a result")
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
            f"the ledger at {self.url} refused {method}: {message}{suffix}", code, message
        )

    def _http_error(self, exc: urllib.error.HTTPError, deadline: float, method: str) -> LedgerError:
        """A JSON-RPC error object sent with an HTTP error status is still the node's refusal;
        otherwise 429 and 5xx mean "later" and anything else a refusal by the server."""
        with exc:
            try:
                refusal = self._refusal(json.loads(self._read(exc, deadline, method)), method)
            except (LedgerError, OSError, ValueError, RecursionError, http.client.HTTPException):
                refusal = None
        if refusal is not None:
            return refusal
        what = f"the ledger at {self.url} answered {method} with HTTP {exc.code} {exc.reason}"
        if exc.code == 429 or exc.code >= 500:
            return LedgerUnavailable(what)
        if 300 <= exc.code < 400:
            return LedgerError(f"{what}: redirects are not followed; give the final URL")
        return LedgerError(what)

    def _unreachable(self, reason: object) -> LedgerUnavailable:
        text = str(getattr(reason, "strerror", None) or reason) or type(reason).__name__
        if isinstance(reason, TimeoutError) or "timed out" in text:
            text = f"no answer within {self.timeout:g} s"
        return LedgerUnavailable(f"cannot reach the ledger at {self.url}: {text}")

    def _too_large(self, method: str) -> LedgerError:
        return LedgerError(
            f"the ledger at {self.url} answered {method} with more than "
            f"{self.max_answer} bytes; not reading further"
        )
