"""The running gateway's status, read from its parts: `edgebell status` and systemd's STATUS=."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from edgebell import __version__
from edgebell.logs import counters as log_counters
from edgebell.status import ConfigState, StatusReport, build_status

if TYPE_CHECKING:
    from edgebell.apns.client import ApnsClient
    from edgebell.apns.credentials import CredentialsCheck
    from edgebell.cloud.sync import CloudSync
    from edgebell.homeassistant.link import HomeAssistantLink
    from edgebell.outbox.dispatcher import Dispatcher
    from edgebell.outbox.store import OutboxStore
    from edgebell.radio.serial import SerialReceiver
    from edgebell.ringpath import RingRules
    from edgebell.tokens import TokenBook


class GatewayStatus:
    """Reads every part that has something to say; nothing here is kept, all is derived."""

    def __init__(
        self,
        *,
        started_at: float,
        receiver: SerialReceiver,
        rules: RingRules,
        tokens: TokenBook,
        client: ApnsClient,
        credentials: CredentialsCheck,
        dispatcher: Dispatcher,
        store: OutboxStore,
        cloud: CloudSync | None,
    ) -> None:
        self.started_at = started_at
        self._started_mono = time.monotonic()
        self._receiver = receiver
        self._rules = rules
        self._tokens = tokens
        self._client = client
        self._credentials = credentials
        self._dispatcher = dispatcher
        self._store = store
        self._cloud = cloud

    def report(
        self, *, ready: bool, config: ConfigState, home_assistant: HomeAssistantLink | None
    ) -> StatusReport:
        """What status says now; ``home_assistant``: the link in use (a reload may swap it)."""
        credentials = self._credentials
        return build_status(
            version=__version__,
            started_at=self.started_at,
            uptime_s=time.monotonic() - self._started_mono,
            ready=ready,
            radio=self._receiver.status(),
            buttons=self._rules.tracker.ring_counts(),
            tokens=self._tokens,
            apns=credentials.discount(self._client.status()),
            credentials=credentials.status(),
            # A JWT the signer cannot make outranks what the last probe proved.
            credentials_problem=self._client.auth_problem or credentials.problem(),
            outbox=self._dispatcher.status(),
            store=self._store.health(),
            cloud=None if self._cloud is None else self._cloud.status(),
            home_assistant=None if home_assistant is None else home_assistant.status(),
            config=config,
            logs=log_counters(),
        )
