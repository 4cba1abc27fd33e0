"""``edgebell cloud serve`` and ``edgebell cloud registry …``: the registry for operators.

The subcommands change the database directly, one transaction each, with the
same checks as the API; the running ``edgebell cloud serve`` publishes the lists
they change within a second (it looks for lists not yet published).
Exit codes: 0 done, 1 refused (the reason printed), 2 bad configuration.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from edgebell.errors import ConfigError, EdgebellError, RegistryError

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_CONFIG = 2


def add_parsers(tools: Any) -> None:
    """``serve`` and ``registry`` under ``edgebell cloud``."""
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", type=Path, required=True, help="the registry's config file")

    tools.add_parser(
        "serve",
        parents=[config],
        help="run the token registry: HTTP API, signed lists over MQTT (docs/cloud.md)",
    )
    registry = tools.add_parser("registry", help="change or show the token registry as an operator")
    ops = registry.add_subparsers(dest="op", required=True, metavar="OPERATION")
    p = ops.add_parser("user", parents=[config], help="create a user (without a phone yet)")
    p.add_argument("user")
    p = ops.add_parser("gateway", parents=[config], help="create a gateway or give it a new owner")
    p.add_argument("gateway")
    p.add_argument("--owner", required=True)
    p = ops.add_parser("register", parents=[config], help="register (or re-register) a phone")
    p.add_argument("user")
    p.add_argument("token")
    p.add_argument("--env", required=True, choices=("production", "sandbox"))
    p.add_argument("--registered-at", type=int, help="epoch ms (default: now)")
    p = ops.add_parser("unregister", parents=[config], help="unregister a phone")
    p.add_argument("user")
    p.add_argument("token")
    p = ops.add_parser("share", parents=[config], help="share a gateway with a user")
    p.add_argument("gateway")
    p.add_argument("user")
    p.add_argument("--buttons", help="comma-separated button ids (default: every button)")
    p = ops.add_parser("unshare", parents=[config], help="take a share back")
    p.add_argument("gateway")
    p.add_argument("user")
    p = ops.add_parser("show", parents=[config], help="a gateway: owner, shares, ver, phones")
    p.add_argument("gateway")
    p = ops.add_parser("show-user", parents=[config], help="a user's phones and gateways")
    p.add_argument("user")
    p = ops.add_parser("events", parents=[config], help="a gateway's recent rings")
    p.add_argument("gateway")
    ops.add_parser("removed", parents=[config], help="tokens removed by Apple's feedback")


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from edgebell.registry.config import load_registry_config

    try:
        config = load_registry_config(args.config)
        if args.tool == "serve":
            import asyncio

            from edgebell.logs import setup_logging
            from edgebell.registry.serve import serve

            setup_logging(config.log_level)
            return asyncio.run(serve(config))
        return _operate(args, config, out)
    except ConfigError as exc:
        print(f"edgebell cloud {args.tool}: configuration error: {exc}", file=err)
        return EXIT_CONFIG
    except RegistryError as exc:
        print(f"edgebell cloud registry {args.op}: refused ({exc.status}): {exc}", file=err)
        return EXIT_REFUSED
    except EdgebellError as exc:
        print(f"edgebell cloud {args.tool}: {exc}", file=err)
        return EXIT_REFUSED
    except ImportError as exc:  # h11 or psycopg: the `cloud` extra is not installed
        print(
            f"edgebell cloud {args.tool}: {exc.name or exc} is missing:"
            " pip install 'edgebell[cloud]'",
            file=err,
        )
        return EXIT_REFUSED


def _operate(args: argparse.Namespace, config: Any, out: TextIO) -> int:
    from edgebell.registry.model import Change
    from edgebell.registry.serve import open_operations

    ops = open_operations(config)
    try:
        result = _call(ops, args)
    finally:
        ops.db.close()
    if isinstance(result, Change):
        print(result.detail, file=out)
        for published in result.lists:
            print(
                f"  {published.gateway}: new list ver {published.ver}"
                " (the running `edgebell cloud serve` publishes it)",
                file=out,
            )
    else:
        print(json.dumps(result, indent=2, ensure_ascii=False), file=out)
    return EXIT_OK


def _call(ops: Any, args: argparse.Namespace) -> Any:
    op = args.op
    if op == "user":
        return ops.put_user(None, args.user)
    if op == "gateway":
        return ops.put_gateway(None, args.gateway, args.owner)
    if op == "register":
        return ops.register_phone(None, args.user, args.token, args.env, args.registered_at)
    if op == "unregister":
        return ops.unregister_phone(None, args.user, args.token)
    if op == "share":
        buttons = None if args.buttons is None else [b.strip() for b in args.buttons.split(",")]
        return ops.share(None, args.gateway, args.user, buttons)
    if op == "unshare":
        return ops.unshare(None, args.gateway, args.user)
    if op == "show":
        return ops.gateway_view(None, args.gateway)
    if op == "show-user":
        return ops.user_view(None, args.user)
    if op == "events":
        return ops.events(None, args.gateway)
    if op == "removed":
        return ops.removed(None)
    raise AssertionError(op)
