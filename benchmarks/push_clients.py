"""One APNs client (edgebell, aioapns or httpx) pushing N notifications over one connection.

Run as its own process by ``fanout.py``, so that the client has a core to itself and
the stand-in another. It connects, sends a few warm-up pushes (not counted), then
fires ``--count`` pushes at once (every library queues what exceeds the server's
``MAX_CONCURRENT_STREAMS`` itself) and prints one JSON line: wall-clock time, client
CPU time from ``getrusage(RUSAGE_SELF)`` (user + system, every thread), and how many
were answered 200. Each push is built the way that library's users build one: a
fresh request object per device token, a fresh ``apns-id``, the same alert payload.

    .venv/bin/python benchmarks/push_clients.py --client edgebell --url https://127.0.0.1:8443 \
        --ca ca.crt --key AuthKey_ABC123DEFG.p8 --key-id ABC123DEFG --team-id DEF123GHIJ \
        --topic com.example.doorbell [--count 10000] [--warmup 500]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import secrets
import ssl
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLIENTS = ("edgebell", "aioapns", "httpx")

# The payload of a doorbell push, as edgebell's notifier builds it (compact JSON).
MESSAGE: dict[str, Any] = {
    "aps": {
        "alert": {"title": "Doorbell", "body": "Someone is at the Front door"},
        "sound": "default",
        "interruption-level": "time-sensitive",
        "thread-id": "front",
    },
    "edgebell": {"ring_id": "bench-ring", "button": "front", "at": "2025-01-01T12:00:00Z"},
}
PAYLOAD = json.dumps(MESSAGE, separators=(",", ":")).encode()
COLLAPSE_ID = "bench-ring"
EXPIRATION = 900


@dataclass(frozen=True, slots=True)
class Settings:
    url: str
    ca: Path
    key: Path
    key_id: str
    team_id: str
    topic: str


# A sender pushes to one token and says whether APNs answered 200.
Sender = Callable[[str], Awaitable[bool]]


def client_ssl_context(ca: Path) -> ssl.SSLContext:
    """Verified TLS trusting the benchmark's CA, ALPN h2: the same for every client."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    return context


async def edgebell_sender(s: Settings) -> tuple[Sender, Callable[[], Awaitable[None]]]:
    from edgebell.apns.auth import TokenAuth
    from edgebell.apns.client import ApnsClient
    from edgebell.apns.model import Environment, Outcome, PushRequest
    from edgebell.apns.signer import Signer

    # As the daemon does it: the JWT is signed by the signer's child, once, before the run.
    signer = Signer(s.key.read_bytes(), s.key_id, s.team_id)
    auth = TokenAuth(s.key_id, s.team_id, mint=signer.mint)
    client = ApnsClient(
        auth=auth, host_override=s.url, ca_file=s.ca, request_timeout=120.0, ping_interval=0
    )
    env = Environment.PRODUCTION
    await client.connect(env)
    delivered = Outcome.DELIVERED

    async def send(token: str) -> bool:
        result = await client.send(
            PushRequest(
                token=token,
                environment=env,
                topic=s.topic,
                payload=PAYLOAD,
                apns_id=str(uuid.uuid4()),
                collapse_id=COLLAPSE_ID,
                expiration=int(time.time()) + EXPIRATION,
            )
        )
        return result.outcome is delivered

    return send, client.aclose


async def aioapns_sender(s: Settings) -> tuple[Sender, Callable[[], Awaitable[None]]]:
    from urllib.parse import urlsplit

    from aioapns import APNs, NotificationRequest, PushType
    from aioapns.connection import APNsProductionClientProtocol

    parts = urlsplit(s.url)

    # aioapns has no host option: its protocol class names Apple's host and port.
    class StandInProtocol(APNsProductionClientProtocol):
        APNS_SERVER = parts.hostname or "127.0.0.1"
        APNS_PORT = parts.port or 443

    apns = APNs(
        key=s.key.read_text(),
        key_id=s.key_id,
        team_id=s.team_id,
        topic=s.topic,
        max_connections=1,
        ssl_context=client_ssl_context(s.ca),
    )
    apns.pool.protocol_class = StandInProtocol

    async def send(token: str) -> bool:
        result = await apns.send_notification(
            NotificationRequest(
                device_token=token,
                message=MESSAGE,
                time_to_live=EXPIRATION,
                priority=10,
                collapse_key=COLLAPSE_ID,
                push_type=PushType.ALERT,
            )
        )
        return result.is_successful

    async def close() -> None:
        apns.pool.close()

    return send, close


async def httpx_sender(s: Settings) -> tuple[Sender, Callable[[], Awaitable[None]]]:
    import httpx
    import jwt

    key = s.key.read_text()
    bearer = "bearer " + jwt.encode(
        {"iss": s.team_id, "iat": int(time.time())},
        key,
        algorithm="ES256",
        headers={"kid": s.key_id},
    )
    client = httpx.AsyncClient(
        http2=True,
        verify=client_ssl_context(s.ca),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        timeout=120.0,
    )
    base = s.url.rstrip("/") + "/3/device/"

    async def send(token: str) -> bool:
        response = await client.post(
            base + token,
            content=PAYLOAD,
            headers={
                "authorization": bearer,
                "apns-topic": s.topic,
                "apns-push-type": "alert",
                "apns-priority": "10",
                "apns-expiration": str(int(time.time()) + EXPIRATION),
                "apns-collapse-id": COLLAPSE_ID,
                "apns-id": str(uuid.uuid4()),
            },
        )
        return response.status_code == 200

    return send, client.aclose


SENDERS = {"edgebell": edgebell_sender, "aioapns": aioapns_sender, "httpx": httpx_sender}


def cpu_seconds() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def run(client: str, s: Settings, count: int, warmup: int) -> dict[str, Any]:
    send, close = await SENDERS[client](s)
    try:
        warm = [secrets.token_hex(32) for _ in range(warmup)]
        if warm:
            await asyncio.gather(*(send(t) for t in warm))
        tokens = [secrets.token_hex(32) for _ in range(count)]
        gc.collect()
        user0, sys0 = cpu_seconds()
        start = time.perf_counter()
        results = await asyncio.gather(*(send(t) for t in tokens))
        wall = time.perf_counter() - start
        user1, sys1 = cpu_seconds()
    finally:
        await close()
    cpu = (user1 - user0) + (sys1 - sys0)
    return {
        "client": client,
        "count": count,
        "ok": sum(results),
        "wall_s": wall,
        "cpu_s": cpu,
        "user_s": user1 - user0,
        "sys_s": sys1 - sys0,
        "rate": count / wall,
        "cpu_us_per_push": cpu / count * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=CLIENTS, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--key-id", required=True)
    parser.add_argument("--team-id", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=500)
    args = parser.parse_args(argv)
    settings = Settings(args.url, args.ca, args.key, args.key_id, args.team_id, args.topic)
    result = asyncio.run(run(args.client, settings, args.count, args.warmup))
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
