"""Provider JWTs made in the test's own process: the signer's function, without its child.

The daemon signs every JWT in a child process (``edgebell.apns.jwt_child``); tests of the
APNs client, the outbox and the credentials check run the client in-process and inject
this mint instead, so that they need no process per test. The child itself is tested in
tests/test_signer.py and runs under every test that starts the real daemon.
"""

from __future__ import annotations

from typing import Any

from edgebell.apns.auth import Mint, TokenAuth
from edgebell.apns.jwt_child import sign


def in_process_mint(key_pem: bytes, key_id: str, team_id: str) -> Mint:
    """What ``Signer.mint`` returns, computed here: the same claims, key checks and errors."""

    async def mint(iat: int) -> str:
        return sign(key_pem, key_id, team_id, iat)

    return mint


def in_process_token_auth(key_pem: bytes, key_id: str, team_id: str, **kw: Any) -> TokenAuth:
    """A TokenAuth whose JWTs are signed in this process (``kw``: TokenAuth's options)."""
    return TokenAuth(key_id, team_id, mint=in_process_mint(key_pem, key_id, team_id), **kw)
