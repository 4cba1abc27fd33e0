"""The HTTP JSON API (docs/cloud.md): routes to registry operations, errors as ``{"error"}``."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from edgebell.errors import BadRequest, NotFound, RegistryError, StoreError
from edgebell.privacy import redact
from edgebell.registry import model
from edgebell.registry.auth import Authenticator, AuthRequest, Principal
from edgebell.registry.http import Request, Response
from edgebell.registry.service import RegistryService

Action = Callable[[RegistryService, Principal, dict[str, str], Any], Awaitable[Any]]


async def _put_gateway(s: RegistryService, p: Principal, a: dict[str, str], body: Any) -> Any:
    fields = model.body_fields(body, ("owner",))
    if "owner" not in fields:
        raise BadRequest('the body must name the owner: {"owner": user}')
    return await s.change(s.ops.put_gateway, p.user, a["gw"], fields["owner"])


async def _get_gateway(s: RegistryService, p: Principal, a: dict[str, str], body: Any) -> Any:
    return await s.call(s.ops.gateway_view, p.user, a["gw"])


async def _put_user(s: RegistryService, p: Principal, a: dict[str, str], body: Any) -> Any:
    model.body_fields(body, ())
    return await s.change(s.ops.put_user, p.user, a["user"])


async def _get_user(s: RegistryService, p: Principal, a: dict[str, str], body: Any) -> Any:
    return await s.call(s.ops.user_view, p.user, a["user"])


async def _put_phone(s: RegistryService, p: Principal, a: dict[str, str], body: Any) -> Any:
    fields = model.body_fields(body, ("env", "registered_at"))
    if "env" not in fields:
        raise BadRequest('the body must give env: {"env": "production" | "sandbox"}')
    return await s.change(
        s.ops.register_phone,
        p.user,
        a["user"],
        a["token"],
        fields["env"],
        fields.get("registered_at"),
    )


async def _delete_phone(s: RegistryService, p: Principal, a: dict[str, str], body: Any) -> Any:
    return await s.change(s.ops.unregister_phone, p.user, a["user"], a["token"])


async def _put_share(s: RegistryService, p: Principal, a: dict[str, str], body: Any) -> Any:
    fields = model.body_fields(body, ("buttons",))
    return await s.change(s.ops.share, p.user, a["gw"], a["user"], fields.get("buttons"))


async def _delete_share(s: RegistryService, p: Principal, a: dict[str, str], body: Any) -> Any:
    return await s.change(s.ops.unshare, p.user, a["gw"], a["user"])


async def _events(s: RegistryService, p: Principal, a: dict[str, str], body: Any) -> Any:
    return await s.call(s.ops.events, p.user, a["gw"], _limit(a, 50, 500))


async def _removed(s: RegistryService, p: Principal, a: dict[str, str], body: Any) -> Any:
    return await s.call(s.ops.removed, p.user, _limit(a, 100, 1000))


def _limit(arguments: dict[str, str], default: int, most: int) -> int:
    """``?limit=N`` (1 to ``most``)."""
    text = arguments.get("limit")
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= most:
        raise BadRequest(f"limit must be a whole number from 1 to {most}")
    return int(text)


async def _status(s: RegistryService, p: Principal, a: dict[str, str], body: Any) -> Any:
    if p.user is not None:
        raise NotFound("no such call for a user")
    return await s.status()


def _route(method: str, pattern: str, action: Action) -> tuple[str, re.Pattern[str], Action]:
    regex = re.sub(r"\{(\w+)\}", lambda m: f"(?P<{m.group(1)}>[^/]+)", pattern)
    return method, re.compile(regex + "$"), action


ROUTES = (
    _route("PUT", "/v1/gateways/{gw}", _put_gateway),
    _route("GET", "/v1/gateways/{gw}", _get_gateway),
    _route("PUT", "/v1/users/{user}", _put_user),
    _route("GET", "/v1/users/{user}", _get_user),
    _route("PUT", "/v1/users/{user}/phones/{token}", _put_phone),
    _route("DELETE", "/v1/users/{user}/phones/{token}", _delete_phone),
    _route("PUT", "/v1/gateways/{gw}/shares/{user}", _put_share),
    _route("DELETE", "/v1/gateways/{gw}/shares/{user}", _delete_share),
    _route("GET", "/v1/gateways/{gw}/events", _events),
    _route("GET", "/v1/removed", _removed),
    _route("GET", "/v1/status", _status),
)


class Api:
    """Authenticates, routes, parses the body, maps RegistryError to its status."""

    def __init__(self, service: RegistryService, auth: Authenticator) -> None:
        self._service = service
        self._auth = auth

    async def __call__(self, request: Request) -> Response:
        path = urlsplit(request.target).path
        try:
            principal = await self._auth.authenticate(
                AuthRequest(request.method, path, request.headers)
            )
            action, arguments = _match(request.method, path)
            arguments.update(_query(request.target))
            body = _json(request.body)
            result = await action(self._service, principal, arguments, body)
        except RegistryError as exc:
            # A token in the path or body never reaches the log in full.
            self._service.refuse(
                "api", str(exc.status), about=f"{request.method} {redact(path)}: {redact(str(exc))}"
            )
            return Response(exc.status, {"error": str(exc)})
        except StoreError as exc:  # the database is away: try again later, nothing was done
            self._service.refuse("api", "503", about=str(exc))
            return Response(503, {"error": f"the registry's database is unavailable: {exc}"})
        return Response(200, result)


def _match(method: str, path: str) -> tuple[Action, dict[str, str]]:
    for route_method, regex, action in ROUTES:
        found = regex.match(path)
        if found and route_method == method:
            return action, {k: unquote(v) for k, v in found.groupdict().items()}
    raise NotFound(f"no such call: {method} {redact(path)}")


def _query(target: str) -> dict[str, str]:
    """The query parameters the calls take (only ``limit``); anything else is an error."""
    query = urlsplit(target).query
    if not query:
        return {}
    found = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(found) - {"limit"})
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0]!r} (known: limit)")
    return found


def _json(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except ValueError:
        raise BadRequest("the body is not JSON") from None
