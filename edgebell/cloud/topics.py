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
    def apns_jwt(self) -> str:
        """The fleet JWT sent to this gateway alone: the cloud's answer to its hello."""
        return self.of(APNS_JWT)

    @property
    def hello(self) -> str:
        return self.of(HELLO)

    @property
    def fleet_jwt(self) -> str:
        return fleet_jwt_topic(self.prefix)


def fleet_jwt_topic(prefix: str) -> str:
    """``<prefix>/fleet/apns-jwt``: the one topic every gateway of the fleet reads."""
    return f"{prefix}/fleet/apns-jwt"


def gateway_of(topic: str, prefix: str, suffix: str) -> str | None:
    """The cloud side: the gateway id in ``<prefix>/<id>/<suffix>``, None for another topic."""
    head, tail = f"{prefix}/", f"/{suffix}"
    if not (topic.startswith(head) and topic.endswith(tail)):
        return None
    gateway_id = topic[len(head) : len(topic) - len(tail)]
    return gateway_id if gateway_id and "/" not in gateway_id else None


# Suffixes of what the gateway sends: each one a P/<suffix> topic.
RING = "ring"
DELIVERY = "delivery"
FEEDBACK = "feedback"
CMD_REPLY = "cmd/reply"
HELLO = "hello"
# ... and of what the cloud sends to one gateway.
APNS_JWT = "apns-jwt"
