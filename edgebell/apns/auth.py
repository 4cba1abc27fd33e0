"""How edgebell proves itself to APNs: provider JWT, TLS client certificate, or the cloud's JWT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from edgebell.apns.model import JWT_REFRESH_RANGE, MAX_JWT_AGE, Outcome, PushResult
from edgebell.errors import ApnsAuthError, ApnsError

log = logging.getLogger(__name__)

MIN_REFRESH, MAX_REFRESH = JWT_REFRESH_RANGE
# Even while holding a JWT after TooManyProviderTokenUpdates, a new one is made this early,
# leaving a margin for the difference between our clock and Apple's.
HARD_LIMIT = MAX_JWT_AGE - 2 * 60
# How long to keep the current JWT after Apple said we update too often.
UPDATE_HOLD = MIN_REFRESH
# A clock that steps back further than this (NTP after a boot without RTC) makes a new JWT.
CLOCK_STEP_BACK = 60.0
# A JWT that could not be made (signer did not answer, key refused) is tried again this often
# (the daemon passes apns.retry_max).
MINT_RETRY = 60.0


class ApnsAuth(Protocol):
    """What the client needs from an auth mode."""

    @property
    def mode(self) -> str:
        """The mode's name, as in the config and ``status``: token, certificate, delegated."""
        ...

    @property
    def problem(self) -> str | None:
        """Why no credential can be made now (status lists it); None when all is well."""
        ...

    def authorization(self) -> str | None:
        """The ``authorization`` header value for the next request; None: none to send now."""
        ...

    async def wait_authorization(self) -> str | None:
        """After ``authorization()`` gave None: wait for one being made; None if none comes."""
        ...

    def configure(self, ssl_ctx: ssl.SSLContext) -> None:
        """Add what this mode needs to the TLS context of new connections."""
        ...

    def on_result(self, result: PushResult, authorization: str | None = None) -> None:
        """Learn from Apple's answer to a request that carried ``authorization``."""
        ...

    async def aclose(self) -> None:
        """Stop any work in the background."""
        ...


# Makes the JWT issued at the given time (Signer.mint: a child process signs it).
Mint = Callable[[int], Awaitable[str]]


