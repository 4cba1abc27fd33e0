"""Token list latency: the cloud publishes a signed list -> first push to the phone it adds.

Runs the real daemon (``edgebell run`` subprocess) against a local Mosquitto (TLS,
client certificates, the ACL of docs/mqtt.md), the TLS HTTP/2 APNs stand-in and a
pty receiver. Each round the cloud signs a list that adds one new phone (signing
is the cloud's work, done before the clock starts), publishes it retained on
``P/tokens`` and right after it a ``ring`` command on ``P/cmd``; the broker delivers
both in order, so the ring is the first moment the new list can be used.

Two figures per round, both from CLOCK_MONOTONIC (shared by every process on one
Linux machine):

- publish -> first push: the cloud starts publishing the list -> the stand-in has
  the push to the newly added phone (list verified, taken, rung, pushed);
- publish -> confirmed: the cloud starts publishing -> it receives the gateway's
  retained ``P/status`` naming the new ``tokens_ver``.

    .venv/bin/python benchmarks/token_list.py [--lists 50] [--tokens 10] [--json]
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
from typing import Any

from common import bench_pki

from edgebell.cloud import tools
from testkit.cloud_peer import CloudPeer
from testkit.fake_receiver import FakeReceiver
from testkit.gateway import (
    GATEWAY_ID,
    TOPIC,
    DaemonProcess,
    random_token,
    token_auth,
    write_config,
)
from testkit.mosquitto import CLOUD_USER, MosquittoBroker
from testkit.pki import make_client_cert
from testkit.standin_thread import StandInThread

P = f"edgebell/{GATEWAY_ID}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 2),
        "p90": round(percentile(values, 90), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def entry(token: str) -> dict[str, Any]:
    return {"token": token, "env": "sandbox", "user": "bench", "registered_at": 0}


def measure(lists: int, tokens: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="edgebell-bench-"))
    pki = bench_pki(root)
    cloud_identity = make_client_cert(pki.ca, root / "pki", CLOUD_USER)
    signing_key = tools.load_signing_key(pki.token_list_key.private_key)
    base = [entry(random_token()) for _ in range(tokens - 1)]
    to_push_ms: list[float] = []
    to_confirm_ms: list[float] = []
    with (
        StandInThread.for_pki(pki, topic=TOPIC) as apns,
        FakeReceiver(root / "ttyRF", answer_pings=True) as receiver,
        MosquittoBroker(root / "broker", ca=pki.ca, server=pki.server) as broker,
        CloudPeer(
            broker.host, broker.port, ca=pki.ca.cert, identity=cloud_identity, subscribe=[f"{P}/#"]
        ) as cloud,
    ):
        files = write_config(
            root,
            port=str(receiver.path),
            apns_url=apns.url,
            ca_file=pki.ca.cert,
            auth=token_auth(pki.auth_key),
            overrides={
                "cloud": {
                    "url": broker.url,
                    "ca_file": str(pki.ca.cert),
                    "cert_file": str(pki.client.cert),
                    "key_file": str(pki.client.key),
                    "token_list_key": str(pki.token_list_key.public_key),
                },
                "log_level": "warning",
            },
        )
        with DaemonProcess(files) as daemon:
            daemon.wait_status(lambda s: s["cloud"]["connected"] and s["radio"]["connected"])
            ver = int(time.time() * 1000)
            for n in range(lists + 1):  # round 0 warms the code paths up and is not counted
                newcomer = random_token()
                ver += 1
                claims = tools.token_list_claims(
                    # First on the list, so the ring's first push is the one to it: the
                    # figure is the list's way in, not the fan-out of the phones before it.
                    {"aud": GATEWAY_ID, "ver": ver, "tokens": [entry(newcomer), *base]}
                )
                jws = tools.sign_token_list(claims, signing_key)
                published_ns = time.monotonic_ns()
                cloud.publish(f"{P}/tokens", jws, retain=True)
                cloud.publish(
                    f"{P}/cmd", json.dumps({"id": f"r{n}", "cmd": "ring", "button": "front"})
                )
                apns.wait_for(lambda s, t=newcomer: any(p.token == t for p in s.responses), 10)
                pushed_ns = min(p.received_ns for p in apns.responses() if p.token == newcomer)
                status = cloud.wait_message(
                    f"{P}/status", lambda m, v=ver: m.get("tokens_ver") == v, timeout=10
                )
                cloud.wait_message(f"{P}/cmd/reply", lambda m, i=f"r{n}": m["id"] == i)
                daemon.wait_status(lambda s: s["outbox"]["pending"] == 0)
                if n == 0:
                    continue
                to_push_ms.append((pushed_ns - published_ns) / 1e6)
                to_confirm_ms.append((status.at_ns - published_ns) / 1e6)
            refused = daemon.status()["cloud"]["refused_lists"]
    return {
        "lists": lists,
        "tokens_per_list": tokens,
        "publish_to_first_push_ms": summary(to_push_ms),
        "publish_to_confirmed_ms": summary(to_confirm_ms),
        "refused": refused,
        "machine": {"cpu": platform.processor() or platform.machine(), "python": sys.version},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lists", type=int, default=50, help="lists published (default 50)")
    parser.add_argument("--tokens", type=int, default=10, help="phones per list (default 10)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = measure(args.lists, max(1, args.tokens))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    push, confirm = result["publish_to_first_push_ms"], result["publish_to_confirmed_ms"]
    phones = "1 phone" if args.tokens == 1 else f"{args.tokens} phones"
    print(f"{args.lists} lists of {phones}, each adding one new phone:")
    print(
        f"  publish -> first push to the new phone: median {push['p50']} ms,"
        f" p90 {push['p90']} ms (min {push['min']}, max {push['max']})"
    )
    print(
        f"  publish -> gateway confirms on P/status: median {confirm['p50']} ms,"
        f" p90 {confirm['p90']} ms (min {confirm['min']}, max {confirm['max']})"
    )
    print(f"  lists refused: {result['refused']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
