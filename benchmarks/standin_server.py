"""The APNs stand-in in a process of its own, driven by the benchmarks over stdin and stdout.

A benchmark must not share the measured client's event loop (or core) with the server,
so the stand-in runs here: it prints ``{"port": N}`` once listening, then answers one
JSON command per input line with one JSON line, and exits at end of input.

Commands: ``{"cmd": "stats"}`` (answered, answered 200, first and last request times,
this process's CPU seconds), ``{"cmd": "reset"}`` (forget what was answered),
``{"cmd": "wait", "count": N, "timeout": S}`` (until N requests were answered since the
last reset), ``{"cmd": "times"}`` (each answered request's ``received_ns`` and the
moment it was answered, both CLOCK_MONOTONIC), ``{"cmd": "set", "knobs": {...}}``
(stand-in knobs such as ``refuse``).

    .venv/bin/python benchmarks/standin_server.py --cert server.crt --key server.key \
        --auth-key KID:TEAM:pub.pem [--port 0] [--topic T]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from testkit.apns_standin import ApnsStandIn, ReceivedPush
from testkit.pki import load_ec_public_key


class Recorder:
    """Keeps only what the benchmarks read, so a long run does not grow the stand-in."""

    def __init__(self) -> None:
        self.received_ns: list[int] = []
        self.answered_ns: list[int] = []
        self.ok = 0

    def __call__(self, push: ReceivedPush) -> None:
        self.answered_ns.append(time.monotonic_ns())
        self.received_ns.append(push.received_ns)
        self.ok += push.status == 200


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stats(standin: ApnsStandIn, recorder: Recorder) -> dict[str, Any]:
    received = recorder.received_ns
    return {
        "answered": len(received),
        "ok": recorder.ok,
        "first_ns": min(received) if received else None,
        "last_ns": max(received) if received else None,
        "last_answered_ns": max(recorder.answered_ns) if recorder.answered_ns else None,
        "cpu_s": cpu_seconds(),
        "connections": standin.connections,
        "max_concurrent_seen": standin.max_concurrent_seen,
    }


async def handle(standin: ApnsStandIn, recorder: Recorder, command: dict[str, Any]) -> Any:
    cmd = command.get("cmd")
    if cmd == "stats":
        return stats(standin, recorder)
    if cmd == "reset":
        recorder.__init__()  # type: ignore[misc]
        standin.responses.clear()
        standin.received.clear()
        standin.max_concurrent_seen = 0
        return stats(standin, recorder)
    if cmd == "wait":
        count = int(command["count"])
        await standin.wait_for(
            lambda _: len(recorder.received_ns) >= count, float(command.get("timeout", 60))
        )
        return stats(standin, recorder)
    if cmd == "times":
        return {"received_ns": recorder.received_ns, "answered_ns": recorder.answered_ns}
    if cmd == "set":
        standin.set(**command["knobs"])
        return {"ok": True}
    raise ValueError(f"unknown command {cmd!r}")


async def serve(args: argparse.Namespace) -> None:
    auth_keys = {}
    for spec in args.auth_key:
        key_id, team_id, path = spec.split(":", 2)
        auth_keys[key_id] = (team_id, load_ec_public_key(Path(path)))
    recorder = Recorder()
    standin = ApnsStandIn(
        certfile=args.cert,
        keyfile=args.key,
        port=args.port,
        topic=args.topic,
        auth_keys=auth_keys,
        validate_headers=not args.no_validate_headers,
    )
    standin.on_response = recorder
    async with standin:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        print(json.dumps({"port": standin.port}), flush=True)
        while line := await reader.readline():
            if not line.strip():
                continue
            try:
                answer = await handle(standin, recorder, json.loads(line))
            except (AssertionError, ValueError, KeyError, TypeError) as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            # Once the answers are no longer needed, they are not kept.
            standin.responses.clear()
            standin.received.clear()
            print(json.dumps(answer), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--auth-key", action="append", default=[], metavar="KID:TEAM:PUB.pem")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--topic")
    parser.add_argument("--no-validate-headers", action="store_true")
    args = parser.parse_args(argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
