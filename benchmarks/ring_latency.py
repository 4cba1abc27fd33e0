"""Ring latency: last byte of a radio frame written to the pty -> request seen by the APNs stand-in.

Runs the real daemon (``edgebell run`` subprocess) against a pty receiver and the
local TLS HTTP/2 stand-in, presses the button N times, and reports the median and
spread of the time from the frame's last byte to the moment the stand-in has the
whole request (both read from CLOCK_MONOTONIC, which one Linux machine shares
across processes). Debounce and cooldown are set to almost nothing so that every
press rings; each press waits for its pushes before the next one.

    .venv/bin/python benchmarks/ring_latency.py [--rings 200] [--tokens 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from edgebell.testing.fake_receiver import FakeReceiver
from edgebell.testing.gateway import (
    FRONT_FRAME,
    KEY_ID,
    TEAM_ID,
    TOPIC,
    DaemonProcess,
    random_token,
    write_config,
)
from edgebell.testing.pki import make_test_pki
from edgebell.testing.standin_thread import StandInThread


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def measure(rings: int, tokens: int) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="edgebell-bench-"))
    pki = make_test_pki(root / "pki", key_id=KEY_ID, team_id=TEAM_ID)
    phones = [random_token() for _ in range(tokens)]
    first_ms: list[float] = []  # frame -> first request of the ring
    all_ms: list[float] = []  # frame -> last request of the ring
    with (
        StandInThread(
            certfile=pki.server.cert,
            keyfile=pki.server.key,
            topic=TOPIC,
            auth_keys=pki.auth_key.auth_keys(),
        ) as apns,
        FakeReceiver(root / "ttyRF", answer_pings=True) as receiver,
    ):
        files = write_config(
            root,
            port=str(receiver.path),
            apns_url=apns.url,
            ca_file=pki.ca.cert,
            auth={
                "mode": "token",
                "key_file": str(pki.auth_key.private_key),
                "key_id": KEY_ID,
                "team_id": TEAM_ID,
            },
            tokens=phones,
            overrides={"radio": {"debounce": "1ms", "cooldown": 0}, "log_level": "warning"},
        )
        with DaemonProcess(files) as daemon:
            daemon.wait_status(lambda s: s["radio"]["connected"])
            for i in range(rings + 1):
                seen = len(apns.responses())
                receiver.write_line(FRONT_FRAME.format(n=i % 256))
                sent_ns = time.monotonic_ns()
                apns.wait_for(lambda s, n=seen: len(s.responses) >= n + tokens, timeout=10)
                pushes = apns.responses()[seen : seen + tokens]
                arrivals = sorted(p.received_ns for p in pushes)
                if i > 0:  # the first ring also pays for imports warming up; reported apart
                    first_ms.append((arrivals[0] - sent_ns) / 1e6)
                    all_ms.append((arrivals[-1] - sent_ns) / 1e6)
                else:
                    cold = (arrivals[0] - sent_ns) / 1e6
                time.sleep(0.005)  # past the 1 ms debounce: the next frame is a new press
            daemon.stop()
    return {
        "rings": rings,
        "tokens": tokens,
        "first_push_ms": {
            "p50": round(statistics.median(first_ms), 3),
            "p90": round(percentile(first_ms, 90), 3),
            "p99": round(percentile(first_ms, 99), 3),
            "min": round(min(first_ms), 3),
            "max": round(max(first_ms), 3),
        },
        "all_pushes_ms": {
            "p50": round(statistics.median(all_ms), 3),
            "p99": round(percentile(all_ms, 99), 3),
        },
        "first_ring_after_start_ms": round(cold, 3),
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()} {platform.release()}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rings", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.rings, args.tokens)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    f = result["first_push_ms"]
    a = result["all_pushes_ms"]
    assert isinstance(f, dict)
    assert isinstance(a, dict)
    print(f"ring latency over {args.rings} rings to {args.tokens} phone(s), warm connection")
    print(
        f"  frame -> first request at APNs: p50 {f['p50']} ms, p90 {f['p90']} ms, "
        f"p99 {f['p99']} ms (min {f['min']}, max {f['max']})"
    )
    print(f"  frame -> last request of the ring: p50 {a['p50']} ms, p99 {a['p99']} ms")
    print(f"  first ring after start: {result['first_ring_after_start_ms']} ms")
    print(f"  {result['machine']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
