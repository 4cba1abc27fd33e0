"""The daemon's side of the Home Assistant link: open it, swap it on reload, read its sensors."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from edgebell.apns.credentials import CredentialState
from edgebell.config.model import Config
from edgebell.homeassistant.discovery import Button, GatewayState, apns_state
from edgebell.homeassistant.link import HomeAssistantLink

if TYPE_CHECKING:
    from edgebell.apns.client import ApnsClient
    from edgebell.apns.credentials import CredentialsCheck
    from edgebell.outbox.dispatcher import Dispatcher
    from edgebell.radio.serial import SerialReceiver

log = logging.getLogger(__name__)

HANDOVER_TIMEOUT = 3.0  # a reload that moves to another broker: the old link's goodbye
_retiring: set[asyncio.Task[None]] = set()  # old links saying goodbye, kept alive till done


class GatewayParts(Protocol):
    """What the diagnostic sensors read (parts of the daemon, built with it)."""

    @property
    def dispatcher(self) -> Dispatcher: ...

    @property
    def client(self) -> ApnsClient: ...

    @property
    def receiver(self) -> SerialReceiver: ...

    @property
    def credentials(self) -> CredentialsCheck: ...


def gateway_state(parts: GatewayParts) -> GatewayState:
    outbox = parts.dispatcher.status()
    apns = parts.client.status()
    # A JWT the signer cannot make, then a refusal the engine saw, then the probe's verdict.
    auth_problem = parts.client.auth_problem or outbox.auth_problem
    credentials = parts.credentials
    # Apple refused the key, team or topic at start: auth_error before any ring is lost.
    if auth_problem is None and credentials.state is CredentialState.REFUSED:
        auth_problem = credentials.problem()
    return GatewayState(
        queue=outbox.pending,
        apns=apns_state(connected=any(apns.connected.values()), auth_problem=auth_problem),
        apns_error=auth_problem or apns.last_error,
        receiver=parts.receiver.status().connected,
    )


def buttons_of(config: Config) -> list[Button]:
    return [Button(b.id, b.name) for b in config.buttons]


def open_link(config: Config, version: str, parts: GatewayParts) -> HomeAssistantLink | None:
    """The started link of ``config.home_assistant``; None without that section."""
    link = _new_link(config, version, parts)
    if link is not None:
        link.start()
    return link


def reload_link(
    link: HomeAssistantLink | None, config: Config, version: str, parts: GatewayParts
) -> HomeAssistantLink | None:
    """The link for a reloaded ``config``: the same one if its connection stays, else a new one.

    A new broker, user or topic layout needs a new connection: the old link says
    ``offline`` and disconnects first, then the new one connects (they share a client id).
    """
    section = config.home_assistant
    if link is not None and section is not None and link.reconfigure(section, buttons_of(config)):
        return link
    new = _new_link(config, version, parts)

    async def hand_over() -> None:
        if link is not None:
            await link.stop(HANDOVER_TIMEOUT)
        if new is not None:
            new.start()

    task = asyncio.create_task(hand_over(), name="home-assistant handover")
    _retiring.add(task)
    task.add_done_callback(_retiring.discard)
    log.info("Home Assistant section %s", "removed" if new is None else "changed: reconnecting")
    return new


def _new_link(config: Config, version: str, parts: GatewayParts) -> HomeAssistantLink | None:
    if config.home_assistant is None:
        return None
    return HomeAssistantLink(
        config.home_assistant,
        gateway_id=config.gateway.id,
        version=version,
        buttons=buttons_of(config),
        state_dir=config.state_dir,
        snapshot=lambda: gateway_state(parts),
    )
