"""``edgebell cloud keygen | sign-tokens | verify-tokens | mint-apns-jwt``: the cloud's tools."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures_mqtt import entry

from edgebell.cli import main
from edgebell.cloud.tokenlist import verify_token_list
from edgebell.cloud.tools import load_verify_key
from testkit.apns_auth import ProviderTokenVerifier
from testkit.gateway import KEY_ID, TEAM_ID, random_token
from testkit.pki import TestPki


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["cloud", *argv], out=out)
    return code, out.getvalue()


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    code, out = run("keygen", "--dir", str(tmp_path / "keys"))
    assert code == 0
    private, public = tmp_path / "keys" / "token-list.key", tmp_path / "keys" / "token-list.pub"
    assert str(private) in out
    assert str(public) in out
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"BEGIN PUBLIC KEY" in public.read_bytes()
    assert run("keygen", "--dir", str(tmp_path / "keys"))[0] == 1  # never overwrites by surprise
    assert run("keygen", "--dir", str(tmp_path / "keys"), "--force")[0] == 0


def test_a_signed_list_verifies_as_the_gateway_checks_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run("keygen", "--dir", str(tmp_path))
    a, b = random_token(), random_token(8)
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps([entry(a), entry(b, env="production", buttons=["back"])]))
    before = int(time.time() * 1000)
    code, jws = run(
        "sign-tokens", str(tokens), "--key", str(tmp_path / "token-list.key"), "--gateway", "gw-7"
    )
    assert code == 0, capsys.readouterr().err
    assert "for gw-7: 2 tokens" in capsys.readouterr().err
    token_list = verify_token_list(
        jws.strip().encode(), load_verify_key(tmp_path / "token-list.pub"), "gw-7"
    )
    assert token_list.ver >= before  # epoch milliseconds: strictly increasing by default
    assert [t.token for t in token_list.tokens] == [a, b]

    signed = tmp_path / "list.jws"
    signed.write_text(jws)
    code, out = run(
        "verify-tokens", str(signed), "--key", str(tmp_path / "token-list.pub"), "--gateway", "gw-7"
    )
    assert code == 0
    assert "2 tokens" in out
    assert a not in out  # human output shows tokens shortened
    assert a[:8] in out
    code, _ = run(
        "verify-tokens", str(signed), "--key", str(tmp_path / "token-list.pub"), "--gateway", "gw-8"
    )
    assert code == 1
    assert "another gateway" in capsys.readouterr().err


def test_sign_tokens_takes_full_claims_and_refuses_what_a_gateway_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run("keygen", "--dir", str(tmp_path))
    key = str(tmp_path / "token-list.key")
    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps({"aud": "gw-1", "ver": 42, "tokens": [entry(random_token())]}))
    code, jws = run("sign-tokens", str(claims), "--key", key, "--out", str(tmp_path / "out"))
    assert (code, jws) == (0, "")
    assert (tmp_path / "out").read_text().count(".") == 2
    claims.write_text(json.dumps({"aud": "gw-1", "ver": 42, "tokens": [entry("abc")]}))
    assert run("sign-tokens", str(claims), "--key", key)[0] == 1
    assert "would refuse" in capsys.readouterr().err
    claims.write_text(json.dumps([entry(random_token())]))
    assert run("sign-tokens", str(claims), "--key", key)[0] == 1
    assert "--gateway" in capsys.readouterr().err


def test_mint_apns_jwt_makes_a_jwt_apple_would_take(pki: TestPki) -> None:
    code, token = run(
        "mint-apns-jwt",
        "--key",
        str(pki.auth_key.private_key),
        "--key-id",
        KEY_ID,
        "--team-id",
        TEAM_ID,
    )
    assert code == 0
    verifier = ProviderTokenVerifier(pki.auth_key.auth_keys())
    assert verifier.check(token.strip(), time.time()) is None
    code, message = run(
        "mint-apns-jwt",
        "--key",
        str(pki.auth_key.private_key),
        "--key-id",
        KEY_ID,
        "--team-id",
        TEAM_ID,
        "--iat",
        "1700000000",
        "--message",
    )
    document = json.loads(message)
    assert document["iat"] == 1700000000
    assert verifier.check(document["jwt"], 1700000000 + 10) is None


def test_the_tools_refuse_a_key_others_can_read(tmp_path: Path, pki: TestPki) -> None:
    run("keygen", "--dir", str(tmp_path))
    os.chmod(tmp_path / "token-list.key", 0o644)
    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps({"aud": "gw-1", "tokens": []}))
    assert run("sign-tokens", str(claims), "--key", str(tmp_path / "token-list.key"))[0] == 1


def test_the_cloud_tools_need_no_gateway_config(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgebell", "cloud", "keygen", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "EDGEBELL_CONFIG": str(tmp_path / "missing.yaml")},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "token-list.pub").exists()
