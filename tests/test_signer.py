"""The JWT signer's child process: what it signs, what it refuses, and when it fails.

The daemon never imports cryptography for token auth: every provider JWT comes from
``python -m edgebell.apns.jwt_child``. These tests run that child for real.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fixtures_apns import KEY_ID, TEAM_ID, pki

from edgebell.apns.jwt_child import EXIT_BAD_KEY, main
from edgebell.apns.signer import Signer, SignerUnavailable
from edgebell.errors import ApnsAuthError
from testkit.gateway import DaemonProcess, GatewayFiles
from testkit.pki import TestPki
from testkit.standin_thread import StandInThread
from testkit.waiting import wait_until

FIXTURES = (pki,)  # pytest finds them by name in this module
WAIT = 10.0


def signer(pki: TestPki, **kw: Any) -> Signer:
    return Signer(pki.auth_key.private_key.read_bytes(), KEY_ID, TEAM_ID, **kw)


def hanging(pid_file: Path) -> tuple[str, ...]:
    """A signer command that writes its pid to ``pid_file`` and never answers."""
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    return (sys.executable, "-c", code)


def alive(pid_file: Path) -> bool:
    """Whether the child that wrote ``pid_file`` (waited for) still exists."""
    wait_until(lambda: pid_file.exists() and pid_file.read_text(), WAIT, "the child's pid file")
    return Path(f"/proc/{int(pid_file.read_text())}").exists()


def decoded(pki: TestPki, token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token, pki.auth_key.load_public_key(), algorithms=["ES256"], options={"verify_iat": False}
    )
    return claims


@pytest.mark.asyncio
async def test_the_child_signs_an_es256_jwt_apple_verifies(pki: TestPki) -> None:
    iat = int(time.time())
    token = await signer(pki).mint(iat)
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": KEY_ID, "typ": "JWT"}
    assert decoded(pki, token) == {"iss": TEAM_ID, "iat": iat}
    signer(pki).check(iat)  # the blocking form, for start-up: no error


@pytest.mark.asyncio
async def test_a_key_that_cannot_sign_is_named_not_shown(tmp_path: Path) -> None:
    other_curve = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    wrong = Signer(other_curve, KEY_ID, TEAM_ID, name="/etc/edgebell/AuthKey.p8")
    with pytest.raises(ApnsAuthError) as info:
        await wrong.mint(int(time.time()))
    message = str(info.value)
    assert message == (
        "/etc/edgebell/AuthKey.p8 holds another kind of key; expected the"
        " AuthKey_XXXXXXXXXX.p8 file from Apple (a PKCS#8 EC P-256 private key)"
    )
    assert not isinstance(info.value, SignerUnavailable)  # a person must fix this one
    body = other_curve.splitlines()[1].decode()
    assert body[:16] not in message
    with pytest.raises(ApnsAuthError, match=r"is not the AuthKey_XXXXXXXXXX\.p8 file"):
        Signer(b"not a key", KEY_ID, TEAM_ID).check(int(time.time()))


@pytest.mark.asyncio
async def test_a_signer_that_cannot_start_is_unavailable_not_a_bad_key(pki: TestPki) -> None:
    missing = signer(pki, command=("/nonexistent/python3", "-m", "edgebell.apns.jwt_child"))
    with pytest.raises(SignerUnavailable, match=r"cannot start the JWT signer \(/nonexistent"):
        await missing.mint(int(time.time()))
    with pytest.raises(SignerUnavailable, match="cannot start the JWT signer"):
        missing.check(int(time.time()))


@pytest.mark.asyncio
async def test_a_crashing_signer_says_how_it_ended(pki: TestPki) -> None:
    crash = signer(pki, command=(sys.executable, "-c", "raise MemoryError('no room')"))
    with pytest.raises(SignerUnavailable) as info:
        await crash.mint(int(time.time()))
    assert str(info.value) == (
        f"the JWT signer for key {KEY_ID} failed (exit status 1): MemoryError: no room"
    )


@pytest.mark.asyncio
async def test_a_hanging_signer_is_killed_at_its_timeout(pki: TestPki, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    slow = signer(pki, command=hanging(pid_file), timeout=1.0)
    with pytest.raises(SignerUnavailable, match="did not answer within 1 s"):
        await slow.mint(int(time.time()))
    assert not await asyncio.to_thread(alive, pid_file)  # killed and reaped: nothing left


@pytest.mark.asyncio
async def test_a_cancelled_mint_leaves_no_child(pki: TestPki, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    task = asyncio.create_task(signer(pki, command=hanging(pid_file)).mint(int(time.time())))
    assert await asyncio.to_thread(alive, pid_file)  # the child runs: now cancel its mint
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await asyncio.to_thread(alive, pid_file)


def test_the_child_refuses_a_malformed_request() -> None:
    out, err = io.BytesIO(), io.BytesIO()
    assert main(io.BytesIO(b"{not json\n"), out, err) == 1
    assert err.getvalue() == b"the JWT signer got a malformed request\n"
    assert out.getvalue() == b""
    request = b'{"kid": "K", "iss": "T", "iat": 1, "name": "k.p8"}\nnot a key'
    assert main(io.BytesIO(request), out, err) == EXIT_BAD_KEY


def test_the_daemon_signs_without_mapping_cryptography(gateway_files: GatewayFiles) -> None:
    """Token auth runs without cryptography in the daemon: its JWTs still pass Apple's check."""
    with DaemonProcess(gateway_files) as daemon:
        status = daemon.wait_status(lambda s: s["apns"]["credentials"]["state"] == "verified")
        assert status["problems"] == []
        assert daemon.proc is not None
        maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
        assert "cryptography" not in maps  # its Rust library: about 10 MB of RSS


