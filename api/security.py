"""API keys: when any is configured, every route but ``GET /health`` needs ``Authorization: Bearer <key>``
or, as Anthropic's clients send it, ``x-api-key: <key>`` (the same keys; the web page's own files
excepted: ``/`` and ``/web/<file>``, see :mod:`api.web.assets`).

A pure ASGI layer, so it covers everything behind it alike: JSON routes, SSE streams, ``/metrics``,
the 501 routes and paths that match no route (a 404 only after the key is checked). Keys are
compared as SHA-256 digests with :func:`hmac.compare_digest` against every configured key, without
stopping at the first match, so the time taken says nothing about which key (or how much of one)
matched. Keys are never logged and never echoed.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Iterable, Optional

from starlette.types import ASGIApp, Receive, Scope, Send

from tasks.contract.errors import JobError
from tasks.contract.settings import load_api_keys

from .errors import error_response
from .web.assets import public_paths

__all__ = ["ApiKeyMiddleware", "KeyChecker", "bearer_token", "load_api_keys", "presented_keys"]

# The web page's own files load without a key (it asks for one when its data calls get a 401).
OPEN_ROUTES = frozenset({("GET", "/health")} | {("GET", path) for path in public_paths()})


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> Optional[str]:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def presented_keys(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The keys a request presents: its bearer token and its ``x-api-key``, each when present."""
    headers = list(headers)
    keys = [token] if (token := bearer_token(headers)) is not None else []
    keys += [v.decode("latin-1").strip() for k, v in headers if k == b"x-api-key" and v.strip()][:1]
    return keys


class KeyChecker:
    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def valid(self, token: str) -> bool:
        given = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        ok = False
        for digest in self._digests:  # every key, every time: no early exit
            ok |= hmac.compare_digest(given, digest)
        return ok


def auth_error(missing: bool) -> JobError:
    message = ("Missing API key: send it as `Authorization: Bearer <key>` (or `x-api-key: <key>`)." if missing
               else "Incorrect API key provided.")
    return JobError(message, status_code=401, type="authentication_error", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"})


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: Iterable[str]) -> None:
        self.app = app
        self.checker = KeyChecker(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope.get("method"), scope.get("path")) in OPEN_ROUTES:
            await self.app(scope, receive, send)
            return
        keys = presented_keys(scope.get("headers", ()))
        if any([self.checker.valid(k) for k in keys]):  # a list: every key presented is checked
            await self.app(scope, receive, send)
            return
        await error_response(auth_error(missing=not keys), scope.get("path", ""))(scope, receive, send)
