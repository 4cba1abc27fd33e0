"""The ``edgebell`` command: thin argument parsing over the library, exit codes per the design."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, cast

from edgebell import __version__
from edgebell.errors import (
    ConfigError,
    ControlError,
    EdgebellError,
    NotAnsweringError,
    NotRunningError,
)
from edgebell.printable import PrintableStream

if TYPE_CHECKING:
    from edgebell.config import Config

EXIT_OK = 0
EXIT_FAILED = 1  # degraded status, ring refused, a test push not delivered
EXIT_CONFIG = 2
EXIT_NOT_RUNNING = 3  # `status` and `reload`: the other commands fail (1) when no daemon runs
EXIT_CANNOT_TELL = 4  # `status` only: no permission to ask, no answer, no config to find it by


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
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up after this long (default 10); a ring given up on is not made later",
    )
    sub.add_parser(
        "reload",
        parents=[common],
        help="make the running daemon re-read its configuration; fails if it refuses the file",
    )
    sub.add_parser(
        "acknowledge",
        parents=[common],
        help="clear status's notices of losses that are over (a corrupt file moved aside at start)",
    )
    p = sub.add_parser("test-push", parents=[common], help="push a test notification now")
    p.add_argument(
        "--token",
        type=_device_token,
        help="one device token (hex) instead of every authorised phone",
    )
    p.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    from edgebell.cloud.cli import add_parser as add_cloud_parser

    add_cloud_parser(sub)
    return parser


def _device_token(text: str) -> str:
    """``--token``: a usage error (exit 2, nothing sent) unless it is a device token."""
    from edgebell.tokens import is_device_token

    if not is_device_token(text):
        raise argparse.ArgumentTypeError(
            "not a device token: an even number of hex digits, 16 to 200 of them"
        )
    return text.lower()


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    # Everything the command prints, errors included, goes through printable(): frames,
    # banners and Apple's or the broker's words cannot steer the terminal.
    out = cast(TextIO, PrintableStream(out or sys.stdout))
    stderr = sys.stderr
    sys.stderr = cast(TextIO, PrintableStream(stderr))
    try:
        return _main_guarded(argv, out)
    finally:
        sys.stderr = stderr


def _main_guarded(argv: Sequence[str] | None, out: TextIO) -> int:
    args = _parser().parse_args(argv)
    try:
        code = _main(args, out)
        out.flush()
    except BrokenPipeError:
        # The reader went away (`edgebell status | head -1`): it has read all it wanted,
        # and the answer's verdict stands. Python would complain again at exit otherwise.
        _reader_gone(out)
        return getattr(args, "exit_code", EXIT_OK)
    return code


def _reader_gone(out: TextIO) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)


def _main(args: argparse.Namespace, out: TextIO) -> int:
    if args.command == "status":
        return _status_command(args, out)
    try:
        return _dispatch(args, out)
    except ConfigError as exc:
        for error in getattr(exc, "errors", (exc,)):  # every one found, one per line
            print(f"edgebell: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except NotRunningError as exc:
        print(f"edgebell: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING if args.command in ("status", "reload") else EXIT_FAILED
    except ControlError as exc:  # the daemon runs but does not answer, or answers nonsense
        print(f"edgebell: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except EdgebellError as exc:
        print(f"edgebell: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK


def _dispatch(args: argparse.Namespace, out: TextIO) -> int:
    if args.command == "cloud":  # the cloud side's tools need no gateway config
        from edgebell.cloud.cli import run as run_cloud_tool

        return run_cloud_tool(args, out)
    command: str = args.command
    if command in ("check-config", "run"):
        # check_config loads the cryptography package: client commands stay without it.
        from edgebell.config import check_config, load_config

        config = load_config(args.config)
        if command == "run":
            return _run(config)
        for warning in check_config(config, receiver=True):
            print(f"warning: {warning}", file=out)
        if config.home_assistant is not None:
            from edgebell.config.home_assistant import describe

            print(describe(config.home_assistant), file=out)
        print(f"{config.source}: OK", file=out)
        return EXIT_OK
    from edgebell import control

    sock = _control_socket(args.config)
    if command == "ring":
        try:
            answer = control.request(
                sock, {"cmd": "ring", "button": args.button}, timeout=args.timeout
            )
        except NotAnsweringError as exc:
            # The request carried its deadline: the daemon will not ring once it wakes up.
            raise NotAnsweringError(
                f"{exc}; it will not ring later for this request: run the command again"
            ) from exc
        if not answer.get("ok"):
            print(f"edgebell: {answer.get('error')}", file=sys.stderr)
            return EXIT_FAILED
        print(f"rang {answer['button']} (ring {answer['ring_id']})", file=out)
        if answer.get("persisted") is False:
            print(f"edgebell: warning: {answer.get('warning')}", file=sys.stderr)
        return EXIT_OK
    if command == "test-push":
        request: dict[str, object] = {"cmd": "test-push"}
        if args.token:
            request["token"] = args.token
        answer = control.request(sock, request, timeout=60.0)
        return _test_push(answer, args.json, out)
    if command == "learn":
        return _learn(sock, out)
    if command == "reload":
        from edgebell.reload_client import reload

        return reload(sock, out)
    if command == "acknowledge":
        return _acknowledge(sock, out)
    raise AssertionError(command)


def _acknowledge(sock: Path, out: TextIO) -> int:
    """``acknowledge``: the notices cleared, one per line; 0 also when there were none."""
    from edgebell import control

    answer = control.request(sock, {"cmd": "acknowledge"}, timeout=10.0)
    said = answer.get("acknowledged") or []
    for notice in said:
        print(f"acknowledged: {notice}", file=out)
    if not said:
        print("nothing to acknowledge", file=out)
    return EXIT_OK


# `control_socket: /run/edgebell/edgebell.sock` as written, for a file that no longer loads.
_SOCKET_LINE = re.compile(r"""^control_socket:[ \t]*["']?([^"'#\s]+)""", re.MULTILINE)


def _control_socket(path: Path | None) -> Path:
    """The daemon's socket per the config; from a broken file, the best guess and a warning.

    `edgebell status` matters most when something is wrong, a config file that a
    reload refused included, so a bad file must not keep it from asking the daemon.
    """
    from edgebell.config import default_config_path, default_control_socket, load_config

    try:
        return load_config(path).control_socket
    except ConfigError as exc:
        source = path or default_config_path()
        if source.exists() and not os.access(source, os.R_OK):
            from edgebell.control import group_of

            group = group_of(source)
            # Not a configuration problem: this user may not know where the daemon listens.
            raise ControlError(
                f"permission denied: cannot read {source}; run as root or as a member of group "
                f"{group} (usermod -aG {group} $USER, then log in again)"
            ) from exc
        try:
            text = source.read_text(errors="replace")
        except OSError:
            raise exc from None  # no file to guess from: the error says what is wrong
        match = _SOCKET_LINE.search(text)
        sock = Path(match.group(1)).expanduser() if match else default_control_socket()
        sock = sock if sock.is_absolute() else source.absolute().parent / sock
        print(f"edgebell: warning: {exc}", file=sys.stderr)
        print(f"edgebell: asking the daemon on {sock} all the same", file=sys.stderr)
        return sock


def _run(config: Config) -> int:
    import asyncio  # only the daemon needs it: client commands stay quick to start

    from edgebell.config import check_config
    from edgebell.daemon import Daemon
    from edgebell.logs import setup_logging

    setup_logging(config.log_level)
    check_config(config)  # a key file that is missing or unsafe: exit 2 now, not at the first ring
    try:
        return asyncio.run(Daemon(config).run())
    except ControlError as exc:  # e.g. another daemon already owns the control socket
        raise EdgebellError(str(exc)) from exc


def _status_command(args: argparse.Namespace, out: TextIO) -> int:
    """``status``: exit 0 healthy, 1 degraded, 3 not running, 4 cannot tell; JSON always."""
    from edgebell import control

    try:
        sock = _control_socket(args.config)
        answer = control.request(sock, {"cmd": "status"}, timeout=5.0)
    except NotRunningError as exc:
        return _status_unknown(args, out, "not running", str(exc), EXIT_NOT_RUNNING)
    except ConfigError as exc:
        return _status_unknown(
            args, out, "unknown", f"configuration error: {exc}", EXIT_CANNOT_TELL
        )
    except ControlError as exc:  # no permission to ask, or a daemon that does not answer
        return _status_unknown(args, out, "unknown", str(exc), EXIT_CANNOT_TELL)
    from edgebell.status import render_human

    data = answer.get("status")
    if not isinstance(data, dict):
        return _status_unknown(
            args, out, "unknown", "unexpected answer from the daemon", EXIT_CANNOT_TELL
        )
    args.exit_code = EXIT_OK if data.get("state") == "healthy" else EXIT_FAILED
    print(json.dumps(data, indent=2) if args.json else render_human(data), file=out)
    return int(args.exit_code)


def _status_unknown(
    args: argparse.Namespace, out: TextIO, state: str, error: str, code: int
) -> int:
    args.exit_code = code
    print(f"edgebell: {error}", file=sys.stderr)
    if args.json:  # monitoring reads stdout: it always gets a verdict it can parse
        print(json.dumps({"state": state, "error": error}), file=out)
    return code


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

    seen: set[str] = set()
    for message in control.stream(sock, {"cmd": "learn"}, timeout=None):
        if "listening" in message:
            print(f"listening on {message['listening']} for buttons not configured yet;", file=out)
            print("press each new button once (Ctrl-C to stop)", file=out)
            if message.get("connected") is False:
                print("warning: the receiver is not connected (see edgebell status)", file=out)
            out.flush()
            continue
        if message["match"] in seen:
            continue  # a transmitter repeats its code several times per press
        seen.add(message["match"])
        print(f"\n{message['at']}  {message['raw']}", file=out)
        print("  paste under buttons:", file=out)
        print("  - id: CHOOSE-AN-ID", file=out)
        print("    name: CHOOSE A NAME", file=out)
        print(f"    {message['match']}", file=out)
        out.flush()
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
