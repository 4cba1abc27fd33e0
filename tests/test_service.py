"""The service as installed: scripts/install.sh staged into a directory, the systemd unit checked.

``install.sh --root DIR`` stages the same files a real install writes. The staged
virtualenv borrows the dependencies of the project's own (``--deps-from``), so the
test needs no download for them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgebell import __version__

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "scripts" / "install.sh"
UNIT = REPO / "systemd" / "edgebell.service"


@dataclass(frozen=True, slots=True)
class Staged:
    root: Path
    output: str  # what the first run said


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INSTALL), "--root", str(root), "--deps-from", sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=root.parent,  # not the checkout: nothing may be imported from there by accident
    )


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Staged:
    root = tmp_path_factory.mktemp("staging") / "root"
    result = install(root)
    assert result.returncode == 0, result.stdout + result.stderr
    return Staged(root, result.stderr)


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under ``root`` with its kind, mode, size, mtime and link target."""
    entries: dict[str, tuple[object, ...]] = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        target = os.readlink(path) if path.is_symlink() else None
        entries[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, target)
    return entries


# -- install.sh ---------------------------------------------------------------------------------


def test_install_stages_the_program_config_unit_and_user(staged: Staged) -> None:
    root = staged.root
    program = root / "opt/edgebell/bin/edgebell"
    version = subprocess.run(
        [str(program), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"edgebell {__version__}"
    where = subprocess.run(
        [str(root / "opt/edgebell/bin/python"), "-c", "import edgebell; print(edgebell.__file__)"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=root,
    )
    assert where.stdout.startswith(str(root / "opt/edgebell/lib/")), where  # its own copy

    config = root / "etc/edgebell/config.yaml"
    assert config.read_text() == (REPO / "config/example.yaml").read_text()
    assert oct(config.stat().st_mode & 0o777) == "0o640"
    assert oct((root / "etc/credstore").stat().st_mode & 0o777) == "0o700"
    unit = root / "etc/systemd/system/edgebell.service"
    assert unit.read_text() == UNIT.read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants/edgebell.service"
    assert os.readlink(wants) == "/etc/systemd/system/edgebell.service"  # enabled
    assert os.readlink(root / "usr/local/bin/edgebell") == "/opt/edgebell/bin/edgebell"
    sysusers = (root / "etc/sysusers.d/edgebell.conf").read_text()
    assert 'u edgebell - "edgebell doorbell gateway" /var/lib/edgebell' in sysusers
    assert "m edgebell dialout" in sysusers
    assert "user edgebell not created in a staging root" in staged.output
    # The USB serial drivers load at boot, before the unit resolves DeviceAllow=char-ttyUSB.
    modules = (root / "etc/modules-load.d/edgebell.conf").read_text()
    assert [m for m in modules.splitlines() if m and not m.startswith("#")] == [
        "usbserial",
        "cdc_acm",
    ]
    # The unit's Documentation= is installed with the program.
    documentation = re.search(r"^Documentation=file:(\S+)$", unit.read_text(), re.M)
    assert documentation is not None
    assert (root / documentation[1].lstrip("/")).read_text() == (
        REPO / "docs/operations.md"
    ).read_text()


def test_install_again_changes_nothing_and_keeps_an_edited_config(staged: Staged) -> None:
    config = staged.root / "etc/edgebell/config.yaml"
    config.write_text(config.read_text().replace("gw-0001", "gw-0042"))
    before = snapshot(staged.root)
    again = install(staged.root)
    assert again.returncode == 0, again.stderr
    assert f"is up to date (edgebell {__version__})" in again.stderr
    assert snapshot(staged.root) == before


def test_uninstall_removes_the_program_and_keeps_config_until_purged(
    staged: Staged, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    shutil.copytree(staged.root, root, symlinks=True)
    for _ in range(2):  # uninstalling twice is as good as once
        result = install(root, "--uninstall")
        assert result.returncode == 0, result.stderr
        for gone in (
            "opt/edgebell",
            "usr/local/bin/edgebell",
            "etc/systemd/system/edgebell.service",
            "etc/systemd/system/multi-user.target.wants/edgebell.service",
            "etc/sysusers.d/edgebell.conf",
            "etc/modules-load.d/edgebell.conf",
        ):
            assert not os.path.lexists(root / gone), gone
        assert (root / "etc/edgebell/config.yaml").exists()
        assert "remove them with --uninstall --purge" in result.stderr
    purged = install(root, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not (root / "etc/edgebell").exists()


# -- the unit -------------------------------------------------------------------------------------


def checkable_unit(staged: Staged, tmp_path: Path) -> Path:
    """The installed unit with ExecStart= and ExecReload= pointing at the staged program.

    systemd-analyze insists that the commands exist; /opt/edgebell is not installed on the
    machine running the tests, so those paths are redirected into the staging root.
    """
    text = (staged.root / "etc/systemd/system/edgebell.service").read_text()
    staged_text, count = re.subn(
        r"^(Exec(?:Start|Reload))=/opt/edgebell/",
        rf"\1={staged.root}/opt/edgebell/",
        text,
        flags=re.M,
    )
    assert count == 2
    unit = tmp_path / "edgebell.service"
    unit.write_text(staged_text)
    return unit


def test_systemd_analyze_verify_passes(staged: Staged, tmp_path: Path) -> None:
    unit = checkable_unit(staged, tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "edgebell.service" not in result.stdout + result.stderr  # no warning about it


def test_systemd_analyze_security_is_ok_with_the_serial_port_reachable(
    staged: Staged, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unit = checkable_unit(staged, tmp_path)

    def analyze(*args: str) -> str:
        result = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", *args, str(unit)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    overall = re.search(r"Overall exposure level for edgebell\.service: ([0-9.]+) (\w+)", analyze())
    assert overall is not None
    score, verdict = float(overall[1]), overall[2]
    with capsys.disabled():
        print(f"\nsystemd-analyze security --offline=true: exposure {score} {verdict}")
    assert verdict in ("OK", "SAFE", "PERFECT")
    assert score <= 2.0

    checks = {c["name"]: c for c in json.loads(analyze("--json=short"))}
    # The receiver stays reachable: devices are not made private, the ACL admits the USB ports.
    assert checks["PrivateDevices="]["set"] is False
    assert "char-ttyUSB:rw" in checks["DeviceAllow="]["description"]
    assert "char-ttyACM:rw" in checks["DeviceAllow="]["description"]
    for name in ("User=/DynamicUser=", "NoNewPrivileges=", "ProtectSystem=", "ProtectHome="):
        assert checks[name]["set"] is True, name
