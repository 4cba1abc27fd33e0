"""``edgebell cloud serve``: wires the database, the operations, MQTT and the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from edgebell.cloud import tools
from edgebell.errors import CloudError, ConfigError
from edgebell.registry.api import Api
from edgebell.registry.auth import Authenticator
from edgebell.registry.config import RegistryConfig
from edgebell.registry.http import start_http
from edgebell.registry.mqtt import RegistryLink
from edgebell.registry.operations import Operations
from edgebell.registry.service import RegistryService
from edgebell.registry.store import open_database

log = logging.getLogger(__name__)


def open_operations(config: RegistryConfig) -> Operations:
    """The database and the signing key of ``config`` (what the CLI's subcommands use too)."""
    try:
        key = tools.load_signing_key(config.signing_key)
    except CloudError as exc:  # not an Ed25519 key: the config names the wrong file
        raise ConfigError(str(exc), file=str(config.source), key="signing_key") from exc
    return Operations(open_database(config.database), key, retention=config.retention)


async def serve(config: RegistryConfig) -> int:
    """Run until SIGTERM or SIGINT; 0 then."""
    auth = Authenticator(config.http.api_tokens_file, config.http.auth_hook)
    ops = await asyncio.to_thread(open_operations, config)
    service = RegistryService(ops, topic_prefix=config.topic_prefix, apns=config.apns)
    link = None if config.mqtt is None else RegistryLink(config.mqtt, service)
    if not auth.configured:
        log.warning("no http.api_tokens_file or auth_hook: the API refuses every call")
    if link is None:
        log.warning("no mqtt section: lists are kept but not published")
    server = await start_http(
        Api(service, auth),
        config.http.host,
        config.http.port,
        on_refusal=lambda r: service.refuse("api", str(r.status), about=str(r.document)),
    )
    log.info("registry on %s: API on http://%s:%d", ops.db.url, config.http.host, config.http.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(service.housekeeping())]
    if link is not None:
        tasks.append(asyncio.create_task(link.run()))
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        server.close()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await server.wait_closed()
        service.close()
        ops.db.close()
    return 0
