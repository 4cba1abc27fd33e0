"""The ``edgebell`` command: thin argument parsing over the library, exit codes per the design."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from edgebell import __version__
from edgebell.errors import ConfigError, ControlError, EdgebellError

if TYPE_CHECKING:
    from edgebell.config import Config

EXIT_OK = 0
EXIT_FAILED = 1  # degraded status, ring refused, a test push not delivered
EXIT_CONFIG = 2
EXIT_NOT_RUNNING = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgebell",
        description="Doorbell gateway: radio receiver in, Apple push notifications out.",
    )
    parser.add_argument("--version", action="version", version=f"edgebell {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        help="configuration file (default: $EDGEBELL_CONFIG, else /etc/edgebell/config.yaml)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    p = sub.add_parser("status", parents=[common], help="ask the running daemon how it is")
    p.add_argument("--json", action="store_true", help="print the status JSON")
    sub.add_parser(
        "check-config", parents=[common], help="validate the configuration and the files it names"
    )
    sub.add_parser(
        "learn", parents=[common], help="show frames of unknown buttons, with a match: to paste"
    )
    p = sub.add_parser("ring", parents=[common], help="ring as if BUTTON were pressed")
    p.add_argument("button", help="button id from the configuration")
    p = sub.add_parser("test-push", parents=[common], help="push a test notification now")
    p.add_argument("--token", help="one device token (hex) instead of every authorised phone")
    p.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args, out)
    except ConfigError as exc:
        print(f"edgebell: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ControlError as exc:
        print(f"edgebell: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except EdgebellError as exc:
        print(f"edgebell: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK


def _dispatch(args: argparse.Namespace, out: TextIO) -> int:
    from edgebell.config import check_config, load_config

    config = load_config(args.config)
    command: str = args.command
    if command == "check-config":
        for warning in check_config(config):
            print(f"warning: {warning}", file=out)
        print(f"{config.source}: OK", file=out)
        return EXIT_OK
    if command == "run":
        return _run(config)
    from edgebell import control

    sock = config.control_socket
    if command == "status":
        return _status(control.request(sock, {"cmd": "status"}, timeout=5.0), args.json, out)
    if command == "ring":
        answer = control.request(sock, {"cmd": "ring", "button": args.button})
        if not answer.get("ok"):
            print(f"edgebell: {answer.get('error')}", file=sys.stderr)
            return EXIT_FAILED
        print(f"rang {answer['button']} (ring {answer['ring_id']})", file=out)
        return EXIT_OK
    if command == "test-push":
        request: dict[str, object] = {"cmd": "test-push"}
        if args.token:
            request["token"] = args.token
        answer = control.request(sock, request, timeout=60.0)
        return _test_push(answer, args.json, out)
    if command == "learn":
        return _learn(sock, out)
    raise AssertionError(command)


def _run(config: Config) -> int:
    from edgebell.config import check_config
    from edgebell.daemon import Daemon
    from edgebell.logs import setup_logging

    setup_logging(config.log_level)
    check_config(config)  # a key file that is missing or unsafe: exit 2 now, not at the first ring
    try:
        return asyncio.run(Daemon(config).run())
    except ControlError as exc:  # e.g. another daemon already owns the control socket
        raise EdgebellError(str(exc)) from exc


def _status(answer: dict[str, object], as_json: bool, out: TextIO) -> int:
    from edgebell.status import render_human

    data = answer.get("status")
    if not isinstance(data, dict):
        print(f"edgebell: unexpected answer from the daemon: {answer}", file=sys.stderr)
        return EXIT_FAILED
    if as_json:
        print(json.dumps(data, indent=2), file=out)
    else:
        print(render_human(data), file=out)
    return EXIT_OK if data.get("state") == "healthy" else EXIT_FAILED


def _test_push(answer: dict[str, object], as_json: bool, out: TextIO) -> int:
    results = answer.get("results")
    if not answer.get("ok") or not isinstance(results, list):
        print(f"edgebell: {answer.get('error', 'test push failed')}", file=sys.stderr)
        return EXIT_FAILED
    if as_json:
        print(json.dumps(results, indent=2), file=out)
    elif not results:
        print("no phone to push to (the token list is empty)", file=out)
    for r in results if not as_json else []:
        what = r["outcome"]
        if r.get("status"):
            what += f" ({r['status']}{' ' + r['reason'] if r.get('reason') else ''})"
        elif r.get("detail"):
            what += f" ({r['detail']})"
        print(f"{r['token']:<12} {r['env']:<10} {what}", file=out)
    delivered = bool(results) and all(r.get("outcome") == "delivered" for r in results)
    return EXIT_OK if delivered else EXIT_FAILED


def _learn(sock: Path, out: TextIO) -> int:
    from edgebell import control

    print("listening for buttons that are not configured yet; press one (Ctrl-C to stop)", file=out)
    out.flush()
    for message in control.stream(sock, {"cmd": "learn"}, timeout=None):
        if "listening" in message:
            continue
        print(f"\n{message['at']}  {message['raw']}", file=out)
        print("  paste under buttons:", file=out)
        print("  - id: CHOOSE-AN-ID", file=out)
        print("    name: CHOOSE A NAME", file=out)
        print(f"    {message['match']}", file=out)
        out.flush()
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
