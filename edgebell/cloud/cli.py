"""``edgebell cloud ...``: the cloud side's tools on the command line (no config, no daemon)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from edgebell.errors import EdgebellError

EXIT_OK = 0
EXIT_FAILED = 1


def add_parser(sub: Any) -> None:
    """Add ``cloud`` and its tools to the ``edgebell`` subcommands (``sub``)."""
    cloud = sub.add_parser(
        "cloud",
        help="the cloud side: token registry (serve, registry) and tools (keys, lists, JWTs)",
        description="Tools for the cloud backend (and for testing): see docs/mqtt.md.",
    )
    tools = cloud.add_subparsers(dest="tool", required=True, metavar="TOOL")

    p = tools.add_parser("keygen", help="make the Ed25519 key pair that signs token lists")
    p.add_argument("--dir", type=Path, default=Path(), help="where to write (default: here)")
    p.add_argument("--name", default="token-list", help="file names NAME.key, NAME.pub")
    p.add_argument("--force", action="store_true", help="replace existing files")

    p = tools.add_parser("sign-tokens", help="sign a token list: JSON in, compact JWS out")
    p.add_argument("input", nargs="?", default="-", help="JSON file (default: standard input)")
    p.add_argument("--key", type=Path, required=True, help="Ed25519 private key (PEM)")
    p.add_argument("--gateway", help="aud: the gateway id the list is for")
    p.add_argument("--ver", type=int, help="list version (default: now in epoch ms)")
    p.add_argument("--iat", type=int, help="issued-at, epoch s (default: now)")
    p.add_argument("--out", type=Path, help="write the JWS here instead of standard output")

    p = tools.add_parser("verify-tokens", help="check a signed list as a gateway would")
    p.add_argument("input", nargs="?", default="-", help="JWS file (default: standard input)")
    p.add_argument("--key", type=Path, required=True, help="Ed25519 public key (PEM)")
    p.add_argument("--gateway", required=True, help="the gateway id that must be the aud")

    p = tools.add_parser("mint-apns-jwt", help="make an APNs provider JWT from a .p8 key")
    p.add_argument("--key", type=Path, required=True, help="the AuthKey_XXXXXXXXXX.p8 file")
    p.add_argument("--key-id", required=True, help="the key's 10-character id (kid)")
    p.add_argument("--team-id", required=True, help="the 10-character team id (iss)")
    p.add_argument("--iat", type=int, help="issued-at, epoch s (default: now)")
    p.add_argument(
        "--message",
        action="store_true",
        help='print the retained fleet/apns-jwt message {"jwt", "iat"}, not the bare JWT',
    )

    from edgebell.registry.cli import add_parsers as add_registry_parsers

    add_registry_parsers(tools)


def run(args: argparse.Namespace, out: TextIO, err: TextIO | None = None) -> int:
    """Run the tool ``args`` name; EdgebellError becomes a message and exit code 1."""
    err = err or sys.stderr
    if args.tool in ("serve", "registry"):  # the token registry: its own config and exit codes
        from edgebell.registry.cli import run as run_registry

        return run_registry(args, out, err)
    try:
        return _run(args, out, err)
    except EdgebellError as exc:
        print(f"edgebell cloud {args.tool}: {exc}", file=err)
        return EXIT_FAILED


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from edgebell.cloud import tools

    if args.tool == "keygen":
        private, public = tools.keygen(args.dir, args.name, force=args.force)
        print(f"private key (keep it in the cloud): {private}", file=out)
        print(f"public key (cloud.token_list_key on every gateway): {public}", file=out)
        return EXIT_OK
    if args.tool == "sign-tokens":
        document = _read_json(args.input)
        claims = tools.token_list_claims(document, gateway=args.gateway, ver=args.ver, iat=args.iat)
        token = tools.sign_token_list(claims, tools.load_signing_key(args.key))
        if args.out is not None:
            args.out.write_text(token + "\n")
        else:
            print(token, file=out)
        print(
            f"signed ver {claims['ver']} for {claims['aud']}: {len(claims['tokens'])} tokens",
            file=err,
        )
        return EXIT_OK
    if args.tool == "verify-tokens":
        data = _read_bytes(args.input)
        token_list = tools.check_token_list(data, tools.load_verify_key(args.key), args.gateway)
        print(f"good: {tools.describe(token_list)}", file=out)
        return EXIT_OK
    if args.tool == "mint-apns-jwt":
        token = tools.mint_apns_jwt(args.key, args.key_id, args.team_id, iat=args.iat)
        print(tools.fleet_message(token) if args.message else token, file=out)
        return EXIT_OK
    raise AssertionError(args.tool)


def _read_bytes(source: str) -> bytes:
    from edgebell.errors import CloudError

    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise CloudError(f"cannot read {source}: {exc.strerror}") from exc


def _read_json(source: str) -> Any:
    from edgebell.errors import CloudError

    try:
        return json.loads(_read_bytes(source))
    except ValueError as exc:
        where = "standard input" if source == "-" else source
        raise CloudError(f"{where}: not JSON ({exc})") from exc
