"""What a gateway installs: the package, and none of the repository's test doubles."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_the_daemon_and_no_stand_ins(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("edgebell-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    modules = {n.split("/")[0] for n in names if n.endswith(".py")}
    assert modules == {"edgebell"}
    assert "edgebell/daemon.py" in names
    assert not [n for n in names if "testkit" in n or "/testing/" in n]
