"""Who calls the API: a deployment's static bearer tokens, or a maker's own user accounts.

Static tokens (``http.api_tokens_file``, one per line) stand for a maker's backend
and may do everything. A maker whose app talks to the registry directly plugs in
their own user authentication with ``http.auth_hook: package.module:function``:
the function gets an ``AuthRequest`` and returns a ``Principal`` for one user (or
None to refuse); such a caller may only act as that user (docs/cloud.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import importlib
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edgebell.errors import ConfigError, Unauthorised
from edgebell.secrets import read_secret


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``user`` None: may act for every user (a deployment token)."""

    name: str
    user: str | None = None


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """What a hook sees of a request: the method, the path and the headers (names lowercased)."""

    method: str
    path: str
    headers: Mapping[str, str] = field(repr=False)

    @property
    def bearer(self) -> str | None:
        value = self.headers.get("authorization", "")
        scheme, _, credentials = value.partition(" ")
        return credentials.strip() or None if scheme.lower() == "bearer" else None


Hook = Callable[[AuthRequest], "Principal | Awaitable[Principal | None] | None"]


class Authenticator:
    def __init__(self, tokens_file: Path | None, hook: str | None = None) -> None:
        self._file = tokens_file
        self._stamp: tuple[int, int] | None = None
        self._digests: list[bytes] = []
        self._hook = None if hook is None else load_hook(hook)
        self._load()

    @property
    def configured(self) -> bool:
        return bool(self._digests) or self._hook is not None

    def _load(self) -> None:
        """(Re-)read the tokens file when it changed: tokens are rotated without a restart."""
        if self._file is None:
            return
        stat = self._file.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        text = read_secret(self._file, what="API tokens file").decode("utf-8", "replace")
        tokens = [line.strip() for line in text.splitlines()]
        self._digests = [_digest(t) for t in tokens if t and not t.startswith("#")]
        self._stamp = stamp

    async def authenticate(self, request: AuthRequest) -> Principal:
        given = request.bearer
        if given is not None:
            # The file gone for a moment (being replaced): the tokens read last still hold.
            with contextlib.suppress(OSError, ConfigError):
                self._load()
            digest = _digest(given)
            # Compared with every token, in constant time: no timing tells how close a guess was.
            matched = False
            for known in self._digests:
                matched |= hmac.compare_digest(digest, known)
            if matched:
                return Principal("api token")
        if self._hook is not None:
            result = self._hook(request)
            if inspect.isawaitable(result):
                result = await result
            if isinstance(result, Principal):
                return result
        if given is None:
            raise Unauthorised("Authorization: Bearer <token> is required")
        raise Unauthorised("the bearer token is not valid")


def load_hook(spec: str) -> Hook:
    module_name, _, attribute = spec.partition(":")
    try:
        hook = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"http.auth_hook: cannot load {spec}: {exc}") from exc
    if not callable(hook):
        raise ConfigError(f"http.auth_hook: {spec} is not a function")
    return hook  # type: ignore[no-any-return]


def _digest(token: str) -> bytes:
    # Equal-length values for compare_digest, whatever the lengths of the tokens.
    return hashlib.sha256(token.encode()).digest()
