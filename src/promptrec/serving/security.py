"""What keeps the HTTP server safe to expose: API keys with scopes, a JSON parser that refuses
what cannot round-trip, error bodies that never echo raw input, a body-read deadline, and the
masking of secrets in URLs.

Keys. Each key carries scopes: ``read`` (answers about a user: /recommend, /score, /rate, chat),
``write`` (/feedback) and ``admin`` (/admin/reload, /info). A request sends its key as
``X-API-Key: KEY`` or ``Authorization: Bearer KEY`` (what OpenAI clients send). The server keeps
only the SHA-256 of each key and compares digests with :func:`hmac.compare_digest`, against every
key, so neither the time taken nor a database lookup says which key came close.

Secrets in URLs are masked where the URLs are handled: :func:`promptrec.serving.store.mask_secrets`.

Input. Bodies are bounded in size and in time (:class:`BodyGuard`). JSON has no NaN or Infinity and no lone UTF-16 surrogates, but Python's parser accepts
both (and turns ``1e400`` into infinity); each of them later fails somewhere (a JSON response, a
database driver, a UTF-8 encoder). :func:`strict_json` rejects them at the door, with NUL
characters (PostgreSQL text cannot hold them), so nothing behind it sees such a value.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "write", "admin")
MIN_KEY_LENGTH = 12
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII without spaces: a valid header value


# -- keys --------------------------------------------------------------------------------------
class ApiKey(BaseModel):
    """One key and what it may do; ``repr`` and logs show ``**********`` for the secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret: SecretStr
    scopes: frozenset[Scope]

    @field_validator("secret")
    @classmethod
    def _usable(cls, secret: SecretStr) -> SecretStr:
        value = secret.get_secret_value()
        if len(value) < MIN_KEY_LENGTH:
            raise ValueError(f"an API key needs at least {MIN_KEY_LENGTH} characters")
        if not _KEY_CHARS.fullmatch(value):
            raise ValueError("an API key may only hold printable ASCII characters without spaces")
        return secret

    @field_validator("scopes")
    @classmethod
    def _some(cls, scopes: frozenset[str]) -> frozenset[str]:
        if not scopes:
            raise ValueError("an API key needs at least one scope")
        return scopes


class KeyFileError(ValueError):
    """A key file that cannot be read or has a malformed line (the message never holds a key)."""


def read_key_file(path: str | Path) -> list[ApiKey]:
    """Keys from a file of lines ``SCOPES KEY``, scopes comma-separated (``read,write
    3f9c...``); blank lines and lines starting with ``#`` are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise KeyFileError(f"cannot read the key file {path}: {type(err).__name__}") from None
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise KeyFileError(f"{path}, line {number}: expected 'SCOPES KEY', e.g. 'read,write <key>'")
        scopes = [s.strip() for s in parts[0].split(",") if s.strip()]
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown:
            raise KeyFileError(f"{path}, line {number}: unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)}")
        try:
            keys.append(ApiKey(secret=parts[1], scopes=frozenset(scopes)))
        except ValueError as err:  # the validators' messages, which name no key
            reason = err.errors()[0]["msg"] if hasattr(err, "errors") else str(err)
            raise KeyFileError(f"{path}, line {number}: {reason}") from None
    return keys


class KeyRing:
    """The server's keys as SHA-256 digests; :meth:`scopes` is a comparison, never a lookup."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._entries = [(_digest(k.secret.get_secret_value()), k.scopes) for k in keys]

    def __len__(self) -> int:
        return len(self._entries)

    def scopes(self, given: str | None) -> frozenset[str] | None:
        """The scopes of ``given``; None when it is missing or matches no key. Every key is
        compared, whatever matched first: the time taken does not depend on which one did."""
        if not given:
            return None
        digest = _digest(given)
        granted: frozenset[str] | None = None
        for expected, scopes in self._entries:
            if hmac.compare_digest(digest, expected):
                granted = scopes if granted is None else granted | scopes
        return granted


class AccessControl:
    """401 or 403 before anything else runs, for the paths in ``required`` (path -> scope, any
    method: Starlette answers HEAD on GET routes too), unless that scope is in ``public``.

    A plain ASGI middleware rather than a FastAPI dependency: it costs one header scan and one
    digest comparison per request instead of a dependency resolution, and a request without a
    key is refused before its body is read or parsed. ``deny(request, status, message)``
    builds the refusal, in the shape the path's clients expect.
    """

    def __init__(self, app: Any, keys: KeyRing, required: dict[str, Scope], public: frozenset[str],
                 deny: Callable[[Request, int, str], Response]) -> None:
        self.app = app
        self.keys = keys
        self.required = {path: scope for path, scope in required.items() if scope not in public}
        self.deny = deny

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        need = self.required.get(scope["path"]) if scope["type"] == "http" else None
        if need is not None:
            granted = self.keys.scopes(_presented_key(scope["headers"]))
            if granted is None or need not in granted:
                status, message = (401, "missing or unknown API key: send it as X-API-Key or Authorization: Bearer") \
                    if granted is None else (403, f"this API key lacks the {need} scope")
                return await self.deny(Request(scope), status, message)(scope, receive, send)
        await self.app(scope, receive, send)