def test_a_signer_that_stops_working_is_said_and_nothing_is_lost(
    gateway_files: GatewayFiles,
    apns_standin_thread: StandInThread,
    phones: list[str],
    tmp_path: Path,
) -> None:
    """The child fails after a good start: status says why at once; the ring waits, then goes."""
    hook, broken = tmp_path / "hook", tmp_path / "signer-broken"
    hook.mkdir()
    # Runs at the start of every interpreter of the daemon's: it breaks the signer's alone.
    (hook / "sitecustomize.py").write_text(
        "import os, sys\n"
        f"if 'edgebell.apns.jwt_child' in sys.orig_argv and os.path.exists({str(broken)!r}):\n"
        "    sys.stderr.write('the signer is broken (test)\\n')\n"
        "    os._exit(1)\n"
    )
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    with DaemonProcess(gateway_files, env={"PYTHONPATH": path}) as daemon:
        daemon.wait_status(lambda s: s["apns"]["credentials"]["state"] == "verified")
        broken.touch()
        apns_standin_thread.set(jwt_max_age=-1)  # Apple calls the JWT in use expired
        assert daemon.cli("ring", "front").returncode == 0
        said = (
            f"cannot make a provider JWT: the JWT signer for key {KEY_ID} failed"
            " (exit status 1): the signer is broken (test)"
        )
        status = daemon.wait_status(lambda s: said in s["problems"])
        assert status["state"] == "degraded"
        assert status["outbox"]["pending"] == len(phones)  # waiting, not lost
        refused = apns_standin_thread.responses()  # the pushes Apple called expired
        assert {(r.status, r.reason) for r in refused} == {(403, "ExpiredProviderToken")}
        broken.unlink()
        apns_standin_thread.set(jwt_max_age=3600)
        # The next try (apns.retry_max: 1 s here) makes a JWT; the ring reaches every phone.
        daemon.wait_status(lambda s: s["outbox"]["pending"] == 0 and not s["problems"])
        delivered = [r.token for r in apns_standin_thread.responses() if r.status == 200]
        assert sorted(delivered) == sorted(phones)
    log = gateway_files.log.read_text()
    assert log.count(f"ERROR   edgebell.apns.auth: {said}") == 1  # said once, not per try
    assert "provider JWT made again" in log
