"""The provider-key signer: every ES256 JWT is made by a short-lived child process.

Why a child: cryptography's Rust library (with the OpenSSL it carries) costs a process
about 10 MB of resident memory from the moment it is imported until the process ends:
a quarter of the idle daemon, spent on one small signature every 40 minutes. So the
daemon never imports it for token auth. It keeps the ``.p8`` key's bytes and, for each
JWT, runs ``python -m edgebell.apns.jwt_child``: the child reads the claims and the key on
stdin, prints the JWT and exits (about 60 ms of one core and 26 MB, for that moment). The
same child checks the key at start-up (``check_config``), so a wrong key still stops
``edgebell run`` with exit 2 and the message below, before the first ring.

The wire between the two: stdin carries one JSON line ``{"kid", "iss", "iat", "name"}``
(``name``: the key file, for messages), then the key's PEM bytes. On success the child
prints the JWT and exits 0; for a key that cannot sign it prints one line saying why on
stderr and exits 2 (:data:`EXIT_BAD_KEY`). Any other end (no interpreter, a crash, a
timeout) is :class:`SignerUnavailable`: the key may be fine, so the daemon keeps its JWT,
tries again, and ``status`` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import Sequence

from edgebell.apns.jwt_child import EXIT_BAD_KEY
from edgebell.errors import ApnsAuthError, ApnsError
from edgebell.printable import printable

SIGN_TIMEOUT = 30.0  # seconds: a loaded 2-core gateway starts the child in well under 1 s
_MAX_OUTPUT = 4096  # a JWT from a 10-character kid and team is about 200 bytes


class SignerUnavailable(ApnsError):
    """The signer child did not answer (could not start, crashed, timed out): retry later."""


def _request(pem: bytes, key_id: str, team_id: str, iat: int, name: str) -> bytes:
    claims = json.dumps({"kid": key_id, "iss": team_id, "iat": iat, "name": name})
    return claims.encode() + b"\n" + pem


def _answer(returncode: int, out: bytes, err: bytes, key_id: str) -> str:
    """The JWT the child printed, or the error its exit status and stderr mean."""
    if returncode == 0:
        jwt = out.decode("ascii", "replace").strip()
        if jwt.count(".") == 2 and jwt.startswith("eyJ"):
            return jwt
        raise SignerUnavailable("the JWT signer printed no JWT")
    lines = err.decode("utf-8", "replace").strip().splitlines()
    # The child's own messages never hold key bytes; a traceback's last line names the error.
    said = printable(lines[-1][:300]) if lines else "no message"
    if returncode == EXIT_BAD_KEY:
        raise ApnsAuthError(said)
    ended = f"exit status {returncode}" if returncode > 0 else f"signal {-returncode}"
    raise SignerUnavailable(f"the JWT signer for key {key_id} failed ({ended}): {said}")


class Signer:
    """Signs provider JWTs with one ``.p8`` key by running the child (see the module doc)."""

    def __init__(
        self,
        key_pem: bytes,
        key_id: str,
        team_id: str,
        *,
        # -P: the child does not put its working directory first on its import path.
        command: Sequence[str] = (sys.executable, "-P", "-m", "edgebell.apns.jwt_child"),
        timeout: float = SIGN_TIMEOUT,
        name: str = "",
    ) -> None:
        if not key_id or not team_id:
            raise ApnsAuthError("an APNs auth key needs both a key id and a team id")
        self._pem = key_pem
        self.key_id = key_id
        self.team_id = team_id
        self._command = tuple(command)
        self._timeout = timeout
        self._name = name or f"APNs auth key {key_id}"

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id!r}, team_id={self.team_id!r})"

    async def mint(self, iat: int) -> str:
        """A JWT issued at ``iat``, made by a child; the event loop waits for nothing."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            raise SignerUnavailable(
                f"cannot start the JWT signer ({self._command[0]}): {exc.strerror or exc}"
            ) from exc
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(_request(self._pem, self.key_id, self.team_id, iat, self._name)),
                self._timeout,
            )
        except TimeoutError:
            raise SignerUnavailable(
                f"the JWT signer did not answer within {self._timeout:g} s"
            ) from None
        finally:
            if proc.returncode is None:  # timed out or cancelled: no child is left behind
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(proc.wait())
        # communicate() returned, so the child has ended and returncode is set.
        returncode = proc.returncode if proc.returncode is not None else -1
        return _answer(returncode, out[:_MAX_OUTPUT], err[-_MAX_OUTPUT:], self.key_id)

    def check(self, iat: int) -> None:
        """Sign once, blocking (start-up and ``check-config``): ApnsAuthError for a bad key."""
        try:
            done = subprocess.run(
                self._command,
                input=_request(self._pem, self.key_id, self.team_id, iat, self._name),
                capture_output=True,
                timeout=self._timeout,
                check=False,
            )
        except OSError as exc:
            raise SignerUnavailable(
                f"cannot start the JWT signer ({self._command[0]}): {exc.strerror or exc}"
            ) from exc
        except subprocess.TimeoutExpired:
            raise SignerUnavailable(
                f"the JWT signer did not answer within {self._timeout:g} s"
            ) from None
        _answer(done.returncode, done.stdout[:_MAX_OUTPUT], done.stderr[-_MAX_OUTPUT:], self.key_id)
