"""A ring becomes one notification per authorised token (the fan-out)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgebell.apns.payload import build_payload, collapse_id_for
from edgebell.rings import Notification, Ring, iso_time, new_id
from edgebell.tokens import AuthorisedToken


@dataclass(frozen=True, slots=True)
class Template:
    """The alert text; ``{button_name}``, ``{button}`` and ``{presses}`` are filled per ring."""

    title: str
    body: str
    sound: str | None

    def render(self, ring: Ring) -> tuple[str, str]:
        values = {"button_name": ring.button_name, "button": ring.button, "presses": ring.presses}
        return self.title.format(**values), self.body.format(**values)


class Notifier:
    """Turns a ring into notifications: one payload per ring, one row per token."""

    def __init__(self, template: Template, *, expiration: float, default_env: str) -> None:
        self._template = template
        self._expiration = expiration
        self._default_env = default_env

    def payload(self, ring: Ring, *, title: str | None = None, body: str | None = None) -> bytes:
        default_title, default_body = self._template.render(ring)
        return build_payload(
            title=default_title if title is None else title,
            body=default_body if body is None else body,
            sound=self._template.sound,
            thread_id=ring.button,
            ring_id=ring.ring_id,
            button=ring.button,
            at=iso_time(ring.at),
        )

    def fan_out(
        self, ring: Ring, tokens: Sequence[AuthorisedToken], *, payload: bytes | None = None
    ) -> list[Notification]:
        body = self.payload(ring) if payload is None else payload
        collapse_id = collapse_id_for(ring.ring_id)
        expires_at = ring.at + self._expiration
        return [
            Notification(
                apns_id=new_id(),
                ring_id=ring.ring_id,
                button=ring.button,
                token=t.token,
                env=t.env or self._default_env,
                collapse_id=collapse_id,
                payload=body,
                created_at=ring.at,
                expires_at=expires_at,
                ver=t.ver,
            )
            for t in tokens
        ]
