"""Sustained fan-out: N pushes over one connection, edgebell against its peers and h2load.

Peers: aioapns and httpx (Python), @parse/node-apn (Node's http2 over nghttp2, the most
used APNs client; ``benchmarks/node``, installed by ``scripts/bench`` with npm) and
h2load. The APNs stand-in runs in a process of its own (``standin_server.py``), each
client in another (``push_clients.py``, ``node/push_node_apn.js``), so on a 2-core
machine each has a core. Every round runs
every client once, in a rotating order, against the same stand-in; the figures are
medians over the rounds, and the ratios are taken within each round (the peers measured
in the same minute), then their median. h2load (nghttp2, C) sends the same APNs request
(headers, JWT, payload) and shows what the stand-in itself can take: if a client comes
near that ceiling, the stand-in and not the client is what was measured.

The stand-in's own RFC 9113 header syntax checks are off here (``validate_headers``):
they cost about a fifth of its time per request and would make it, not the clients,
the limit; the test suite runs them against edgebell's requests. Apple's checks
(JWT, topic, push type, payload) stay on.

    .venv/bin/python benchmarks/fanout.py [--count 10000] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jwt
from common import (
    HERE,
    PYTHON,
    Measured,
    StandInProcess,
    bench_pki,
    machine,
    proc_cpu_seconds,
    run_measured,
    scratch,
)
from push_clients import CLIENTS, EXPIRATION, PAYLOAD

from testkit.gateway import KEY_ID, TEAM_ID, TOPIC
from testkit.pki import TestPki

NODE_APN = HERE / "node" / "push_node_apn.js"
PEERS = ("h2load", *CLIENTS, "node-apn")


def node_apn_installed() -> bool:
    return shutil.which("node") is not None and (HERE / "node" / "node_modules").is_dir()


# A run during which other processes used more than this share of the machine is redone.
DISTURBED_PCT = 20.0
MAX_ATTEMPTS = 3
MAX_RETRIES = 8  # for the whole benchmark: a busy machine must not make it endless
_H2LOAD_RATE = re.compile(r"finished in [\d.]+m?s, ([\d.]+) req/s")
_H2LOAD_OK = re.compile(r"status codes: (\d+) 2xx")


def run_client(client: str, standin: StandInProcess, pki: TestPki, count: int) -> dict[str, Any]:
    """One client process: its figures, and the stand-in's CPU per request meanwhile."""
    if client == "node-apn":
        program = ["node", str(NODE_APN)]
    else:
        program = [PYTHON, str(HERE / "push_clients.py"), "--client", client]
    command = [
        *program,
        "--url",
        standin.url,
        "--ca",
        str(pki.ca.cert),
        "--key",
        str(pki.auth_key.private_key),
        "--key-id",
        KEY_ID,
        "--team-id",
        TEAM_ID,
        "--topic",
        TOPIC,
        "--count",
        str(count),
    ]
    # aioapns logs every time its pool is full: that is its normal state here.
    done, server_cpu, answered = _run_against(standin, command)
    if done.returncode != 0:
        raise RuntimeError(f"{client} failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["server_us_per_request"] = server_cpu / answered * 1e6
    result["others_pct"] = _others_pct(done, server_cpu)
    return result


def run_h2load(standin: StandInProcess, pki: TestPki, count: int, root: Path) -> dict[str, Any]:
    """h2load with APNs requests: one connection, the stand-in's stream limit in flight."""
    payload = root / "payload.json"
    payload.write_bytes(PAYLOAD)
    provider_jwt = jwt.encode(
        {"iss": TEAM_ID, "iat": int(time.time())},
        pki.auth_key.load_private_key(),
        algorithm="ES256",
        headers={"kid": KEY_ID},
    )
    headers = {
        "authorization": f"bearer {provider_jwt}",
        "apns-topic": TOPIC,
        "apns-push-type": "alert",
        "apns-priority": "10",
        "apns-expiration": str(int(time.time()) + EXPIRATION),
        "apns-collapse-id": "bench-ring",
    }
    command = ["h2load", "-n", str(count), "-c", "1", "-m", "1000", "-d", str(payload)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    # h2load sends one URL throughout: one device token for every request.
    command.append(f"{standin.url}/3/device/{secrets.token_hex(32)}")
    done, server_cpu, answered = _run_against(standin, command)
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed ({done.returncode}): {done.stderr[-2000:]}")
    rate = _H2LOAD_RATE.search(done.stdout)
    ok = _H2LOAD_OK.search(done.stdout)
    if rate is None or ok is None:
        raise RuntimeError(f"cannot read h2load's output:\n{done.stdout}")
    return {
        "client": "h2load",
        "count": count,
        "ok": int(ok.group(1)),
        "rate": float(rate.group(1)),
        "wall_s": count / float(rate.group(1)),
        "server_us_per_request": server_cpu / answered * 1e6,
        "others_pct": _others_pct(done, server_cpu),
    }


def _run_against(standin: StandInProcess, command: list[str]) -> tuple[Measured, float, int]:
    """Run a client; what it did, the stand-in's CPU seconds meanwhile, requests answered."""
    standin.call("reset")
    server_before = proc_cpu_seconds(standin.pid)
    done = run_measured(command)
    server_cpu = proc_cpu_seconds(standin.pid) - server_before
    return done, server_cpu, max(1, standin.call("stats")["answered"])


def _others_pct(done: Measured, server_cpu: float) -> float:
    """Share of the machine that other processes used while the client ran (0-100)."""
    others = max(0.0, done.machine_busy_s - done.cpu_s - server_cpu)
    return round(others / (done.wall_s * (os.cpu_count() or 1)) * 100, 1)


def measure(count: int, rounds: int, peers: tuple[str, ...] = PEERS) -> dict[str, Any]:
    root = scratch("edgebell-fanout-")
    pki = bench_pki(root)
    runs: dict[str, list[dict[str, Any]]] = {peer: [] for peer in peers}
    ratios: dict[str, list[float]] = {peer: [] for peer in peers if peer != "edgebell"}
    retries = 0
    with StandInProcess(pki, validate_headers=False) as standin:
        for number in range(rounds):
            order = peers[number % len(peers) :] + peers[: number % len(peers)]
            this_round: dict[str, float] = {}
            for peer in order:
                for attempt in range(1, MAX_ATTEMPTS + 1):
                    if peer == "h2load":
                        result = run_h2load(standin, pki, count, root)
                    else:
                        result = run_client(peer, standin, pki, count)
                    result["attempts"] = attempt
                    # Other work on the machine took a core from the run: once more, a
                    # few times at most (the same rule for every peer).
                    if result["others_pct"] <= DISTURBED_PCT or retries >= MAX_RETRIES:
                        break
                    retries += 1
                if result["ok"] != count:
                    raise RuntimeError(f"{peer}: only {result['ok']} of {count} answered 200")
                runs[peer].append(result)
                this_round[peer] = result["rate"]
            if "edgebell" in this_round:
                for peer, rate in this_round.items():
                    if peer != "edgebell":
                        ratios[peer].append(this_round["edgebell"] / rate)
    return {
        "count": count,
        "rounds": rounds,
        "retries": retries,
        "clients": {peer: _summarise(results) for peer, results in runs.items()},
        "edgebell_ratio": {
            peer: {
                "median": round(statistics.median(values), 2),
                "min": round(min(values), 2),
                "max": round(max(values), 2),
            }
            for peer, values in ratios.items()
            if values
        },
        "machine": machine(),
    }


def _summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["rate"] for r in results]
    summary: dict[str, Any] = {
        "rate": {
            "median": round(statistics.median(rates)),
            "min": round(min(rates)),
            "max": round(max(rates)),
        },
        "server_us_per_request": round(
            statistics.median(r["server_us_per_request"] for r in results), 1
        ),
    }
    if "cpu_us_per_push" in results[0]:
        cpu = [r["cpu_us_per_push"] for r in results]
        summary["cpu_us_per_push"] = {
            "median": round(statistics.median(cpu), 1),
            "min": round(min(cpu), 1),
            "max": round(max(cpu), 1),
        }
        # How busy the client's core was while it pushed: near 100 %, the client is the limit.
        summary["client_busy_pct"] = round(
            statistics.median(r["cpu_s"] / r["wall_s"] * 100 for r in results)
        )
    summary["others_pct"] = round(statistics.median(r["others_pct"] for r in results), 1)
    summary["server_busy_pct"] = round(
        statistics.median(r["server_us_per_request"] * r["rate"] / 1e4 for r in results)
    )
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    peers = tuple(p for p in args.peers.split(",") if p)
    result = measure(args.count, args.rounds, peers)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"sustained fan-out: {args.count} pushes over one connection, {args.rounds} rounds")
    for peer, s in result["clients"].items():
        cpu = s.get("cpu_us_per_push")
        print(
            f"  {peer:<9} {s['rate']['median']:>6} pushes/s ({s['rate']['min']}-{s['rate']['max']})"
            + (f", client CPU {cpu['median']} us/push" if cpu else "")
            + f", stand-in {s['server_us_per_request']} us/request ({s['server_busy_pct']} % busy)"
        )
    for peer, r in result["edgebell_ratio"].items():
        print(f"  edgebell / {peer}: {r['median']}x ({r['min']}-{r['max']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