def _presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key of ``X-API-Key``, else of ``Authorization: Bearer``; header values are latin-1."""
    bearer = None
    for name, value in headers:
        if name == b"x-api-key":
            return value.decode("latin-1")
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            bearer = value[7:].strip().decode("latin-1")
    return bearer


def _digest(key: str) -> bytes:
    # Digests have one length, so compare_digest does not even reveal the key's length;
    # surrogatepass: a header value is never refused for its characters before the comparison.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


# -- strict JSON -------------------------------------------------------------------------------
class _Rejected(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _Rejected(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Rejected("a number is too large for a 64-bit float")
    return value


_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)
# Escapes that may decode to a lone surrogate or NUL; only bodies that contain one are walked.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:[dD][89a-fA-F]|0000)")


def strict_json(body: bytes) -> Any:
    """Parse a request body; :class:`json.JSONDecodeError` for anything that is not strict JSON
    in UTF-8 with finite numbers and strings of Unicode scalar values without NUL."""
    try:
        text = body.decode("utf-8")  # strict: raw surrogate bytes are invalid UTF-8
    except UnicodeDecodeError:
        raise json.JSONDecodeError("the body is not UTF-8", "", 0) from None
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError:
        raise
    except _Rejected as err:
        raise json.JSONDecodeError(str(err), "", 0) from None
    except ValueError:  # int() refuses numbers of more than 4300 digits
        raise json.JSONDecodeError("a number with too many digits", "", 0) from None
    except RecursionError:
        raise json.JSONDecodeError("nesting too deep", "", 0) from None
    if _SUSPECT_ESCAPE.search(text) and not _clean_strings(value):
        raise json.JSONDecodeError("strings must be valid Unicode without NUL characters", "", 0)
    return value


def _clean_strings(value: Any) -> bool:
    """Whether every string (keys too) encodes to UTF-8 and holds no NUL; iterative, as deep
    nesting is what a hostile body would try."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item or not _encodable(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_json(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """Routes whose JSON bodies go through :func:`strict_json` (FastAPI's documented way to
    change how a request is read: a route class with a request class of its own)."""

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict


def printable(value: object, limit: int = 200) -> str:
    """``value`` as text that always encodes to UTF-8 (lone surrogates become ``\\udXXX``),
    cut to ``limit`` characters: what an error body may say about client input."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")[:limit]


def validation_errors(errors: Iterable[dict[str, Any]], limit: int = 20) -> list[dict[str, Any]]:
    """Pydantic's errors without the offending input (never echoed: it may be huge, hostile or
    unencodable): where, what, and the kind of error."""
    out = []
    for error in errors:
        message = error.get("msg", "invalid value")
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            message = f"the request body is not valid JSON: {reason}" if reason else "the request body is not valid JSON"
        loc = [p if isinstance(p, int) else printable(p, 100) for p in error.get("loc", ())]
        out.append({"loc": loc, "msg": printable(message), "type": printable(error.get("type", ""), 64)})
        if len(out) == limit:
            break
    return out


# -- request bodies ----------------------------------------------------------------------------
class BodyRejected(HTTPException):
    """413 or 408 raised from a body read: FastAPI passes an HTTPException from there to the
    app's handler (any other exception would become a 400 "error parsing the body")."""


class BodyGuard:
    """Bounds on a request body, declared or streamed (chunked): over ``max_bytes`` is 413; not
    fully arrived ``timeout_s`` after the headers is 408, so a client that sends half a body
    cannot hold a connection and a request slot for ever."""

    def __init__(self, app: Any, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send, self._too_large())
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        received = 0
        complete = False

        async def guarded() -> dict:
            nonlocal received, complete
            if complete:  # after the body, receive() only waits for a disconnect: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyRejected(408, f"the request body did not arrive within {self.timeout_s:g} s") from None
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._too_large()
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        # A BodyRejected raised in a route reaches the app's HTTPException handler, which answers
        # it; nothing of it comes back here.
        await self.app(scope, guarded, send)

    def _too_large(self) -> BodyRejected:
        return BodyRejected(413, f"request body over {self.max_bytes} bytes")

    @staticmethod
    async def _reject(send: Any, err: BodyRejected) -> None:
        """A declared length over the limit: answered before the app sees the request."""
        body = json.dumps({"detail": err.detail}).encode()
        await send({"type": "http.response.start", "status": err.status_code,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


__all__ = [
    "SCOPES", "AccessControl", "ApiKey", "BodyGuard", "BodyRejected", "KeyFileError", "KeyRing", "Scope", "StrictJSONRoute",
    "printable", "read_key_file", "strict_json", "validation_errors",
]
