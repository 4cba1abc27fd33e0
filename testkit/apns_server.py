"""The APNs stand-in's public face: its API in one import, and a command line for the demo.

``python -m testkit.apns_server --cert F --key F [--port-file F] ...`` serves
until SIGTERM or SIGINT and prints one JSON line per answered request on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

from testkit.apns_auth import AuthKeys
from testkit.apns_rules import Reason
from testkit.apns_standin import (
    KNOBS,
    ApnsStandIn,
    ReceivedPush,
    server_ssl_context,
)
from testkit.pki import load_ec_public_key
from testkit.standin_thread import StandInThread

__all__ = [
    "KNOBS",
    "ApnsStandIn",
    "AuthKeys",
    "Reason",
    "ReceivedPush",
    "StandInThread",
    "main",
    "response_line",
    "server_ssl_context",
]


def response_line(push: ReceivedPush) -> str:
    """One answered request as the demo shows it: JSON, the device token shortened."""
    title = body = None
    try:
        document = push.json()
    except ValueError:
        document = None
    aps = document.get("aps") if isinstance(document, dict) else None
    alert = aps.get("alert") if isinstance(aps, dict) else None
    if isinstance(alert, dict):
        title, body = alert.get("title"), alert.get("body")
    elif isinstance(alert, str):
        body = alert
    return json.dumps(
        {
            "token": push.short_token,
            "status": push.status,
            "reason": push.reason,
            "title": title,
            "body": body,
            "apns-collapse-id": push.headers.get("apns-collapse-id"),
            "apns-priority": push.headers.get("apns-priority"),
            "apns-expiration": push.headers.get("apns-expiration"),
            "connection": push.connection,
        },
        ensure_ascii=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    auth_keys: dict[str, tuple[str, EllipticCurvePublicKey]] = {}
    try:
        for spec in args.auth_key:
            key_id, team_id, path = _split_auth_key(spec)
            auth_keys[key_id] = (team_id, load_ec_public_key(Path(path)))
        standin = ApnsStandIn(
            certfile=args.cert,
            keyfile=args.key,
            host=args.host,
            port=args.port,
            topic=args.topic,
            auth_keys=auth_keys,
            client_ca=args.client_ca,
            max_concurrent_streams=args.max_concurrent_streams,
            sandbox=args.sandbox,
        )
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    except (OSError, ssl.SSLError, ValueError, TypeError) as exc:
        print(f"apns stand-in: {exc}", file=sys.stderr)
        return 2
    standin.on_response = _print_response
    try:
        asyncio.run(_serve(standin, args.port_file))
    except OSError as exc:
        print(f"apns stand-in: {exc}", file=sys.stderr)
        return 2
    return 0


async def _serve(standin: ApnsStandIn, port_file: Path | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with standin:
        if port_file is not None:
            _write_port_file(port_file, standin.port)
        print(f"apns stand-in: listening on {standin.url}", file=sys.stderr, flush=True)
        await stop.wait()


def _print_response(push: ReceivedPush) -> None:
    print(response_line(push), flush=True)


def _write_port_file(path: Path, port: int) -> None:
    # Written aside then renamed: a reader polling for the file never sees it half written.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(f"{port}\n")
    os.replace(temporary, path)


def _split_auth_key(spec: str) -> tuple[str, str, str]:
    key_id, _, rest = spec.partition(":")
    team_id, _, path = rest.partition(":")
    if not key_id or not team_id or not path:
        raise argparse.ArgumentTypeError(f"--auth-key wants KID:TEAM:public-key.pem, got {spec!r}")
    return key_id, team_id, path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m testkit.apns_server",
        description="A stand-in for Apple's APNs HTTP/2 provider API, for tests and demos.",
    )
    parser.add_argument("--cert", type=Path, required=True, help="server certificate (PEM)")
    parser.add_argument("--key", type=Path, required=True, help="server private key (PEM)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--topic", help="the only apns-topic accepted (default: any)")
    parser.add_argument(
        "--auth-key",
        action="append",
        default=[],
        metavar="KID:TEAM:PUBKEY.pem",
        help="trust provider JWTs signed by this key (repeatable)",
    )
    parser.add_argument(
        "--client-ca", type=Path, help="require client certificates issued by this CA"
    )
    parser.add_argument("--max-concurrent-streams", type=int, default=1000)
    parser.add_argument("--sandbox", action="store_true", help="answer 200s with apns-unique-id")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    return parser


if __name__ == "__main__":
    sys.exit(main())