class TokenAuth:
    """An ES256 provider JWT made from the team's ``.p8`` key, shared by all requests.

    The JWT is reused until it is ``refresh_after`` seconds old, never past an hour. Making
    one takes a child process (edgebell.apns.signer), so it is made in the background while
    the current one is still good: a ring never waits for it. Only a request that finds no
    usable JWT (before the first, after Apple called it expired) waits for the next one.
    """

    mode = "token"

    def __init__(
        self,
        key_id: str,
        team_id: str,
        *,
        mint: Mint,
        refresh_after: float = 2400,
        retry_after: float = MINT_RETRY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not MIN_REFRESH <= refresh_after <= MAX_REFRESH:
            raise ValueError(
                f"refresh_after must be between {MIN_REFRESH} and {MAX_REFRESH} s,"
                f" not {refresh_after}"
            )
        if not key_id or not team_id:
            raise ApnsAuthError("an APNs auth key needs both a key id and a team id")
        self._key_id = key_id
        self._team_id = team_id
        self._make = mint
        self._refresh_after = refresh_after
        self._retry_after = retry_after
        self._clock = clock
        self._header: str | None = None
        self._minted_at = 0.0
        self._hold_until = 0.0
        self._task: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self.problem: str | None = None

    def __repr__(self) -> str:
        return f"TokenAuth(key_id={self._key_id!r}, team_id={self._team_id!r})"

    def authorization(self) -> str | None:
        now = self._clock()
        header = self._header
        if header is not None and self._fresh(now):
            return header
        self._start_minting(now)
        return header if header is not None and self._usable(now) else None

    async def wait_authorization(self) -> str | None:
        # Twice at most: a JWT begun before the clock jumped is no use after it.
        for _ in range(2):
            now = self._clock()
            if self._header is None or not self._fresh(now):
                self._start_minting(now)
            task = self._task
            if task is not None:
                # Shielded: a request given up on must not cancel the JWT others wait for.
                await asyncio.shield(task)
            header = self._header
            if header is not None and self._usable(self._clock()):
                return header
        return None

    def configure(self, ssl_ctx: ssl.SSLContext) -> None:
        """Token auth needs nothing from TLS."""

    def on_result(self, result: PushResult, authorization: str | None = None) -> None:
        outcome = result.outcome
        if outcome is Outcome.AUTH_RENEW:
            self.renew(authorization)
        elif outcome is Outcome.AUTH_BACKOFF:
            self.too_many_updates()

    def renew(self, stale: str | None) -> None:
        """Apple called ``stale`` expired: make a new JWT, unless that happened already.

        N requests in flight with one JWT get N ExpiredProviderToken answers; only the first
        one finds ``stale`` still current, so one new JWT is made, not N.
        """
        if stale is None or stale == self._header:
            self._header = None
            self._hold_until = 0.0
            self._retry_at = 0.0

    def too_many_updates(self) -> None:
        """Apple says we make JWTs too often: keep the current one longer (never past an hour)."""
        self._hold_until = self._clock() + UPDATE_HOLD

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _usable(self, now: float) -> bool:
        """Apple still takes it: younger than the hard limit (and the clock did not jump back)."""
        age = now - self._minted_at
        return -CLOCK_STEP_BACK <= age < HARD_LIMIT

    def _fresh(self, now: float) -> bool:
        """Usable and not yet due for renewal."""
        if not self._usable(now):
            return False
        return now - self._minted_at < self._refresh_after or now < self._hold_until

    def _start_minting(self, now: float) -> None:
        if self._task is None and now >= self._retry_at:
            self._task = asyncio.get_running_loop().create_task(
                self._mint(now), name="edgebell-jwt"
            )

    async def _mint(self, now: float) -> None:
        try:
            token = await self._make(int(now))
        except Exception as exc:  # whatever went wrong, the sender must not raise
            self._retry_at = self._clock() + self._retry_after
            why = str(exc) if isinstance(exc, ApnsError) else f"{type(exc).__name__}: {exc}"
            problem = f"cannot make a provider JWT: {why}"
            if self.problem != problem:  # said once; status keeps saying it
                log.error("%s; trying again every %g s", problem, self._retry_after)
            self.problem = problem
        else:
            self._header = f"bearer {token}"
            self._minted_at = now
            self._hold_until = 0.0
            if self.problem is not None:
                log.info("provider JWT made again")
            self.problem = None
        finally:
            self._task = None


class CertificateAuth:
    """A TLS client certificate with its key: a PEM file holding both, or a ``.p12``.

    Loaded (and checked) at construction, so a wrong passphrase fails at start-up.
    """

    mode = "certificate"
    problem: str | None = None  # a certificate that does not load stops the start (ApnsAuthError)

    def __init__(self, cert_file: Path, passphrase: bytes | None = None) -> None:
        self._path = cert_file
        try:
            data = cert_file.read_bytes()
        except OSError as exc:
            raise ApnsAuthError(
                f"cannot read APNs client certificate {cert_file}: {exc.strerror}"
            ) from exc
        self._pem: bytes | None = None
        self._password: bytes | None = passphrase
        if b"-----BEGIN" not in data:
            self._pem, self._password = _pkcs12_as_pem(data, passphrase, cert_file)
        # A throw-away context proves the key opens and matches the certificate.
        self.configure(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))

    def __repr__(self) -> str:
        return f"CertificateAuth({str(self._path)!r})"

    def authorization(self) -> str | None:
        return None  # the TLS client certificate is the credential

    def configure(self, ssl_ctx: ssl.SSLContext) -> None:
        # A callback, not None: with None, OpenSSL would prompt on a terminal for a passphrase.
        password = self._password if self._password is not None else _no_password
        try:
            if self._pem is None:
                ssl_ctx.load_cert_chain(self._path, password=password)
                return
            # load_cert_chain reads files only: a private directory (0700) and file (0600),
            # removed right after; the key in it is encrypted with a one-off password anyway.
            with tempfile.TemporaryDirectory(prefix="edgebell-apns-") as directory:
                path = os.path.join(directory, "client.pem")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as file:
                    file.write(self._pem)
                ssl_ctx.load_cert_chain(path, password=password)
        except (ssl.SSLError, OSError) as exc:
            raise ApnsAuthError(
                f"APNs client certificate {self._path}: cannot load the certificate and its key"
                f" (wrong passphrase, missing key, or key not matching): {_why(exc)}"
            ) from exc

    def on_result(self, result: PushResult, authorization: str | None = None) -> None:
        """A refused certificate needs a person: nothing to do automatically."""

    async def wait_authorization(self) -> str | None:
        return None  # the TLS client certificate is the credential

    async def aclose(self) -> None:
        """Nothing runs in the background."""


