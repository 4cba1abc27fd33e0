"""Home Assistant beside Apple: frame -> event at a Home Assistant subscriber and -> APNs request.

Runs the real daemon (``edgebell run`` subprocess) with a pty receiver, the local
TLS HTTP/2 APNs stand-in and a real Mosquitto as the home broker, with the Home
Assistant stand-in subscribed to it. Each press is timed from the frame's last byte
to the moment the event is at the Home Assistant subscriber, and, in the same run,
to the moment the APNs stand-in has the request: the two paths leave the daemon in
parallel and neither waits for the other (CLOCK_MONOTONIC, shared by the processes).

    .venv/bin/python benchmarks/ha_latency.py [--rings 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from common import bench_pki, machine, scratch, summary

from testkit.fake_receiver import FakeReceiver
from testkit.gateway import (
    FRONT_FRAME,
    TOPIC,
    DaemonProcess,
    random_token,
    token_auth,
    write_config,
)
from testkit.ha_peer import HomeAssistantPeer
from testkit.home_broker import GATEWAY_USER, HA_USER, HomeBroker
from testkit.standin_thread import StandInThread

_BETWEEN_RINGS = 0.005  # past the 1 ms debounce: the next frame is a new press
EVENTS = "edgebell/gw-test/front/event"


def measure(rings: int) -> dict[str, Any]:
    root = scratch("edgebell-bench-ha-")
    pki = bench_pki(root)
    to_event: list[float] = []
    to_apns: list[float] = []
    with (
        StandInThread.for_pki(pki, topic=TOPIC) as apns,
        FakeReceiver(root / "ttyRF", answer_pings=True) as receiver,
        HomeBroker(root / "home-broker") as broker,
        HomeAssistantPeer(
            broker.host, broker.port, username=HA_USER, password=broker.users[HA_USER]
        ) as ha,
    ):
        files = write_config(
            root,
            port=str(receiver.path),
            apns_url=apns.url,
            ca_file=pki.ca.cert,
            auth=token_auth(pki.auth_key),
            tokens=[random_token()],
            overrides={
                "radio": {"debounce": "1ms", "cooldown": 0},
                "log_level": "info",
                "home_assistant": {
                    "url": broker.url,
                    "username": GATEWAY_USER,
                    "password_file": str(broker.password_files[GATEWAY_USER]),
                },
            },
        )
        with DaemonProcess(files) as daemon:
            daemon.wait_status(
                lambda s: s["radio"]["connected"] and s["home_assistant"]["connected"]
            )
            ha.wait_until(lambda: len(ha.entities("event")) == 2)
            for n in range(rings + 1):  # the first press warms code paths: not counted
                events, pushes = len(ha.events(EVENTS)), len(apns.received())
                receiver.write_line(FRONT_FRAME.format(n=n % 256))
                sent_ns = time.monotonic_ns()
                ha.wait_until(lambda e=events: len(ha.events(EVENTS)) > e)
                apns.wait_for(lambda s, p=pushes: len(s.received) > p, timeout=10)
                if n:
                    to_event.append((ha.events(EVENTS)[events].at_ns - sent_ns) / 1e6)
                    to_apns.append((apns.received()[pushes].received_ns - sent_ns) / 1e6)
                time.sleep(_BETWEEN_RINGS)
            daemon.stop()
    return {
        "rings": rings,
        "frame_to_home_assistant_event_ms": summary(to_event),
        "frame_to_apns_request_ms": summary(to_apns),
        "machine": machine(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rings", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.rings)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    e, a = result["frame_to_home_assistant_event_ms"], result["frame_to_apns_request_ms"]
    print(f"{args.rings} presses, one phone, Home Assistant on a local Mosquitto, same run")
    print(f"  frame -> event at Home Assistant: p50 {e['p50']} ms, p99 {e['p99']} ms")
    print(f"  frame -> request at APNs:         p50 {a['p50']} ms, p99 {a['p99']} ms")
    print(f"  {result['machine']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
