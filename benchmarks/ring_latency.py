"""Ring latency: last byte of a radio frame written to the pty -> request seen by the APNs stand-in.

Runs the real daemon (``edgebell run`` subprocess) against a pty receiver and the
local TLS HTTP/2 stand-in, presses the button N times, and reports the median and
spread of the time from the frame's last byte to the moment the stand-in has the
whole request, and to the moment it has answered the last push of the ring (all
read from CLOCK_MONOTONIC, which one Linux machine shares across processes).
Debounce and cooldown are set to almost nothing so that every press rings; each
press waits for its pushes before the next one. The stand-in runs on a thread of
this process, the daemon in its own: they share no event loop.

The first ring after start is measured apart, on fresh daemons: once as the daemon
runs it (the APNs connection opened at start-up, every code path still cold), and
once on a cold connection (APNs refused connections while the daemon started, so
the ring itself pays for TCP, TLS and the HTTP/2 preface).

    .venv/bin/python benchmarks/ring_latency.py [--rings 200] [--tokens 1] [--starts 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import bench_pki, machine, scratch, summary

from testkit.apns_standin import ReceivedPush
from testkit.fake_receiver import FakeReceiver
from testkit.gateway import (
    FRONT_FRAME,
    TOPIC,
    DaemonProcess,
    GatewayFiles,
    random_token,
    token_auth,
    write_config,
)
from testkit.pki import TestPki
from testkit.standin_thread import StandInThread

# Past the 1 ms debounce: the next frame is a new press.
_BETWEEN_RINGS = 0.005


class Answers:
    """When the stand-in answered each push (its own thread calls this)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.at: list[int] = []

    def __call__(self, push: ReceivedPush) -> None:
        now = time.monotonic_ns()
        if not push.to_device:
            return  # the daemon's credentials check at start: no ring's push
        with self._lock:
            self.at.append(now)

    def since(self, index: int) -> list[int]:
        with self._lock:
            return self.at[index:]

    def count(self) -> int:
        with self._lock:
            return len(self.at)


def _config(
    root: Path, pki: TestPki, receiver: FakeReceiver, apns: StandInThread, tokens: list[str]
) -> GatewayFiles:
    return write_config(
        root,
        port=str(receiver.path),
        apns_url=apns.url,
        ca_file=pki.ca.cert,
        auth=token_auth(pki.auth_key),
        tokens=tokens,
        # info: the level a gateway runs at (each ring is logged).
        overrides={"radio": {"debounce": "1ms", "cooldown": 0}, "log_level": "info"},
    )


def _ring(
    receiver: FakeReceiver, apns: StandInThread, answers: Answers, n: int, tokens: int
) -> tuple[float, float, float]:
    """One press: ms from the frame's last byte to first request, last request, last answer."""
    seen = answers.count()
    receiver.write_line(FRONT_FRAME.format(n=n % 256))
    sent_ns = time.monotonic_ns()
    apns.wait_for(lambda s: sum(1 for r in s.responses if r.to_device) >= seen + tokens, timeout=10)
    pushes = apns.responses()[seen : seen + tokens]
    arrivals = sorted(p.received_ns for p in pushes)
    answered = max(answers.since(seen)[:tokens])
    return (
        (arrivals[0] - sent_ns) / 1e6,
        (arrivals[-1] - sent_ns) / 1e6,
        (answered - sent_ns) / 1e6,
    )


def measure(rings: int, tokens: int) -> dict[str, Any]:
    """``rings`` presses on one running daemon, each to ``tokens`` phones, warm connection."""
    root = scratch("edgebell-bench-")
    pki = bench_pki(root)
    phones = [random_token() for _ in range(tokens)]
    first_ms: list[float] = []
    last_ms: list[float] = []
    answered_ms: list[float] = []
    answers = Answers()
    with (
        StandInThread.for_pki(pki, topic=TOPIC) as apns,
        FakeReceiver(root / "ttyRF", answer_pings=True) as receiver,
    ):
        apns.set(on_response=answers)
        files = _config(root, pki, receiver, apns, phones)
        with DaemonProcess(files) as daemon:
            daemon.wait_status(lambda s: s["radio"]["connected"])
            # The first ring also pays for code paths warming up: measured apart, below.
            _ring(receiver, apns, answers, 0, tokens)
            time.sleep(_BETWEEN_RINGS)
            for i in range(1, rings + 1):
                first, last, answered = _ring(receiver, apns, answers, i, tokens)
                first_ms.append(first)
                last_ms.append(last)
                answered_ms.append(answered)
                time.sleep(_BETWEEN_RINGS)
            daemon.stop()
    return {
        "rings": rings,
        "tokens": tokens,
        "first_push_ms": summary(first_ms),
        "last_push_ms": summary(last_ms),
        "all_answered_ms": summary(answered_ms),
    }


def measure_first_ring(starts: int, *, cold_connection: bool) -> dict[str, Any]:
    """The first ring after start of ``starts`` fresh daemons (frame -> request at APNs)."""
    root = scratch("edgebell-bench-first-")
    pki = bench_pki(root)
    samples: list[float] = []
    answers = Answers()
    with StandInThread.for_pki(pki, topic=TOPIC) as apns:
        apns.set(on_response=answers)
        for start in range(starts):
            run = root / f"start-{start}"
            run.mkdir()
            with FakeReceiver(run / "ttyRF", answer_pings=True) as receiver:
                files = _config(run, pki, receiver, apns, [random_token()])
                apns.set(refuse=cold_connection)
                with DaemonProcess(files) as daemon:
                    daemon.wait_status(lambda s: s["radio"]["connected"])
                    apns.set(refuse=False)
                    first, _, _ = _ring(receiver, apns, answers, start, 1)
                    samples.append(first)
                    daemon.stop()
    return summary(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rings", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=1)
    parser.add_argument("--starts", type=int, default=5, help="fresh daemons for the first ring")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.rings, args.tokens)
    if args.starts:
        result["first_ring_after_start_ms"] = measure_first_ring(args.starts, cold_connection=False)
        result["first_ring_cold_connection_ms"] = measure_first_ring(
            args.starts, cold_connection=True
        )
    result["machine"] = machine()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    f, last, a = result["first_push_ms"], result["last_push_ms"], result["all_answered_ms"]
    print(f"ring latency over {args.rings} rings to {args.tokens} phone(s), warm connection")
    print(
        f"  frame -> first request at APNs: p50 {f['p50']} ms, p90 {f['p90']} ms, "
        f"p99 {f['p99']} ms (min {f['min']}, max {f['max']})"
    )
    print(f"  frame -> last request of the ring: p50 {last['p50']} ms, p99 {last['p99']} ms")
    print(f"  frame -> all pushes answered: p50 {a['p50']} ms, p99 {a['p99']} ms")
    if args.starts:
        for key, label in (
            ("first_ring_after_start_ms", "first ring after start"),
            ("first_ring_cold_connection_ms", "first ring, cold connection"),
        ):
            s = result[key]
            print(f"  {label}: p50 {s['p50']} ms ({s['min']}-{s['max']}, {s['n']} starts)")
    print(f"  {result['machine']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
