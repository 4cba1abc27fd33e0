"""Every benchmark of issue 6 in one run: prints the table and writes docs/benchmarks.md.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only ITEMS] [--json FILE]
        [--no-doc | --doc FILE] [--from-json FILE]

``scripts/bench`` sets the machine up and runs this. ``--quick`` runs every item small
(seconds, for checking the harness; its figures are not the issue's) and, like
``--only`` (a comma-separated subset of ring,household,fanout,drain,footprint,fleet,
home_assistant,registry),
leaves docs/benchmarks.md alone unless ``--doc`` names a file. ``--from-json`` renders
the table and the document again from the raw results an earlier ``--json`` wrote.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import fanout
import fleet
import footprint
import ha_latency
import outbox_drain
import registry as registry_bench
import report
import ring_latency
from common import HERE, machine

from edgebell import __version__
from testkit.mosquitto import mosquitto_binary
from testkit.rabbitmq import rabbitmq_installed

ITEMS = (
    "ring",
    "household",
    "fanout",
    "drain",
    "footprint",
    "fleet",
    "home_assistant",
    "registry",
)
DOC = HERE.parent / "docs" / "benchmarks.md"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _versions() -> str:
    parts = [f"edgebell {__version__} ({_git_revision()})"]
    for package in ("aioapns", "httpx", "h2", "hpack"):
        try:
            parts.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{package} not installed")
    lock = HERE / "node" / "node_modules" / "@parse" / "node-apn" / "package.json"
    if lock.exists():
        parts.append(f"@parse/node-apn {json.loads(lock.read_text())['version']}")
    if shutil.which("node"):
        done = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
        parts.append(f"node {done.stdout.strip()}")
    for tool, flag in (("h2load", "--version"), ("mosquitto", "-h")):
        if shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists():
            done = subprocess.run(
                [shutil.which(tool) or f"/usr/sbin/{tool}", flag],
                capture_output=True,
                text=True,
                check=False,
            )
            first = (done.stdout or done.stderr).strip().splitlines()
            parts.append(first[0] if first else tool)
    return ", ".join(parts)


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(HERE.parent), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"commit {rev}{' with local changes' if dirty else ''}"


def run(items: tuple[str, ...], quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    small = quick
    if "ring" in items:
        rings = 20 if small else 200
        _say(f"1/7 ring latency: {rings} rings to one phone, then fresh daemons for the first ring")
        result = ring_latency.measure(rings, 1)
        result["first_ring_after_start_ms"] = ring_latency.measure_first_ring(
            2 if small else 5, cold_connection=False
        )
        result["first_ring_cold_connection_ms"] = ring_latency.measure_first_ring(
            2 if small else 5, cold_connection=True
        )
        results["ring"] = result
    if "household" in items:
        rings = 20 if small else 200
        _say(f"2/7 household fan-out: {rings} rings to 20 phones")
        results["household"] = ring_latency.measure(rings, 20)
    if "fanout" in items:
        peers = tuple(p for p in fanout.PEERS if p != "h2load" or shutil.which("h2load"))
        if "h2load" not in peers:
            _say("   h2load not found (apt-get install nghttp2-client): no stand-in ceiling")
        if not fanout.node_apn_installed():
            peers = tuple(p for p in peers if p != "node-apn")
            _say("   node-apn not installed (scripts/bench installs it with npm): not compared")
        count, rounds = (1000, 1) if small else (10_000, 5)
        _say(f"3/7 sustained fan-out: {', '.join(peers)}, {count:,} pushes each, {rounds} rounds")
        results["fanout"] = fanout.measure(count, rounds, peers)
    if "drain" in items:
        rows = 1000 if small else 10_000
        _say(f"4/7 outbox drain: {rows:,} rows queued while APNs is down")
        results["drain"] = outbox_drain.measure(rows)
        results["drain"]["fanouts"] = outbox_drain.fanouts(300 if small else 3000, 3)
    if "footprint" in items:
        idle = 5.0 if small else 60.0
        _say(f"5/7 footprint: idle daemon with 1,000 tokens, {idle:g} s idle, status, imports")
        results["footprint"] = footprint.measure(1000, idle, 5 if small else 20, 3 if small else 10)
    if "fleet" in items:
        if mosquitto_binary() is None:
            _say("6/7 fleet: skipped, mosquitto is not installed (scripts/setup installs it)")
            results["fleet_pending"] = "Not measured: mosquitto was not installed."
        else:
            gateways, rounds = (50, 1) if small else (500, 3)
            _say(f"6/7 fleet: {gateways} gateways' cloud sync on a local Mosquitto, {rounds} lists")
            results["fleet"] = fleet.measure(gateways, rounds)
        if rabbitmq_installed():
            _say("6/7 fleet: the same on a 3-node RabbitMQ cluster (starting it takes a while)")
            results["fleet_cluster"] = fleet.measure(gateways, rounds, "rabbitmq")
        else:
            _say("6/7 fleet: no RabbitMQ cluster, rabbitmq-server is not installed (setup does)")
            results["fleet_cluster_pending"] = "Not measured: rabbitmq-server was not installed."
    if "home_assistant" in items:
        if mosquitto_binary() is None:
            _say("7/7 Home Assistant: skipped, mosquitto is not installed (scripts/setup does)")
            results["home_assistant_pending"] = "Not measured: mosquitto was not installed."
        else:
            rings = 20 if small else 200
            _say(f"7/7 Home Assistant: {rings} rings, event at the subscriber beside APNs")
            results["home_assistant"] = ha_latency.measure(rings)
    if "registry" in items:
        if mosquitto_binary() is None:
            _say("8/8 token registry: skipped, mosquitto is not installed (scripts/setup does)")
            results["registry_pending"] = "Not measured: mosquitto was not installed."
        else:
            gateways, samples = (500, 20) if small else (10_000, 200)
            _say(f"8/8 token registry: {gateways:,} gateways x 10 phones, SQLite and PostgreSQL")
            results["registry"] = [
                registry_bench.measure(gateways, samples),
                registry_bench.measure(gateways, samples, postgres=True),
            ]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="everything small: checks the harness")
    parser.add_argument("--only", default=",".join(ITEMS), help="comma-separated items")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--no-doc", action="store_true", help="write no document")
    parser.add_argument("--doc", type=Path, help="write the document here (any run)")
    parser.add_argument("--from-json", type=Path, help="render earlier raw results again")
    args = parser.parse_args()
    items = tuple(item for item in args.only.split(",") if item)
    unknown = set(items) - set(ITEMS)
    if unknown:
        parser.error(f"unknown items {sorted(unknown)}; items are {', '.join(ITEMS)}")
    if args.from_json is not None:
        results = json.loads(args.from_json.read_text())
        full = False
    else:
        results = measure_all(items, args.quick)
        full = not args.quick and set(items) == set(ITEMS)
    print(report.table(results))
    for note in report.notes(results):
        print(f"- {note}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    doc = args.doc if args.doc is not None else (DOC if full else None)
    if args.no_doc or doc is None:
        if not args.no_doc:
            _say(f"{DOC.relative_to(HERE.parent)} holds full runs of every item: not rewritten")
        return 0
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(report.markdown(results, report.notes))
    _say(f"wrote {doc}")
    return 0


def measure_all(items: tuple[str, ...], quick: bool) -> dict[str, Any]:
    """Run the items; their results with the ``run`` section (when, what, where)."""
    started = datetime.datetime.now(datetime.UTC)
    start = time.monotonic()
    load_before = round(os.getloadavg()[0], 2)
    results = run(items, quick)
    results["run"] = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": time.monotonic() - start,
        "command": os.environ.get("EDGEBELL_BENCH_COMMAND")
        or shlex.join(["benchmarks/run_all.py", *sys.argv[1:]]),
        "machine": machine(),
        "versions": _versions(),
        "load_before": load_before,
        "load_after": round(os.getloadavg()[0], 2),
        "quick": quick,
    }
    return results


if __name__ == "__main__":
    sys.exit(main())
