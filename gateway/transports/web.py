"""The front door's HTTP vocabulary: requests, answers, refusals and routes.

The server that speaks it on the network is :mod:`gateway.transports.web_server`. The names
(``Request``, ``Response``, ``HTTPSeeOther``, ``get``, ``post``, middlewares as
``async def mw(request, handler)``) follow aiohttp's, which served the front door before, so
a handler reads as it did. A refusal is raised as an :class:`HTTPException`, which is itself
the answer.
"""

from __future__ import annotations

import copy
import hashlib
import json
import mimetypes
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

MAX_FORM_FIELDS = 1000

REASONS = {
    200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 303: "See Other",
    304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
    410: "Gone", 413: "Payload Too Large", 415: "Unsupported Media Type",
    422: "Unprocessable Content", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    503: "Service Unavailable",
}  # fmt: skip


class Exchange(Protocol):
    """What a request and its answer need of the connection they came on (the server's)."""

    sent_head: bool

    async def body(self, limit: int) -> bytes: ...

    async def start(self, response: StreamResponse, *, length: int | None) -> None: ...

    async def send_data(self, data: bytes) -> None: ...


class Headers:
    """Header fields, looked up without regard to case, a name allowed more than once."""

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items: list[tuple[str, str]] = [(str(k), str(v)) for k, v in pairs]

    def get(self, name: str, default: Any = None) -> Any:
        low = name.lower()
        return next((v for k, v in self._items if k.lower() == low), default)

    def getall(self, name: str) -> list[str]:
        low = name.lower()
        return [v for k, v in self._items if k.lower() == low]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return str(value)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __setitem__(self, name: str, value: str) -> None:
        self.pop(name, None)
        self._items.append((name, str(value)))

    def __delitem__(self, name: str) -> None:
        if self.pop(name, None) is None:
            raise KeyError(name)

    def pop(self, name: str, default: Any = None) -> Any:
        found = self.get(name)
        low = name.lower()
        self._items = [(k, v) for k, v in self._items if k.lower() != low]
        return default if found is None else found

    def setdefault(self, name: str, value: str) -> str:
        found = self.get(name)
        if found is None:
            self._items.append((name, str(value)))
            return str(value)
        return str(found)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)


class MultiDict(Mapping[str, Any]):
    """A query string's or form's fields: ``get`` gives the first of a name."""

    def __init__(self, pairs: Iterable[tuple[str, Any]] = ()) -> None:
        self._pairs = list(pairs)

    def __getitem__(self, name: str) -> Any:
        for k, v in self._pairs:
            if k == name:
                return v
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k for k, _ in self._pairs))

    def __len__(self) -> int:
        return len(dict.fromkeys(k for k, _ in self._pairs))


@dataclass(frozen=True)
class FileField:
    """A file sent in a ``multipart/form-data`` form."""

    name: str
    filename: str
    file: BinaryIO
    content_type: str


# -- answers -------------------------------------------------------------------------


