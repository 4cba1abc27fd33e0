"""``scripts/demo`` runs end to end: pushes at the APNs stand-in, the ring in Home Assistant."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_shows_pushes_discovery_and_the_ring_in_home_assistant(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "testkit.demo"],
        env={**os.environ, "TMPDIR": str(tmp_path)},  # whatever it leaves goes with tmp_path
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "APNs <- 200 OK" in out
    assert "Home Assistant discovered one device" in out
    assert "event.edgebell_gw_test_front" in out
    assert "Rings as they reached Home Assistant" in out
    assert "edgebell/gw-test/front/event ring" in out
    assert "home asst  connected" in out
    # The token registry's loop: registered over the API, shared, the dead token dropped.
    assert "gw-test shared with bob: every button" in out
    assert "GET /v1/removed" in out
    assert "back   rang at" in out
    assert "reached 2 of 2 phones" in out
    # Issue 10: every run left a folder with private keys (and an eb-* socket dir) behind.
    assert list(tmp_path.iterdir()) == []


def test_demo_keep_keeps_its_folder_and_says_where(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "testkit.demo", "--keep"],
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [kept] = [p for p in tmp_path.iterdir() if p.name.startswith("edgebell-demo-")]
    assert f"Demo files kept in {kept}" in result.stdout
    assert (kept / "config.yaml").exists()
    assert (kept / "daemon.log").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("eb-")]
