"""config/example.yaml is a working configuration once the files it names exist."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from testkit.pki import make_apns_auth_key, make_ca, make_client_cert, make_ed25519_keypair

EXAMPLE = Path(__file__).parent.parent / "config" / "example.yaml"


def test_example_passes_check_config_with_its_files_in_place(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    # Keys come as systemd credentials (bare names), the rest from /etc/edgebell: generated here.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    auth = make_apns_auth_key(tmp_path / "gen")
    shutil.copy(auth.private_key, credentials / "edgebell.apns.p8")
    (credentials / "edgebell.apns.p8").chmod(0o600)
    ca = make_ca(tmp_path / "gen")
    shutil.copy(ca.cert, etc / "cloud-ca.pem")
    client = make_client_cert(ca, tmp_path / "gen", "gw-0001")
    shutil.copy(client.cert, etc / "gateway.crt")
    shutil.copy(client.key, credentials / "edgebell.gateway.key")
    (credentials / "edgebell.gateway.key").chmod(0o600)
    shutil.copy(make_ed25519_keypair(tmp_path / "gen").public_key, etc / "token-list.pub")

    # check-config looks for the receiver too: one is "plugged in" where the example says.
    by_id = tmp_path / "dev" / "serial" / "by-id"
    by_id.mkdir(parents=True)
    (by_id / "usb-RFLink-if00").touch()
    config = tmp_path / "config.yaml"
    config.write_text(
        EXAMPLE.read_text()
        .replace("/etc/edgebell/", f"{etc}/")
        .replace("/dev/serial/by-id/", f"{by_id}/")
    )
    result = subprocess.run(
        [sys.executable, "-m", "edgebell", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "CREDENTIALS_DIRECTORY": str(credentials)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{config}: OK" in result.stdout


def test_example_without_its_files_names_the_first_missing_one() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgebell", "check-config", "--config", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "apns.auth.key_file" in result.stderr
    assert "edgebell.apns.p8" in result.stderr


def test_the_home_assistant_block_loads_once_uncommented(tmp_path: Path) -> None:
    """The commented ``home_assistant:`` example is a working section, defaults as documented."""
    from edgebell.config import load_config

    lines = EXAMPLE.read_text().splitlines()
    start = lines.index("# home_assistant:")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        text = line[2:]
        if not text.lstrip().startswith("#"):  # keys, not the comments about them
            block.append(text)
    config = tmp_path / "config.yaml"
    config.write_text(EXAMPLE.read_text() + "\n" + "\n".join(block) + "\n")
    home = load_config(config).home_assistant
    assert home is not None
    assert home.url == "mqtt://homeassistant.local:1883"
    assert home.username == "edgebell"
    assert home.node_id == "edgebell_gw_0001"
    assert home.base_topic == "edgebell/gw-0001"
    assert home.max_event_age == 60.0
