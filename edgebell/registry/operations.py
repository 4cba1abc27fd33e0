"""The registry's operations, each one transaction: all of it happens, or none of it.

Every call that changes who may hear a gateway signs that gateway's new list in
the same transaction, under the gateway's row lock, with ``ver`` above the last
one; publishing it is the caller's next step (``publish``), and a list committed
but not yet published (a crash, the broker away, a change made by the CLI) is
found by ``unpublished`` and sent later. ``actor`` is the user a maker's own
authentication vouched for (None: a deployment's bearer token, which may do all);
what such a user may not see is answered as not found.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgebell.cloud import tools
from edgebell.errors import CloudError, Conflict, NotFound
from edgebell.privacy import short_token
from edgebell.registry import lists, model
from edgebell.registry.inbound import DEAD_STATUSES, DeliveryCounts, FeedbackReport, RingReport
from edgebell.registry.model import Change, Phone, Published, Share
from edgebell.registry.store import Database, Retry, Tx, run_retrying

MAX_PHONES_PER_USER = 100
MAX_SHARES_PER_GATEWAY = 100


@dataclass(frozen=True, slots=True)
class Retention:
    """How long what gateways report is kept: rings per gateway, and their age."""

    events_s: float = 30 * 86400
    events_per_gateway: int = 200
    removed_s: float = 90 * 86400


@dataclass(frozen=True, slots=True)
class FeedbackOutcome:
    """``refusal`` says why nothing changed (None: the token was removed)."""

    refusal: str | None
    change: Change


class Operations:
    """Synchronous: call from one worker thread (the service) or directly (the CLI)."""

    def __init__(
        self,
        db: Database,
        signing_key: Ed25519PrivateKey,
        *,
        clock: Callable[[], float] = time.time,
        retention: Retention = Retention(),
    ) -> None:
        self.db = db
        self._key = signing_key
        self._clock = clock
        self.retention = retention

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- users and phones ------------------------------------------------------------------

    def put_user(self, actor: str | None, user: str) -> Change:
        user = model.user_id(user)
        _may_act_as(actor, user)

        def work(tx: Tx) -> Change:
            known = tx.lock("users", [user])
            if known:
                return Change(f"user {user} exists")
            tx.execute("INSERT INTO users (id, created_at) VALUES (?, ?)", (user, self.now_ms()))
            return Change(f"user {user} created")

        return run_retrying(self.db, work)

    def register_phone(
        self,
        actor: str | None,
        user: str,
        token: str,
        env: object,
        registered_at: object = None,
    ) -> Change:
        user = model.user_id(user)
        token = model.device_token(token)
        env = model.environment(env)
        now = self.now_ms()
        at = (
            now
            if registered_at is None
            else model.epoch_ms(registered_at, "registered_at", now_ms=now)
        )
        _may_act_as(actor, user)

        def work(tx: Tx) -> Change:
            tx.execute(
                "INSERT INTO users (id, created_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
                (user, now),
            )
            rows = tx.execute("SELECT user_id FROM phones WHERE token = ?", (token,))
            previous = rows[0][0] if rows else None
            tx.lock("users", [user] + ([previous] if previous else []))
            old = tx.execute(
                "SELECT user_id, env, registered_at FROM phones WHERE token = ?", (token,)
            )
            if old and old[0][0] not in (user, previous):
                raise Retry("the phone moved to another user meanwhile")  # lock that one too
            if old and tuple(old[0]) == (user, env, at):
                return Change(f"phone {short_token(token)} of {user}: unchanged")
            if not old or old[0][0] != user:
                count = tx.execute("SELECT COUNT(*) FROM phones WHERE user_id = ?", (user,))
                if count[0][0] >= MAX_PHONES_PER_USER:
                    raise Conflict(f"{user} has {MAX_PHONES_PER_USER} phones, the most one may")
            tx.execute(
                "INSERT INTO phones (token, user_id, env, registered_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (token) DO UPDATE SET user_id = excluded.user_id, "
                "env = excluded.env, registered_at = excluded.registered_at",
                (token, user, env, at),
            )
            affected = _gateways_of(tx, [user] + ([old[0][0]] if old else []))
            moved = f" (was {old[0][0]}'s)" if old and old[0][0] != user else ""
            return Change(
                f"phone {short_token(token)} registered for {user}{moved}",
                self._relist(tx, affected),
            )

        return run_retrying(self.db, work)

    def unregister_phone(self, actor: str | None, user: str, token: str) -> Change:
        user = model.user_id(user)
        token = model.device_token(token)
        _may_act_as(actor, user)

        def work(tx: Tx) -> Change:
            if not tx.lock("users", [user]):
                raise NotFound(f"no user {user}")
            deleted = tx.execute(
                "DELETE FROM phones WHERE token = ? AND user_id = ? RETURNING token",
                (token, user),
            )
            if not deleted:
                raise NotFound(f"{user} has no phone {short_token(token)}")
            return Change(
                f"phone {short_token(token)} of {user} unregistered",
                self._relist(tx, _gateways_of(tx, [user])),
            )

        return run_retrying(self.db, work)

    # -- gateways and shares ---------------------------------------------------------------

    def put_gateway(self, actor: str | None, gateway: str, owner: str) -> Change:
        gateway = model.gateway_id(gateway)
        owner = model.user_id(owner)
        now = self.now_ms()

        def work(tx: Tx) -> Change:
            rows = tx.execute("SELECT owner FROM gateways WHERE id = ?", (gateway,))
            previous = rows[0][0] if rows else None
            # A user may create a gateway of their own, and give away only one they own.
            if actor is not None and previous is not None and actor != previous:
                raise NotFound(f"no gateway {gateway}")
            if actor is not None and previous is None and actor != owner:
                raise NotFound(f"no user {owner}")
            known = tx.lock("users", [owner] + ([previous] if previous else []))
            if owner not in known:
                raise NotFound(f"no user {owner} (a user exists once they register a phone)")
            if tx.lock("gateways", [gateway]):
                current = tx.execute("SELECT owner FROM gateways WHERE id = ?", (gateway,))[0][0]
                if current == owner:
                    return Change(f"{gateway} is owned by {owner}: unchanged")
                # The new owner hears every button now: a share of their own would be noise.
                tx.execute("DELETE FROM shares WHERE gateway = ? AND user_id = ?", (gateway, owner))
                tx.execute("UPDATE gateways SET owner = ? WHERE id = ?", (owner, gateway))
                detail = f"{gateway} re-owned: {current} -> {owner}"
            else:
                tx.execute(
                    "INSERT INTO gateways (id, owner, ver, digest, jws, published_ver, created_at)"
                    " VALUES (?, ?, 0, '', '', 0, ?)",
                    (gateway, owner, now),
                )
                detail = f"{gateway} created, owned by {owner}"
            return Change(detail, self._relist(tx, [gateway]))

        return run_retrying(self.db, work)

    def share(self, actor: str | None, gateway: str, user: str, buttons: object = None) -> Change:
        gateway = model.gateway_id(gateway)
        user = model.user_id(user)
        chosen = model.buttons(buttons)

        def work(tx: Tx) -> Change:
            owner = _owner_for(tx, actor, gateway, owner_only=True)
            if not tx.lock("users", [user]):
                raise NotFound(f"no user {user} (a user exists once they register a phone)")
            if user == owner:
                raise Conflict(f"{user} owns {gateway} and hears every button already")
            tx.lock("gateways", [gateway])
            old = tx.execute(
                "SELECT buttons FROM shares WHERE gateway = ? AND user_id = ?", (gateway, user)
            )
            encoded = None if chosen is None else json.dumps(list(chosen))
            if old and old[0][0] == encoded:
                return Change(f"{gateway} is shared with {user}: unchanged")
            if not old:
                count = tx.execute("SELECT COUNT(*) FROM shares WHERE gateway = ?", (gateway,))
                if count[0][0] >= MAX_SHARES_PER_GATEWAY:
                    raise Conflict(f"{gateway} has {MAX_SHARES_PER_GATEWAY} shares, the most")
            tx.execute(
                "INSERT INTO shares (gateway, user_id, buttons) VALUES (?, ?, ?) "
                "ON CONFLICT (gateway, user_id) DO UPDATE SET buttons = excluded.buttons",
                (gateway, user, encoded),
            )
            which = "every button" if chosen is None else ", ".join(chosen) or "no button"
            return Change(f"{gateway} shared with {user}: {which}", self._relist(tx, [gateway]))

        return run_retrying(self.db, work)

    def unshare(self, actor: str | None, gateway: str, user: str) -> Change:
        gateway = model.gateway_id(gateway)
        user = model.user_id(user)

        def work(tx: Tx) -> Change:
            # The owner takes a share back; a user may also leave one given to them.
            _owner_for(tx, actor if actor != user else None, gateway, owner_only=True)
            tx.lock("users", [user])
            tx.lock("gateways", [gateway])
            deleted = tx.execute(
                "DELETE FROM shares WHERE gateway = ? AND user_id = ? RETURNING user_id",
                (gateway, user),
            )
            if not deleted:
                raise NotFound(f"{gateway} is not shared with {user}")
            return Change(f"{gateway} no longer shared with {user}", self._relist(tx, [gateway]))

        return run_retrying(self.db, work)

    # -- what people see ------------------------------------------------------------------

    def gateway_view(self, actor: str | None, gateway: str) -> dict[str, Any]:
        gateway = model.gateway_id(gateway)

        def work(tx: Tx) -> dict[str, Any]:
            owner = _owner_for(tx, actor, gateway, owner_only=False)
            row = tx.execute("SELECT ver, published_ver FROM gateways WHERE id = ?", (gateway,))[0]
            shares = _shares(tx, gateway)
            entries = _entries(tx, owner, shares)
            return {
                "gateway": gateway,
                "owner": owner,
                "shares": [{"user": s.user, "buttons": _listed(s.buttons)} for s in shares],
                "ver": row[0],
                "published_ver": row[1],
                "phones": [
                    {
                        "token": short_token(e.token),
                        "env": e.env,
                        "user": e.user,
                        "registered_at": e.registered_at,
                        "buttons": _listed(e.buttons),
                    }
                    for e in entries
                ],
            }

        return run_retrying(self.db, work)

    def user_view(self, actor: str | None, user: str) -> dict[str, Any]:
        user = model.user_id(user)
        _may_act_as(actor, user)

        def work(tx: Tx) -> dict[str, Any]:
            if not tx.execute("SELECT id FROM users WHERE id = ?", (user,)):
                raise NotFound(f"no user {user}")
            phones = _phones(tx, [user]).get(user, [])
            owns = [
                r[0]
                for r in tx.execute("SELECT id FROM gateways WHERE owner = ? ORDER BY id", (user,))
            ]
            shared = tx.execute(
                "SELECT s.gateway, g.owner, s.buttons FROM shares s "
                "JOIN gateways g ON g.id = s.gateway WHERE s.user_id = ? ORDER BY s.gateway",
                (user,),
            )
            return {
                "user": user,
                "phones": [
                    {"token": short_token(p.token), "env": p.env, "registered_at": p.registered_at}
                    for p in phones
                ],
                "owns": owns,
                "shared_with_me": [
                    {"gateway": g, "owner": o, "buttons": _listed(_decode(b))} for g, o, b in shared
                ],
            }

        return run_retrying(self.db, work)

    def events(self, actor: str | None, gateway: str, limit: int = 50) -> dict[str, Any]:
        gateway = model.gateway_id(gateway)

        def work(tx: Tx) -> dict[str, Any]:
            _owner_for(tx, actor, gateway, owner_only=False)
            rows = tx.execute(
                "SELECT ring_id, button, at, presses, manual, received_at, delivery FROM events "
                "WHERE gateway = ? ORDER BY received_at DESC, ring_id LIMIT ?",
                (gateway, limit),
            )
            return {"gateway": gateway, "rings": [_event(*r) for r in rows]}

        return run_retrying(self.db, work)

    def removed(self, actor: str | None, limit: int = 100) -> dict[str, Any]:
        if actor is not None:
            raise NotFound("no such call for a user")

        def work(tx: Tx) -> dict[str, Any]:
            rows = tx.execute(
                "SELECT token, user_id, env, registered_at, removed_at, gateway, status, reason,"
                " apple_timestamp FROM removed ORDER BY removed_at DESC, id DESC LIMIT ?",
                (limit,),
            )
            return {
                "removed": [
                    {
                        "token": short_token(r[0]),
                        "user": r[1],
                        "env": r[2],
                        "registered_at": r[3],
                        "removed_at": r[4],
                        "reported_by": r[5],
                        "status": r[6],
                        "reason": r[7],
                        "apple_timestamp": r[8],
                    }
                    for r in rows
                ]
            }

        return run_retrying(self.db, work)

    # -- what gateways report ---------------------------------------------------------------

    def apply_feedback(self, gateway: str, report: FeedbackReport) -> FeedbackOutcome:
        """Remove a dead token, if this gateway really had it and no newer registration
        outlives Apple's verdict; else a refusal and no change."""
        now = self.now_ms()
        if report.status not in DEAD_STATUSES:
            return FeedbackOutcome("not a dead-token status", Change("refused"))
        if report.timestamp_ms is not None and report.timestamp_ms > now + model.MAX_FUTURE_MS:
            return FeedbackOutcome("Apple's timestamp is in the future", Change("refused"))
        # 410 carries Apple's verdict time; a 400 has none, so hearing it is the verdict.
        verdict_at = report.timestamp_ms if report.timestamp_ms is not None else now

        def work(tx: Tx) -> FeedbackOutcome:
            rows = tx.execute("SELECT owner, ver FROM gateways WHERE id = ?", (gateway,))
            if not rows:
                return FeedbackOutcome("unknown gateway", Change("refused"))
            owner, ver = rows[0]
            if report.ver is None or report.ver > ver:
                return FeedbackOutcome("not a list ver the registry issued", Change("refused"))
            phone = tx.execute(
                "SELECT user_id, env, registered_at FROM phones WHERE token = ?", (report.token,)
            )
            if not phone:
                return FeedbackOutcome("token not registered (already removed?)", Change("refused"))
            user = phone[0][0]
            tx.lock("users", [user])
            listed = {e.token for e in _entries(tx, owner, _shares(tx, gateway))}
            if report.token not in listed:
                return FeedbackOutcome("token not in this gateway's list", Change("refused"))
            user, env, registered_at = tx.execute(
                "SELECT user_id, env, registered_at FROM phones WHERE token = ?", (report.token,)
            )[0]
            if verdict_at <= registered_at:
                return FeedbackOutcome(
                    "phone registered again after Apple's verdict", Change("refused")
                )
            tx.execute("DELETE FROM phones WHERE token = ?", (report.token,))
            tx.execute(
                "INSERT INTO removed (token, user_id, env, registered_at, removed_at, gateway,"
                " status, reason, apple_timestamp) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    report.token,
                    user,
                    env,
                    registered_at,
                    now,
                    gateway,
                    report.status,
                    report.reason,
                    report.timestamp_ms,
                ),
            )
            return FeedbackOutcome(
                None,
                Change(
                    f"phone {short_token(report.token)} of {user} removed: "
                    f"{report.status} {report.reason}",
                    self._relist(tx, _gateways_of(tx, [user])),
                ),
            )

        return run_retrying(self.db, work)

    def record_ring(self, gateway: str, ring: RingReport) -> bool:
        """Keep a ring; False for a gateway the registry does not know."""

        def work(tx: Tx) -> bool:
            if not tx.execute("SELECT id FROM gateways WHERE id = ?", (gateway,)):
                return False
            tx.execute(
                "INSERT INTO events (gateway, ring_id, button, at, presses, manual, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gateway, ring_id) DO UPDATE SET"
                " button = excluded.button, at = excluded.at, presses = excluded.presses,"
                " manual = excluded.manual",
                (
                    gateway,
                    ring.ring_id,
                    ring.button,
                    ring.at,
                    ring.presses,
                    int(ring.manual),
                    self.now_ms(),
                ),
            )
            # Bounded per gateway: a chatty doorbell cannot fill the database.
            tx.execute(
                "DELETE FROM events WHERE gateway = ? AND ring_id IN (SELECT ring_id FROM events"
                " WHERE gateway = ? ORDER BY received_at DESC, ring_id LIMIT -1 OFFSET ?)"
                if _is_sqlite(self.db)
                else "DELETE FROM events WHERE gateway = ? AND ring_id IN (SELECT ring_id FROM"
                " events WHERE gateway = ? ORDER BY received_at DESC, ring_id OFFSET ?)",
                (gateway, gateway, self.retention.events_per_gateway),
            )
            return True

        return run_retrying(self.db, work)

    def record_delivery(self, gateway: str, counts: DeliveryCounts) -> bool:
        def work(tx: Tx) -> bool:
            if not tx.execute("SELECT id FROM gateways WHERE id = ?", (gateway,)):
                return False
            tx.execute(
                "INSERT INTO events (gateway, ring_id, received_at, delivery) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (gateway, ring_id) DO UPDATE SET delivery = excluded.delivery",
                (gateway, counts.ring_id, self.now_ms(), json.dumps(counts.document())),
            )
            return True

        return run_retrying(self.db, work)

    def prune(self) -> int:
        """Drop events and removal records past their retention; how many rows went."""
        now = self.now_ms()

        def work(tx: Tx) -> int:
            a = tx.execute(
                "DELETE FROM events WHERE received_at < ? RETURNING ring_id",
                (now - int(self.retention.events_s * 1000),),
            )
            b = tx.execute(
                "DELETE FROM removed WHERE removed_at < ? RETURNING id",
                (now - int(self.retention.removed_s * 1000),),
            )
            return len(a) + len(b)

        return run_retrying(self.db, work)

    # -- publishing ------------------------------------------------------------------------

    def current(self, gateway: str) -> Published | None:
        def work(tx: Tx) -> Published | None:
            rows = tx.execute("SELECT ver, jws FROM gateways WHERE id = ?", (gateway,))
            return Published(gateway, rows[0][0], rows[0][1]) if rows else None

        return run_retrying(self.db, work)

    def unpublished(self, limit: int = 1000) -> list[str]:
        def work(tx: Tx) -> list[str]:
            rows = tx.execute(
                "SELECT id FROM gateways WHERE ver > published_ver ORDER BY id LIMIT ?", (limit,)
            )
            return [r[0] for r in rows]

        return run_retrying(self.db, work)

    def unpublished_count(self) -> int:
        def work(tx: Tx) -> int:
            count: int = tx.execute("SELECT COUNT(*) FROM gateways WHERE ver > published_ver")[0][0]
            return count

        return run_retrying(self.db, work)

    def relist(self, gateways: Sequence[str]) -> tuple[Published, ...]:
        """Recompute (and sign when changed) these gateways' lists: after a bulk import."""
        return run_retrying(self.db, lambda tx: self._relist(tx, gateways))

    def publish(
        self,
        gateway: str,
        send: Callable[[Published], None],
        *,
        unless_ver: int | None = None,
        force: bool = False,
    ) -> Published | None:
        """Send the gateway's current list with ``send`` while holding its row lock.

        Under the lock no other instance can commit a newer list, or send one, until
        the broker has taken this one: the retained list never goes back to an older
        ``ver``. Without ``force``, only a list not yet published is sent; ``unless_ver``
        (a hello's ``tokens_ver``) skips a list the gateway already has.
        """

        def work(tx: Tx) -> Published | None:
            if not tx.lock("gateways", [gateway]):
                return None
            ver, jws, published_ver = tx.execute(
                "SELECT ver, jws, published_ver FROM gateways WHERE id = ?", (gateway,)
            )[0]
            if ver == unless_ver or (not force and published_ver >= ver):
                return None
            current = Published(gateway, ver, jws)
            send(current)
            tx.execute(
                "UPDATE gateways SET published_ver = ? WHERE id = ? AND published_ver < ?",
                (ver, gateway, ver),
            )
            return current

        return run_retrying(self.db, work)

    def fleet_jwt(self, mint: Callable[[int], str], *, min_age_s: int) -> tuple[str, int, bool]:
        """The fleet's provider JWT, minted anew only when the stored one is ``min_age_s``
        old: ``(jwt, iat, minted)``. Shared by every instance through the database."""
        now_s = int(self._clock())

        def work(tx: Tx) -> tuple[str, int, bool]:
            tx.execute(
                "INSERT INTO fleet (id, jwt, iat) VALUES (1, '', 0) ON CONFLICT (id) DO NOTHING"
            )
            # Instances take turns: only one mints when the JWT is due.
            tx.execute(_FLEET_LOCK_SQLITE if _is_sqlite(self.db) else _FLEET_LOCK_PG)
            token, iat = tx.execute("SELECT jwt, iat FROM fleet WHERE id = 1")[0]
            if token and 0 <= now_s - iat < min_age_s:
                return token, iat, False
            token = mint(now_s)
            tx.execute("UPDATE fleet SET jwt = ?, iat = ? WHERE id = 1", (token, now_s))
            return token, now_s, True

        return run_retrying(self.db, work)

    # -- the one place lists are made -----------------------------------------------------

    def _relist(self, tx: Tx, gateways: Iterable[str]) -> tuple[Published, ...]:
        """Lock, recompute and (when the content changed) sign each gateway's list."""
        changed: list[Published] = []
        now = self.now_ms()
        for gateway in tx.lock("gateways", list(gateways)):
            owner, ver, old_digest = tx.execute(
                "SELECT owner, ver, digest FROM gateways WHERE id = ?", (gateway,)
            )[0]
            entries = _entries(tx, owner, _shares(tx, gateway))
            digest = lists.digest(entries)
            if digest == old_digest:
                continue
            new_ver = lists.next_ver(ver, now)
            claims = lists.claims(gateway, new_ver, now // 1000, entries)
            try:
                jws = tools.sign_token_list(claims, self._key)
            except CloudError as exc:
                raise Conflict(f"{gateway}'s list cannot be signed: {exc}") from exc
            tx.execute(
                "UPDATE gateways SET ver = ?, digest = ?, jws = ? WHERE id = ?",
                (new_ver, digest, jws, gateway),
            )
            changed.append(Published(gateway, new_ver, jws))
        return tuple(changed)


def _may_act_as(actor: str | None, user: str) -> None:
    if actor is not None and actor != user:
        raise NotFound(f"no user {user}")


def _owner_for(tx: Tx, actor: str | None, gateway: str, *, owner_only: bool) -> str:
    """The gateway's owner; NotFound for an unknown gateway or one ``actor`` may not use."""
    rows = tx.execute("SELECT owner FROM gateways WHERE id = ?", (gateway,))
    if not rows:
        raise NotFound(f"no gateway {gateway}")
    owner: str = rows[0][0]
    if actor is None or actor == owner:
        return owner
    if not owner_only and tx.execute(
        "SELECT 1 FROM shares WHERE gateway = ? AND user_id = ?", (gateway, actor)
    ):
        return owner
    raise NotFound(f"no gateway {gateway}")


def _gateways_of(tx: Tx, users: Sequence[str]) -> list[str]:
    marks = ",".join("?" * len(users))
    rows = tx.execute(
        f"SELECT id FROM gateways WHERE owner IN ({marks}) "  # noqa: S608 - marks only
        f"UNION SELECT gateway FROM shares WHERE user_id IN ({marks})",
        [*users, *users],
    )
    return sorted({r[0] for r in rows})


def _shares(tx: Tx, gateway: str) -> list[Share]:
    rows = tx.execute(
        "SELECT user_id, buttons FROM shares WHERE gateway = ? ORDER BY user_id", (gateway,)
    )
    return [Share(user, _decode(buttons)) for user, buttons in rows]


def _phones(tx: Tx, users: Sequence[str]) -> dict[str, list[Phone]]:
    marks = ",".join("?" * len(users))
    rows = tx.execute(
        "SELECT token, user_id, env, registered_at FROM phones "  # noqa: S608 - marks only
        f"WHERE user_id IN ({marks}) ORDER BY token",
        list(users),
    )
    found: dict[str, list[Phone]] = {}
    for token, user, env, registered_at in rows:
        found.setdefault(user, []).append(Phone(token, user, env, registered_at))
    return found


def _entries(tx: Tx, owner: str, shares: Sequence[Share]) -> tuple[model.Entry, ...]:
    return lists.authorised(owner, shares, _phones(tx, [owner, *(s.user for s in shares)]))


def _decode(buttons: str | None) -> tuple[str, ...] | None:
    return None if buttons is None else tuple(json.loads(buttons))


def _listed(buttons: tuple[str, ...] | None) -> list[str] | None:
    return None if buttons is None else list(buttons)


def _is_sqlite(db: Database) -> bool:
    return db.url.startswith("sqlite:")


_FLEET_LOCK_SQLITE = "SELECT id FROM fleet WHERE id = 1"
_FLEET_LOCK_PG = "SELECT id FROM fleet WHERE id = 1 FOR UPDATE"


def _event(
    ring_id: str,
    button: str | None,
    at: str | None,
    presses: int | None,
    manual: int | None,
    received_at: int,
    delivery: str | None,
) -> dict[str, Any]:
    counts = None if delivery is None else json.loads(delivery)
    return {
        "ring_id": ring_id,
        "button": button,
        "at": at,
        "presses": presses,
        "manual": bool(manual),
        "received_at": received_at,
        "delivery": counts,
        "summary": summary(at, counts),
    }


def summary(at: str | None, counts: dict[str, Any] | None) -> str:
    """``rang at 14:05, reached 3 of 4 phones`` (the time as the gateway wrote it)."""
    when = "rang"
    if at:
        with contextlib.suppress(ValueError):
            when = f"rang at {datetime.fromisoformat(at).strftime('%H:%M')}"
    if counts is None:
        return f"{when}, no delivery report yet"
    total = sum(
        int(counts.get(k, 0)) for k in ("delivered", "failed", "queued", "expired", "removed")
    )
    text = (
        f"{when}, reached {counts.get('delivered', 0)} of {total} phone{'s' if total != 1 else ''}"
    )
    if counts.get("queued"):
        text += f" ({counts['queued']} still queued)"
    return text