def _no_password() -> bytes:
    return b""


def _why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    return str(reason) if reason else type(exc).__name__


def _pkcs12_as_pem(data: bytes, passphrase: bytes | None, path: Path) -> tuple[bytes, bytes]:
    """The certificate, its chain and its key (encrypted with a new random password) as PEM."""
    # Imported here: PKCS#12 brings cryptography's X.509 layer, 2.2 MB of RSS that every
    # gateway on a .p8 key or a PEM certificate would carry for nothing.
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    try:
        key, cert, chain = pkcs12.load_key_and_certificates(data, passphrase)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ApnsAuthError(
            f"APNs client certificate {path}: not a PEM file, and not a PKCS#12 file"
            " this passphrase opens"
        ) from exc
    if key is None or cert is None:
        raise ApnsAuthError(f"APNs client certificate {path}: the .p12 lacks certificate or key")
    password = secrets.token_urlsafe(32).encode("ascii")
    parts = [cert.public_bytes(serialization.Encoding.PEM)]
    parts += [extra.public_bytes(serialization.Encoding.PEM) for extra in chain]
    parts.append(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )
    )
    return b"".join(parts), password


class DelegatedAuth:
    """A provider JWT minted by the cloud for the whole fleet: the newest one received is used.

    The gateway holds no Apple key; without a JWT younger than an hour it sends nothing.
    """

    mode = "delegated"
    problem: str | None = None  # the cloud's status says why no JWT came

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._header: str | None = None
        self._iat: int | None = None

    def __repr__(self) -> str:
        return f"DelegatedAuth(iat={self._iat})"

    def set_token(self, jwt: str, iat: int) -> bool:
        """Take the cloud's JWT if it is newer than the one held; True if taken."""
        if not jwt.startswith("eyJ") or jwt.count(".") != 2:
            raise ApnsAuthError("the cloud's provider JWT is malformed")
        if self._iat is not None and iat <= self._iat:
            return False
        self._header = f"bearer {jwt}"
        self._iat = iat
        return True

    @property
    def iat(self) -> int | None:
        """The ``iat`` of the JWT in use (or last dropped), None before the first one."""
        return self._iat

    def authorization(self) -> str | None:
        if self._header is None or self._iat is None:
            return None
        if self._clock() - self._iat >= MAX_JWT_AGE:
            return None
        return self._header

    async def wait_authorization(self) -> str | None:
        return None  # the next JWT comes when the cloud sends it: nothing to wait for here

    async def aclose(self) -> None:
        """Nothing runs in the background."""

    def configure(self, ssl_ctx: ssl.SSLContext) -> None:
        """Delegated auth needs nothing from TLS."""

    def on_result(self, result: PushResult, authorization: str | None = None) -> None:
        # Apple called the JWT expired: drop it and wait for the cloud's next one. Its iat is
        # kept, so the same retained message delivered again after a reconnect is not re-taken.
        if result.outcome is Outcome.AUTH_RENEW and (
            authorization is None or authorization == self._header
        ):
            self._header = None
