"""The MQTT topics of one gateway, as the contract in docs/mqtt.md names them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topics:
    """``P`` = ``<prefix>/<gateway id>``; the fleet topic is shared by every gateway."""

    prefix: str
    gateway_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.gateway_id}"

    def of(self, suffix: str) -> str:
        """``P/<suffix>``: the durable outgoing queue stores suffixes, so a renamed gateway's
        queued messages still go to its own (current) topics."""
        return f"{self.base}/{suffix}"

    @property
    def tokens(self) -> str:
        return self.of("tokens")

    @property
    def cmd(self) -> str:
        return self.of("cmd")

    @property
    def status(self) -> str:
        return self.of("status")

    @property
    def fleet_jwt(self) -> str:
        return f"{self.prefix}/fleet/apns-jwt"


# Suffixes of what the gateway sends: each one a P/<suffix> topic.
RING = "ring"
DELIVERY = "delivery"
FEEDBACK = "feedback"
CMD_REPLY = "cmd/reply"
