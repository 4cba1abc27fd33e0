"""Outbox drain: N notifications queued while APNs was down, sent when it is back.

The real daemon runs with N static device tokens; APNs (the stand-in, in a process of
its own) refuses every connection; one press queues N notifications, which the daemon
writes to its SQLite outbox. Once all N rows are on disk, the daemon's memory is read
(the "10,000 queued rows" footprint), then APNs comes back. Reported: the drain rate
from the first to the last request at APNs, the time from APNs being back to the last
request (this includes the daemon's reconnect backoff, at most ``apns.retry_max``), the
time until the outbox is empty on disk, and the daemon's CPU per push while draining.

Also here (``fanouts``): the daemon's RSS after three fan-outs of one ring each to
3,000 phones, all answered by the stand-in, against its RSS before them: what the
engine keeps once the work is done.

    .venv/bin/python benchmarks/outbox_drain.py [--rows 10000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    StandInProcess,
    bench_pki,
    machine,
    proc_cpu_seconds,
    proc_rss_mb,
    scratch,
    wait_until,
)

from edgebell import control
from testkit.fake_receiver import FakeReceiver
from testkit.gateway import (
    FRONT_FRAME,
    DaemonProcess,
    random_token,
    token_auth,
    write_config,
)


def _rows_on_disk(database: Path) -> int:
    # Read-only, beside the daemon's writer (WAL lets readers in without blocking it).
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as conn:
        (count,) = conn.execute("SELECT count(*) FROM notifications").fetchone()
    return int(count)


def measure(rows: int) -> dict[str, Any]:
    root = scratch("edgebell-drain-")
    pki = bench_pki(root)
    with (
        StandInProcess(pki) as standin,
        FakeReceiver(root / "ttyRF", answer_pings=True) as receiver,
    ):
        standin.call("set", knobs={"refuse": True})
        files = write_config(
            root,
            port=str(receiver.path),
            apns_url=standin.url,
            ca_file=pki.ca.cert,
            auth=token_auth(pki.auth_key),
            tokens=[random_token() for _ in range(rows)],
            overrides={"log_level": "info"},
        )
        database = files.state_dir / "outbox.sqlite3"
        daemon = DaemonProcess(files)
        # A long token list takes a while to load: a longer wait than the context manager's.
        daemon.start(timeout=120)
        try:
            assert daemon.proc is not None
            pid = daemon.proc.pid
            daemon.wait_status(lambda s: s["radio"]["connected"])
            idle_rss = proc_rss_mb(pid)
            receiver.write_line(FRONT_FRAME.format(n=1))
            daemon.wait_status(lambda s: s["outbox"]["pending"] == rows, timeout=60)
            wait_until(lambda: _rows_on_disk(database) == rows, 60, f"{rows} rows on disk")
            # Every row has failed against the closed door and waits for the link.
            daemon.wait_status(lambda s: s["outbox"]["in_flight"] == 0, timeout=60)
            queued_rss = proc_rss_mb(pid)
            cpu_before = proc_cpu_seconds(pid)
            back_ns = time.monotonic_ns()
            standin.call("set", knobs={"refuse": False})
            stats = standin.call("wait", count=rows, timeout=300)
            cpu_after = proc_cpu_seconds(pid)
            wait_until(lambda: _rows_on_disk(database) == 0, 60, "an empty outbox on disk")
            empty_ns = time.monotonic_ns()
            peak_rss = proc_rss_mb(pid, "VmHWM")
        finally:
            daemon.stop()
    first_ns, last_ns = stats["first_ns"], stats["last_ns"]
    return {
        "rows": rows,
        "delivered": stats["ok"],
        "drain_rate": round(rows / ((last_ns - first_ns) / 1e9)),
        "drain_s": round((last_ns - first_ns) / 1e9, 3),
        "back_to_last_push_s": round((last_ns - back_ns) / 1e9, 3),
        "back_to_empty_outbox_s": round((empty_ns - back_ns) / 1e9, 3),
        "daemon_cpu_us_per_push": round((cpu_after - cpu_before) / rows * 1e6, 1),
        "rss_mb": {
            "idle_with_tokens": round(idle_rss, 1),
            "queued": round(queued_rss, 1),
            "peak": round(peak_rss, 1),
        },
        # The daemon memory one waiting push costs, 10,000 of them queued.
        "kib_per_queued_push": round((queued_rss - idle_rss) * 1024 / rows, 2),
        "machine": machine(),
    }


def fanouts(phones: int = 3000, rings: int = 3) -> dict[str, Any]:
    """RSS of the daemon before and after ``rings`` rings to ``phones`` phones, answered."""
    root = scratch("edgebell-fanouts-")
    pki = bench_pki(root)
    with (
        StandInProcess(pki) as standin,
        FakeReceiver(root / "ttyRF", answer_pings=True) as receiver,
    ):
        files = write_config(
            root,
            port=str(receiver.path),
            apns_url=standin.url,
            ca_file=pki.ca.cert,
            auth=token_auth(pki.auth_key),
            tokens=[random_token() for _ in range(phones)],
            overrides={"log_level": "info"},
        )
        daemon = DaemonProcess(files)
        daemon.start(timeout=120)
        try:
            assert daemon.proc is not None
            pid = daemon.proc.pid
            daemon.wait_status(lambda s: s["radio"]["connected"] and s["apns"]["connected"])
            before = proc_rss_mb(pid)
            took = []
            each = []
            for n in range(1, rings + 1):
                started = time.monotonic()
                # As `edgebell ring` does: no debounce or cooldown between the rings.
                answer = control.request(
                    files.control_socket, {"cmd": "ring", "button": "front"}, timeout=30
                )
                assert answer["ok"], answer
                standin.call("wait", count=phones * n, timeout=120)
                daemon.wait_status(lambda s: s["outbox"]["pending"] == 0, timeout=60)
                took.append(round(time.monotonic() - started, 3))
                each.append(round(proc_rss_mb(pid), 1))
            after = proc_rss_mb(pid)
            peak = proc_rss_mb(pid, "VmHWM")
        finally:
            daemon.stop()
    return {
        "phones": phones,
        "rings": rings,
        "rss_mb": {
            "before": round(before, 1),
            "after_each": each,
            "after": round(after, 1),
            "peak": round(peak, 1),
        },
        "ring_s": took,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.rows)
    result["fanouts"] = fanouts()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"outbox drain: {result['rows']} notifications queued while APNs was down")
    print(
        f"  drained at {result['drain_rate']} pushes/s ({result['drain_s']} s first to last);"
        f" APNs back -> last push {result['back_to_last_push_s']} s,"
        f" -> outbox empty on disk {result['back_to_empty_outbox_s']} s"
    )
    print(f"  daemon CPU while draining: {result['daemon_cpu_us_per_push']} us/push")
    rss = result["rss_mb"]
    print(
        f"  daemon RSS: {rss['idle_with_tokens']} MiB idle with {args.rows} tokens,"
        f" {rss['queued']} MiB with {args.rows} rows queued, peak {rss['peak']} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
