"""A ring becomes one notification per authorised token (the fan-out)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from edgebell.apns.payload import build_payload, collapse_id_for
from edgebell.rings import Notification, Ring, iso_time, new_id
from edgebell.tokens import AuthorisedToken

COLLAPSED_BODY = "{rings} rings at {button_name}, last at {last_at}"


@dataclass(frozen=True, slots=True)
class Template:
    """The alert text; ``{button_name}``, ``{button}`` and ``{presses}`` are filled per ring.

    ``collapsed`` is the body of one push standing for several rings that waited while
    Apple was unreachable: ``{rings}`` and ``{last_at}`` (the last ring's local HH:MM) too.
    """

    title: str
    body: str
    sound: str | None
    collapsed: str = COLLAPSED_BODY

    def render(self, ring: Ring) -> tuple[str, str]:
        values = {"button_name": ring.button_name, "button": ring.button, "presses": ring.presses}
        return self.title.format(**values), self.body.format(**values)

    def render_collapsed(self, ring: Ring, rings: int) -> tuple[str, str]:
        values = {
            "button_name": ring.button_name,
            "button": ring.button,
            "presses": ring.presses,
            "rings": rings,
            "last_at": time.strftime("%H:%M", time.localtime(ring.at)),
        }
        return self.title.format(**values), self.collapsed.format(**values)


class Notifier:
    """Turns a ring into notifications: one payload per ring, one row per token."""

    def __init__(self, template: Template, *, expiration: float, default_env: str) -> None:
        self._template = template
        self._expiration = expiration
        self._default_env = default_env

    def payload(self, ring: Ring, *, title: str | None = None, body: str | None = None) -> bytes:
        default_title, default_body = self._template.render(ring)
        return self._build(
            ring,
            default_title if title is None else title,
            default_body if body is None else body,
        )

    def _build(self, ring: Ring, title: str, body: str, rings: int = 1) -> bytes:
        return build_payload(
            title=title,
            body=body,
            sound=self._template.sound,
            thread_id=ring.button,
            ring_id=ring.ring_id,
            button=ring.button,
            at=iso_time(ring.at),
            rings=rings,
        )

    def collapsed(self, older: Notification, newer: Notification, button_name: str) -> Notification:
        """``older`` (still undelivered) now also stands for ``newer``'s rings: one push for all.

        It keeps its apns-id and collapse id, so a copy Apple may already have shown is
        replaced on the phone rather than joined by a second one; the text, ``edgebell.ring_id``
        and ``at`` become the newest ring's, and it lives until the newest ring expires.
        """
        rings = older.rings + newer.rings
        last = newer if newer.latest_at >= older.latest_at else older
        ring = Ring(last.latest_ring_id, newer.button, button_name, last.latest_at)
        title, body = self._template.render_collapsed(ring, rings)
        return replace(
            older,
            payload=self._build(ring, title, body, rings),
            expires_at=max(older.expires_at, newer.expires_at),
            rings=rings,
            last_ring_id=ring.ring_id,
            last_at=ring.at,
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
