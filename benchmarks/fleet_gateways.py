"""Many simulated gateways in one process: edgebell's own cloud sync, one per gateway id.

Each gateway is a real ``CloudSync`` (aiomqtt, TLS with its own client certificate,
persistent session) with a real ``OutboxStore`` (SQLite, its writer thread) in a
directory of its own; only the daemon around it is left out: the hooks record when a
token list is taken into use. Started by ``fleet.py``, driven over stdin and stdout:
it prints one JSON line once every gateway is connected, then answers
``{"cmd": "wait_ver", "ver": V, "timeout": S}`` (when each gateway took list ``V``
into use, CLOCK_MONOTONIC ns, once all have) and ``{"cmd": "memory"}``; end of input
stops every gateway cleanly.

    .venv/bin/python benchmarks/fleet_gateways.py --broker mqtts://127.0.0.1:PORT \
        --ca ca.crt --certs DIR --token-list-key token-list.pub --state DIR [--count 500]

``--broker`` may name several brokers (the nodes of a cluster), comma-separated:
the gateways are spread over them in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from common import proc_memory_mb

from edgebell import __version__
from edgebell.cloud.messages import ProviderToken
from edgebell.cloud.sync import CloudSync, load_token_list_key
from edgebell.cloud.tokenlist import TokenList
from edgebell.config import CloudConfig
from edgebell.outbox.store import OutboxStore
from edgebell.rings import Ring

STOP_TIMEOUT = 5.0


def gateway_ids(count: int) -> list[str]:
    return [f"gw-{number:04d}" for number in range(1, count + 1)]


class Hooks:
    """The daemon's side of one gateway's sync: only records when lists come into use."""

    def __init__(self, fleet: Fleet) -> None:
        self.in_use: dict[int, int] = {}  # list ver -> monotonic ns it came into use
        self._fleet = fleet

    def token_list_changed(self, token_list: TokenList) -> None:
        self.in_use[token_list.ver] = time.monotonic_ns()
        self._fleet.changed()

    def pending_pushes(self) -> int:
        return 0

    def use_provider_token(self, token: ProviderToken) -> bool:
        return False

    def ring_button(self, button: str) -> Ring | None:
        return None

    async def test_push(self, token: Any) -> list[dict[str, Any]]:
        return []


class Fleet:
    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self._changed = asyncio.Event()
        self.hooks: list[Hooks] = []
        self.syncs: list[CloudSync] = []
        self.stores: list[OutboxStore] = []

    def changed(self) -> None:
        self._changed.set()

    def build(self) -> None:
        args = self._args
        key = load_token_list_key(self._config("gw-0001", 0))
        for number, gateway in enumerate(gateway_ids(args.count)):
            store = OutboxStore(args.state / gateway / "outbox.sqlite3")
            store.open()
            hooks = Hooks(self)
            sync = CloudSync(
                self._config(gateway, number),
                gateway_id=gateway,
                version=__version__,
                started_at=time.time(),
                store=store,
                hooks=hooks,
                key=key,
            )
            sync.restore()
            store.start()
            self.stores.append(store)
            self.hooks.append(hooks)
            self.syncs.append(sync)

    def _config(self, gateway: str, number: int) -> CloudConfig:
        args = self._args
        brokers = args.broker.split(",")
        return CloudConfig(
            url=brokers[number % len(brokers)],
            ca_file=args.ca,
            cert_file=args.certs / f"{gateway}.crt",
            key_file=args.certs / f"{gateway}.key",
            token_list_key=args.token_list_key,
            # A broker taking 500 TLS handshakes at once answers late: wait, do not retry.
            connect_timeout=60.0,
            reconnect_min=0.5,
            reconnect_max=5.0,
        )

    async def wait(self, done: Any, timeout: float) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while not done():
                self._changed.clear()
                # Lists in use are signalled; connection state is polled.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.05)

    def connected(self) -> int:
        return sum(1 for sync in self.syncs if sync.connected_since is not None)

    async def stop(self) -> None:
        await asyncio.gather(*(sync.stop(STOP_TIMEOUT) for sync in self.syncs))
        for store in self.stores:
            store.close()


async def serve(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Each gateway holds a TLS socket, paho's wake-up socket pair and three SQLite files.
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 16 * args.count + 256)), hard))
    base_memory = proc_memory_mb(os.getpid())
    fleet = Fleet(args)
    fleet.build()
    start = time.monotonic()
    for sync in fleet.syncs:
        sync.start()
    await fleet.wait(lambda: fleet.connected() == args.count, args.connect_timeout)
    connect_s = time.monotonic() - start
    print(
        json.dumps(
            {
                "gateways": args.count,
                "connected": fleet.connected(),
                "connect_s": round(connect_s, 3),
                "memory_before_mb": base_memory,
                "memory_mb": proc_memory_mb(os.getpid()),
            }
        ),
        flush=True,
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        answer: dict[str, Any]
        if command["cmd"] == "wait_ver":
            ver = int(command["ver"])
            try:
                await fleet.wait(
                    lambda ver=ver: all(ver in hooks.in_use for hooks in fleet.hooks),
                    float(command.get("timeout", 60)),
                )
            except TimeoutError:
                missing = sum(1 for hooks in fleet.hooks if ver not in hooks.in_use)
                answer = {"error": f"{missing} gateways never took list {ver} into use"}
            else:
                answer = {"in_use_ns": [hooks.in_use[ver] for hooks in fleet.hooks]}
        elif command["cmd"] == "memory":
            answer = {"memory_mb": proc_memory_mb(os.getpid()), "connected": fleet.connected()}
        else:
            answer = {"error": f"unknown command {command['cmd']!r}"}
        print(json.dumps(answer), flush=True)
    await fleet.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--certs", type=Path, required=True)
    parser.add_argument("--token-list-key", type=Path, required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--connect-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
