"""The daemon's side of the cloud sync: what the sync asks of the gateway, and what it is told."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from edgebell.apns.auth import ApnsAuth, DelegatedAuth
from edgebell.apns.client import ApnsClient
from edgebell.apns.credentials import CredentialsCheck
from edgebell.apns.model import Environment, PushResult
from edgebell.cloud.messages import ProviderToken
from edgebell.cloud.tokenlist import TokenList
from edgebell.errors import ApnsError
from edgebell.outbox.dispatcher import Dispatcher
from edgebell.service import CommandService, RingResult
from edgebell.tokens import TokenBook
from edgebell.tokensources import TokenSources

log = logging.getLogger(__name__)


class CloudHooks:
    """:class:`~edgebell.cloud.sync.GatewayHooks` of one gateway: commands, lists, the fleet JWT."""

    def __init__(
        self,
        *,
        service: CommandService,
        tokens: TokenBook,
        sources: TokenSources,
        dispatcher: Dispatcher,
        client: ApnsClient,
        credentials: CredentialsCheck,
        auth: ApnsAuth,
    ) -> None:
        self._service = service
        self._tokens = tokens
        self._sources = sources
        self._dispatcher = dispatcher
        self._client = client
        self._credentials = credentials
        self._auth = auth
        self._background: set[asyncio.Task[None]] = set()  # fire-and-forget tasks, kept alive
        # False while the sync restores what it kept on disk: start-up's own warm-up and
        # credentials check then cover what the restored list and JWT need.
        self.started = False

    def ring(self, button: str) -> RingResult:
        return self._service.ring(button)

    async def test_push(self, token: str | None) -> Sequence[PushResult]:
        return await self._service.test_push(token)

    def pending_pushes(self) -> int:
        return self._dispatcher.status().pending

    def token_list_changed(self, token_list: TokenList) -> None:
        self._sources.use_cloud_list(token_list)
        self._dispatcher.purge_inactive()  # queued pushes to removed tokens are dropped now
        if self.started:
            self._warm_new_environments()

    def use_provider_token(self, token: ProviderToken) -> bool:
        if not isinstance(self._auth, DelegatedAuth):
            return False
        taken = self._auth.set_token(token.jwt, token.iat)
        if taken:
            self._dispatcher.wake_all()  # pushes that waited for a JWT go now, not after backoff
        if taken and self.started:
            self._credentials.recheck(self._sources.envs_in_use(), "new provider JWT")
        return taken

    def _warm_new_environments(self) -> None:
        """A list that brings the first phone of an environment: connect now, not at the ring."""
        connected = self._client.status().connected
        for env in {Environment(t.env) for t in self._tokens.active()}:
            if not connected.get(env.value):
                task = asyncio.create_task(self._warm(env), name=f"warm {env.value}")
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _warm(self, env: Environment) -> None:
        try:
            await self._client.connect(env)
        except ApnsError as exc:  # the first push to it will try again and report
            log.warning("APNs %s not reachable (%s): will retry", env.value, exc)
