"""Where a key named by a bare name is looked for: systemd 252's credential search path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgebell.config import check_config, load_config
from edgebell.errors import ConfigError
from edgebell.secrets import CREDENTIAL_STORES, resolve_secret_path

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "edgebell.service"
# systemd 252's search path for LoadCredential=NAME (systemd.exec(5)), in its order.
SYSTEMD_252 = (
    "/etc/credstore:/run/credstore:/usr/local/lib/credstore:/usr/lib/credstore:/lib/credstore"
)

CONFIG = """\
gateway: {id: gw-0001}
radio: {port: /dev/ttyUSB0, protocol: rflink}
apns:
  topic: com.example.doorbell
  environment: production
  auth: {mode: token, key_file: edgebell.apns.p8, key_id: ABC123DEFG, team_id: DEF123GHIJ}
tokens: [{token: 8b3c0e1f2a3b4c5d, env: sandbox}]
"""


def test_search_path_is_systemds() -> None:
    assert ":".join(str(p) for p in CREDENTIAL_STORES) == SYSTEMD_252


def test_unit_comment_names_the_same_search_path() -> None:
    comments = " ".join(
        line.lstrip("# ").strip() for line in UNIT.read_text().splitlines() if line.startswith("#")
    )
    assert " ".join(SYSTEMD_252.split(":")) in comments.replace(",", "").replace(" and ", " ")


def test_a_key_in_usr_local_lib_credstore_is_found(tmp_path: Path) -> None:
    stores = [tmp_path / p.lstrip("/") for p in SYSTEMD_252.split(":")]
    for store in stores:
        store.mkdir(parents=True)
    (stores[2] / "edgebell.apns.p8").write_text("")
    found = resolve_secret_path(
        "edgebell.apns.p8", base_dir=tmp_path / "etc-edgebell", environ={}, stores=stores
    )
    assert found == stores[2] / "edgebell.apns.p8"


@pytest.mark.parametrize("credentials", [None, "/run/credentials/edgebell.service"])
def test_a_missing_key_names_every_place_searched(tmp_path: Path, credentials: str | None) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    environ = {} if credentials is None else {"CREDENTIALS_DIRECTORY": credentials}
    with pytest.raises(ConfigError) as info:
        check_config(load_config(path, environ=environ))
    message = str(info.value)
    assert message.startswith(
        f"{path}:6: apns.auth.key_file: APNs auth key edgebell.apns.p8 not found"
    )
    places = message.split(" not found in: ", 1)[1].split(" (keys belong")[0].split(", ")
    first = f"($CREDENTIALS_DIRECTORY = {credentials})" if credentials else "is not set here)"
    assert places[0].startswith("the service's credentials")
    assert places[0].endswith(first)
    assert places[1:] == [str(tmp_path), *SYSTEMD_252.split(":")]  # in the order searched


def test_check_config_command_names_the_places(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    result = subprocess.run(
        [sys.executable, "-m", "edgebell", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 2
    assert "/usr/local/lib/credstore, /usr/lib/credstore, /lib/credstore" in result.stderr


def test_an_explicit_path_names_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.replace("edgebell.apns.p8", str(tmp_path / "AuthKey.p8")))
    with pytest.raises(ConfigError) as info:
        check_config(load_config(path, environ={}))
    assert str(info.value).endswith(f"APNs auth key {tmp_path / 'AuthKey.p8'} does not exist")
    assert "credstore" not in str(info.value)
