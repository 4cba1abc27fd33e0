"""The benchmark harness works end to end, run small (figures are reported, never asserted).

``scripts/bench`` is only useful if every benchmark still runs against the code as it
is: each one is run here with tiny sizes, as its own process, and the report is
rendered from what they returned. The peers (aioapns, httpx, h2load) are extras of
the ``bench`` run, so only edgebell's own client takes part here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
TIMEOUT = 120
# Starting and joining three RabbitMQ nodes alone takes up to a minute on a busy machine.
TIMEOUTS = {"fleet_cluster": 600}

RUNS = {
    "ring": ["ring_latency.py", "--rings", "3", "--tokens", "1", "--starts", "1"],
    "household": ["ring_latency.py", "--rings", "3", "--tokens", "3", "--starts", "0"],
    "fanout": ["fanout.py", "--count", "300", "--rounds", "2", "--peers", "edgebell"],
    "drain": ["outbox_drain.py", "--rows", "100"],
    "footprint": [
        "footprint.py",
        *("--tokens", "10", "--idle", "0.2", "--status-runs", "1", "--import-runs", "1"),
    ],
    "fleet": ["fleet.py", "--gateways", "3", "--rounds", "2"],
    "fleet_cluster": ["fleet.py", "--gateways", "3", "--rounds", "1", "--broker", "rabbitmq"],
    "home_assistant": ["ha_latency.py", "--rings", "3"],
    "registry": ["registry.py", "--gateways", "20", "--samples", "3"],
}


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    """Every benchmark, small, all at once (they share nothing but the machine)."""
    procs = {
        item: subprocess.Popen(
            [sys.executable, str(BENCHMARKS / script), *args, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for item, (script, *args) in RUNS.items()
    }
    out: dict[str, Any] = {}
    try:
        for item, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=TIMEOUTS.get(item, TIMEOUT))
            assert proc.returncode == 0, f"{item} failed:\n{stderr[-3000:]}"
            out[item] = json.loads(stdout)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            # Pipes of the benchmarks never read (one failed first) would otherwise be
            # reported as unclosed files in whichever test the garbage collector runs next.
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
    return out


def test_ring_latency_measures_every_ring_and_both_first_rings(results: dict[str, Any]) -> None:
    ring = results["ring"]
    assert ring["first_push_ms"]["n"] == 3
    assert ring["first_ring_after_start_ms"]["n"] == 1
    assert ring["first_ring_cold_connection_ms"]["n"] == 1
    household = results["household"]
    assert household["tokens"] == 3
    s = household["all_answered_ms"]
    assert s["min"] <= s["p50"] <= s["p99"] <= s["max"]
    assert "first_ring_after_start_ms" not in household


def test_fanout_reports_rate_cpu_and_the_stand_ins_share(results: dict[str, Any]) -> None:
    fanout = results["fanout"]
    edgebell = fanout["clients"]["edgebell"]
    assert (fanout["count"], fanout["rounds"]) == (300, 2)
    assert edgebell["rate"]["min"] <= edgebell["rate"]["median"] <= edgebell["rate"]["max"]
    assert edgebell["cpu_us_per_push"]["median"] > 0
    assert edgebell["server_us_per_request"] > 0
    assert fanout["edgebell_ratio"] == {}  # no peer ran


def test_outbox_drain_delivers_every_queued_row(results: dict[str, Any]) -> None:
    drain = results["drain"]
    assert drain["delivered"] == drain["rows"] == 100
    assert drain["rss_mb"]["queued"] > 0


def test_footprint_reads_memory_cpu_status_and_imports(results: dict[str, Any]) -> None:
    footprint = results["footprint"]
    memory = footprint["idle_memory_mb"]
    assert 0 < memory["uss"] <= memory["pss"] <= memory["rss"]
    assert footprint["idle_cpu_pct"] >= 0
    assert footprint["status_ms"]["n"] == footprint["status_small_config_ms"]["n"] == 1
    assert footprint["imports_rss_mb"] > 0


def test_fleet_sees_every_gateway_take_every_list(results: dict[str, Any]) -> None:
    fleet = results["fleet"]
    assert fleet["gateways"] == 3
    assert fleet["publish_to_in_use_ms"]["n"] == 3 * 2
    assert fleet["broker_memory_mb"]["with_fleet"]["rss"] > 0


def test_fleet_runs_on_a_rabbitmq_cluster(results: dict[str, Any]) -> None:
    cluster = results["fleet_cluster"]
    assert (cluster["broker"], cluster["broker_nodes"], cluster["gateways"]) == ("rabbitmq", 3, 3)
    assert cluster["publish_to_in_use_ms"]["n"] == 3
    assert cluster["broker_start_s"] > 0
    assert cluster["broker_memory_mb"]["with_fleet"]["rss"] > 0


def test_home_assistant_latency_beside_apns_in_one_run(results: dict[str, Any]) -> None:
    home = results["home_assistant"]
    assert home["frame_to_home_assistant_event_ms"]["n"] == 3
    assert home["frame_to_apns_request_ms"]["n"] == 3


def test_registry_times_shares_and_feedback_to_the_new_list(results: dict[str, Any]) -> None:
    registry = results["registry"]
    assert (registry["gateways"], registry["phones"]) == (20, 200)
    assert registry["share_to_list_ms"]["n"] == registry["feedback_to_list_ms"]["n"] == 3
    assert registry["removed"] == 3
    assert registry["memory_after_mb"]["rss"] > 0


def test_report_renders_every_item_against_its_target(
    results: dict[str, Any], tmp_path: Path
) -> None:
    raw = tmp_path / "results.json"
    raw.write_text(json.dumps({**results, "run": _run_section()}))
    doc = tmp_path / "benchmarks.md"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "run_all.py"),
            "--from-json",
            str(raw),
            "--doc",
            str(doc),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "ring latency p50" in done.stdout
    text = doc.read_text()
    for heading in (
        "## Figures against targets",
        "## 3. Sustained fan-out",
        "## 6. Fleet",
        "### The same fleet on a 3-node RabbitMQ cluster",
        "## 7. Home Assistant",
        "## 8. Token registry",
    ):
        assert heading in text
    assert "≤ 150 ms" in text
    assert "## What limits the figures" in text


def _run_section() -> dict[str, Any]:
    return {
        "started": "2025-01-01 00:00 UTC",
        "duration_s": 1.0,
        "command": "scripts/bench",
        "machine": {"cpu": "cpu", "cores": 2, "memory_gib": 1, "os": "Linux", "python": "3.11"},
        "versions": "edgebell",
        "load_before": 0.0,
        "load_after": 0.0,
        "quick": True,
    }