class StreamResponse:
    """An answer; this base class is also one written piece by piece (:meth:`prepare`,
    :meth:`write`), such as an event stream."""

    def __init__(
        self,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> None:
        self.status = status
        self.headers = Headers(headers or {})
        if content_type is not None:
            self.headers["Content-Type"] = content_type
        self._cookies: list[str] = []
        self._exchange: Exchange | None = None

    def set_cookie(
        self,
        name: str,
        value: str,
        *,
        max_age: int | None = None,
        path: str = "/",
        secure: bool = False,
        httponly: bool = False,
        samesite: str | None = None,
    ) -> None:
        parts = [f"{name}={value}", f"Path={path}"]
        if max_age is not None:
            parts.append(f"Max-Age={int(max_age)}")
        if secure:
            parts.append("Secure")
        if httponly:
            parts.append("HttpOnly")
        if samesite:
            parts.append(f"SameSite={samesite}")
        self._cookies = [c for c in self._cookies if not c.startswith(name + "=")]
        self._cookies.append("; ".join(parts))

    def del_cookie(self, name: str, **options: Any) -> None:
        self.set_cookie(name, '""', max_age=0, **options)
        self._cookies[-1] += "; Expires=Thu, 01 Jan 1970 00:00:00 GMT"

    async def prepare(self, request: Request) -> None:
        """Send the status and headers now; the body follows by :meth:`write`."""
        if self._exchange is None:
            self._exchange = request._exchange
            await self._exchange.start(self, length=None)

    async def write(self, data: bytes) -> None:
        if self._exchange is None:
            raise RuntimeError("write before prepare")
        await self._exchange.send_data(data)

    def _fields(self, length: int | None) -> list[tuple[str, str]]:
        fields = [(k, v) for k, v in self.headers.items() if k.lower() != "content-length"]
        fields += [("Set-Cookie", c) for c in self._cookies]
        if length is not None:
            fields.append(("Content-Length", str(length)))
        return fields


class Response(StreamResponse):
    """A whole answer: ``text`` (UTF-8) or ``body`` bytes."""

    def __init__(
        self,
        *,
        text: str | None = None,
        body: bytes | str | None = None,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
        charset: str | None = None,
    ) -> None:
        super().__init__(status=status, headers=headers)
        given = self.headers.get("Content-Type")
        if text is not None:
            body = text.encode()
            kind = content_type or (given or "text/plain").split(";")[0]
            self.headers["Content-Type"] = f"{kind}; charset={charset or 'utf-8'}"
        elif content_type is not None:
            self.headers["Content-Type"] = (
                f"{content_type}; charset={charset}" if charset else content_type
            )
        self.body = body.encode() if isinstance(body, str) else (body or b"")

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def json_response(
    data: Any,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    dumps: Callable[[Any], str] = json.dumps,
) -> Response:
    return Response(
        text=dumps(data), status=status, headers=headers, content_type="application/json"
    )


class HTTPException(Response, Exception):
    """A refusal or redirect, raised; it is its own answer."""

    status_code = 500

    def __init__(
        self,
        *,
        text: str | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> None:
        if text is None and self.status_code >= 400:
            text = f"{self.status_code}: {REASONS.get(self.status_code, '')}"
        Response.__init__(
            self, text=text, status=self.status_code, headers=headers, content_type=content_type
        )
        Exception.__init__(self, text)

    @classmethod
    def of(cls, status: int) -> HTTPException:
        """A refusal of a status that has no class of its own here."""
        refusal = cls(text=f"{status}: {REASONS.get(status, '')}\n")
        refusal.status = status
        return refusal


class HTTPSeeOther(HTTPException):
    status_code = 303

    def __init__(self, location: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.headers["Location"] = location


class HTTPBadRequest(HTTPException):
    status_code = 400


class HTTPUnauthorized(HTTPException):
    status_code = 401


class HTTPForbidden(HTTPException):
    status_code = 403


class HTTPNotFound(HTTPException):
    status_code = 404


class HTTPMethodNotAllowed(HTTPException):
    status_code = 405


class HTTPRequestTimeout(HTTPException):
    status_code = 408


class HTTPRequestEntityTooLarge(HTTPException):
    status_code = 413

    def __init__(self, max_size: int, actual_size: int, **kw: Any) -> None:
        kw.setdefault(
            "text",
            f"request body too large: {actual_size} bytes, at most {max_size} here\n",
        )
        super().__init__(**kw)


class HTTPTooManyRequests(HTTPException):
    status_code = 429


class HTTPServiceUnavailable(HTTPException):
    status_code = 503


# -- requests ------------------------------------------------------------------------


class Request:
    """One request: its head, parsed; its body read only when a handler asks."""

    def __init__(
        self,
        exchange: Exchange,
        *,
        method: str,
        target: str,
        headers: Headers,
        remote: str,
        client_max_size: int,
    ) -> None:
        self._exchange = exchange
        self.method = method
        raw_path, _, self.query_string = target.partition("?")
        self.raw_path = raw_path
        self.path = urllib.parse.unquote(raw_path)
        self.headers = headers
        self.remote = remote
        self.client_max_size = client_max_size
        self.match_info: dict[str, str] = {}
        self._state: dict[str, Any] = {}
        self._query: MultiDict | None = None
        self._cookies: dict[str, str] | None = None
        self._form: MultiDict | None = None

    # the request's own storage, as aiohttp's: request["principal"]
    def __getitem__(self, key: str) -> Any:
        return self._state[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._state[key] = value

    def get(self, key: str, default: Any = None) -> Any:
        return self._state.get(key, default)

    def clone(self, *, client_max_size: int) -> Request:
        """The same request with another body cap (shares its body and storage)."""
        twin = copy.copy(self)
        twin.client_max_size = client_max_size
        return twin

    @property
    def query(self) -> MultiDict:
        if self._query is None:
            self._query = MultiDict(
                urllib.parse.parse_qsl(
                    self.query_string, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS
                )
            )
        return self._query

    @property
    def cookies(self) -> dict[str, str]:
        if self._cookies is None:
            found: dict[str, str] = {}
            for header in self.headers.getall("Cookie"):
                for part in header.split(";"):
                    name, eq, value = part.strip().partition("=")
                    if eq and name and name not in found:
                        found[name] = value.strip().strip('"')
            self._cookies = found
        return self._cookies

    @property
    def content_type(self) -> str:
        value = self.headers.get("Content-Type") or "application/octet-stream"
        return str(value).split(";")[0].strip().lower()

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and str(value).isdigit() else None

    async def read(self) -> bytes:
        """The whole body, at most :attr:`client_max_size` bytes (413 beyond)."""
        return await self._exchange.body(self.client_max_size)

    async def json(self) -> Any:
        return json.loads(await self.read())

    async def post(self) -> MultiDict:
        """The form's fields: URL-encoded, or multipart with files as :class:`FileField`."""
        if self._form is not None:
            return self._form
        kind = self.content_type
        if kind == "application/x-www-form-urlencoded":
            body = await self.read()
            try:
                pairs: list[tuple[str, Any]] = list(
                    urllib.parse.parse_qsl(
                        body.decode("utf-8"),
                        keep_blank_values=True,
                        max_num_fields=MAX_FORM_FIELDS,
                        strict_parsing=False,
                    )
                )
            except (UnicodeDecodeError, ValueError) as exc:
                raise HTTPBadRequest(text=f"malformed form: {exc}\n") from exc
        elif kind == "multipart/form-data":
            body = await self.read()
            pairs = _multipart(self.headers.get("Content-Type", ""), body)
        else:
            pairs = []
        self._form = MultiDict(pairs)
        return self._form


def _multipart(content_type: str, body: bytes) -> list[tuple[str, Any]]:
    """A ``multipart/form-data`` body's fields, by the standard library's MIME parser."""
    import email.parser
    import email.policy
    import io

    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise HTTPBadRequest(text="malformed multipart form\n")
    fields: list[tuple[str, Any]] = []
    for part in message.iter_parts():
        if len(fields) >= MAX_FORM_FIELDS:
            raise HTTPBadRequest(text="too many form fields\n")
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            kind = part.get_content_type()
            fields.append((name, FileField(name, filename, io.BytesIO(data), kind)))
        else:
            fields.append((name, data.decode(part.get_content_charset() or "utf-8", "replace")))
    return fields


# -- routes --------------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[StreamResponse]]
Middleware = Callable[[Request, Handler], Awaitable[StreamResponse]]


@dataclass(frozen=True)
class RouteDef:
    method: str
    path: str
    handler: Handler


def get(path: str, handler: Handler) -> RouteDef:
    return RouteDef("GET", path, handler)


def post(path: str, handler: Handler) -> RouteDef:
    return RouteDef("POST", path, handler)


def middleware(fn: Any) -> Any:
    """Marks a middleware (kept so one reads as in aiohttp; nothing else is needed)."""
    return fn


_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_STATIC_NAME = re.compile(
    r"([A-Za-z0-9_-][A-Za-z0-9_.-]*/)*[A-Za-z0-9_-][A-Za-z0-9_.-]*\.[a-z0-9]+"
)


class Router:
    """Routes by method and path; ``{name}`` matches one path segment. A GET route also
    answers HEAD. ``/static/`` serves the files of one folder."""

    def __init__(self) -> None:
        self._exact: dict[str, dict[str, Handler]] = {}
        self._patterns: list[tuple[re.Pattern[str], dict[str, Handler]]] = []
        self._static: tuple[str, Path] | None = None
        self._files: dict[str, tuple[bytes, str]] = {}  # the static files read, by name

    def add(self, route: RouteDef) -> None:
        methods = {route.method: route.handler}
        if route.method == "GET":
            methods["HEAD"] = route.handler
        if "{" not in route.path:
            self._exact.setdefault(route.path, {}).update(methods)
            return
        parts = _PLACEHOLDER.split(route.path)  # literal, name, literal, name, ..., literal
        regex = re.compile(
            "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)" for i, p in enumerate(parts))
        )
        for known, table in self._patterns:
            if known.pattern == regex.pattern:
                table.update(methods)
                return
        self._patterns.append((regex, methods))

    def add_static(self, prefix: str, folder: Path) -> None:
        """Serve the files under ``folder`` (read once, kept: they do not change while the
        gateway runs) with an ETag, so a browser asks again but gets 304 without a body."""
        self._static = (prefix, folder.resolve())

    def resolve(self, request: Request) -> Handler:
        table = self._exact.get(request.raw_path)
        if table is None:
            for regex, methods in self._patterns:
                found = regex.fullmatch(request.raw_path)
                if found:
                    request.match_info = {
                        k: urllib.parse.unquote(v) for k, v in found.groupdict().items()
                    }
                    table = methods
                    break
        if table is None:
            if self._static and request.raw_path.startswith(self._static[0]):
                return self._serve_static
            return _not_found
        handler = table.get(request.method)
        if handler is None:
            allow = ", ".join(sorted(table))
            return _refuse(HTTPMethodNotAllowed, {"Allow": allow})
        return handler

    async def _serve_static(self, request: Request) -> StreamResponse:
        if self._static is None:
            raise HTTPNotFound()
        prefix, folder = self._static
        if request.method not in ("GET", "HEAD"):
            raise HTTPMethodNotAllowed(headers={"Allow": "GET, HEAD"})
        name = request.path[len(prefix) :]
        if not _STATIC_NAME.fullmatch(name):  # no "..", no hidden file, no backslash
            raise HTTPNotFound()
        path = (folder / name).resolve()
        if not path.is_relative_to(folder) or not path.is_file():
            raise HTTPNotFound()
        found = self._files.get(name)
        if found is None:
            body = path.read_bytes()
            tag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            found = self._files[name] = (body, tag)
        body, tag = found
        headers = {"ETag": tag, "Cache-Control": "no-cache"}  # kept, asked again each time
        if tag in request.headers.get("If-None-Match", ""):
            return Response(status=304, headers=headers)
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        charset = "utf-8" if kind.startswith("text/") or kind.endswith("javascript") else None
        return Response(body=body, content_type=kind, charset=charset, headers=headers)


async def _not_found(request: Request) -> StreamResponse:
    raise HTTPNotFound()


def _refuse(kind: type[HTTPException], headers: Mapping[str, str]) -> Handler:
    async def refuse(request: Request) -> StreamResponse:
        raise kind(headers=headers)

    return refuse
