"""What ``edgebell status`` says: the status JSON of the contract, its verdict and a human table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgebell.rings import iso_time

if TYPE_CHECKING:
    # Only types: `edgebell status` imports this module for render_human and must stay quick.
    from edgebell.apns.client import ApnsStatus
    from edgebell.outbox.dispatcher import OutboxStatus
    from edgebell.outbox.store import StoreHealth
    from edgebell.radio.serial import RadioStatus
    from edgebell.tokens import TokenBook

# A notification older than this still undelivered means pushes are not getting out.
STUCK_AFTER_S = 60.0


@dataclass(frozen=True, slots=True)
class ConfigState:
    """The configuration the daemon runs: its file, when it was read, what a reload left over."""

    file: str
    loaded_at: float
    reload_error: str | None = None  # the last SIGHUP found the file broken: the old one runs
    restart_needed: tuple[str, ...] = ()  # changed keys a reload cannot apply (radio.port ...)


@dataclass(frozen=True, slots=True)
class StatusReport:
    data: dict[str, Any]
    problems: tuple[str, ...]

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def summary(self) -> str:
        """One line for systemd's STATUS= and the start-up log."""
        if "starting" in self.problems:
            waiting = [p for p in self.problems if p != "starting"]
            return "starting" + (": " + "; ".join(waiting) if waiting else "")
        if self.problems:
            return "degraded: " + "; ".join(self.problems)
        return (
            f"healthy: receiver on {self.data['radio']['port']}, "
            f"{self.data['tokens']['count']} phones, {self.data['outbox']['pending']} queued"
            + _credentials_note(self.data)
        )


def _credentials_note(data: dict[str, Any]) -> str:
    credentials = data["apns"].get("credentials") or {}
    if credentials.get("state") == "verified":
        return f", APNs credentials verified at {credentials['verified_at']}"
    return ""


def _when(epoch: float | None) -> str | None:
    return None if epoch is None else iso_time(epoch)


def build_status(
    *,
    version: str,
    started_at: float,
    uptime_s: float,
    ready: bool,
    radio: RadioStatus,
    buttons: Sequence[tuple[str, float | None, int]],
    tokens: TokenBook,
    apns: ApnsStatus,
    outbox: OutboxStatus,
    store: StoreHealth,
    cloud: dict[str, Any] | None,
    config: ConfigState | None = None,
    home_assistant: dict[str, Any] | None = None,
    credentials: dict[str, Any] | None = None,
    credentials_problem: str | None = None,
    logs: dict[str, int] | None = None,
) -> StatusReport:
    problems: list[str] = []
    if not radio.connected:
        why = f" ({radio.last_error})" if radio.last_error else ""
        problems.append(f"receiver not connected on {radio.port}{why}")
    if credentials_problem:
        problems.append(credentials_problem)
    if outbox.auth_problem:
        problems.append(outbox.auth_problem + " — check apns.auth")
    down = sorted(env for env, up in outbox.links.items() if not up)
    if down:
        problems.append(f"APNs unreachable ({', '.join(down)}): {outbox.pending} pushes waiting")
    if outbox.oldest_age_s is not None and outbox.oldest_age_s > STUCK_AFTER_S and not down:
        problems.append(f"queue not draining: oldest push waiting {outbox.oldest_age_s:.0f} s")
    problems += store.problems  # each store failure worded, with the rings it puts at risk
    active = len(tokens.active())
    if active == 0:
        problems.append("no phone to notify (empty token list)")
    if cloud is not None:
        # The cloud sync words its own problems (broker, ACL, delegated JWT).
        cloud = dict(cloud)
        problems += cloud.pop("problems", None) or (
            [] if cloud.get("connected") else ["cloud broker unreachable"]
        )
    if home_assistant is not None:  # the link words its own problems (broker, credentials)
        home_assistant = dict(home_assistant)
        problems += home_assistant.pop("problems", None) or []
    if config is not None and config.reload_error:
        problems.append(
            f"config file refused at reload, still running the previous one "
            f"(a restart would fail): {config.reload_error}"
        )
    if not ready:
        problems.append("starting")
    data: dict[str, Any] = {
        "state": "degraded" if problems else "healthy",
        "version": version,
        "since": iso_time(started_at),
        "uptime_s": round(uptime_s, 1),
        "problems": problems,
        "radio": {
            "connected": radio.connected,
            "port": radio.port,
            "last_frame_at": _when(radio.last_frame_at),
            "frames": radio.frames,
            "bad_frames": radio.bad_frames,
            "reconnects": radio.reconnects,
            "last_error": radio.last_error,
        },
        "buttons": [
            {"id": bid, "last_ring_at": _when(last), "rings": count} for bid, last, count in buttons
        ],
        "tokens": {
            "count": active,
            "ver": tokens.ver,
            "suppressed": tokens.suppressed_count,
        },
        "cloud": cloud,
        "home_assistant": home_assistant,
        "apns": {
            "connected": any(apns.connected.values()),
            "connections": apns.connected,
            "auth": apns.auth,
            "sent": apns.sent,
            "delivered": apns.delivered,
            "failed": apns.failed,
            "last_error": apns.last_error,
            "credentials": credentials,
        },
        "outbox": {
            "pending": outbox.pending,
            "oldest_age_s": None if outbox.oldest_age_s is None else round(outbox.oldest_age_s, 1),
            "in_flight": outbox.in_flight,
            "expired": outbox.expired,
            "collapsed": outbox.collapsed,
            "resent": outbox.resent,
            "store_ok": store.ok,
            "store_error": store.last_error,
            "moved_aside": store.moved_aside,
            "unwritten_rings": store.unwritten_rings,
            "unwritten_rows": store.unwritten_rows,
            "dropped_rings": store.dropped_rings,
            "lost_at_start": store.lost_at_start,
            "tokens_store_error": store.tokens_error,
        },
        # Log records the full queue dropped, and repeated lines held back (see logqueue.py).
        "logs": logs,
        "config": None
        if config is None
        else {
            "file": config.file,
            "loaded_at": iso_time(config.loaded_at),
            "reload_error": config.reload_error,
            "restart_needed": list(config.restart_needed),
        },
    }
    return StatusReport(data, tuple(problems))


def render_human(data: dict[str, Any]) -> str:
    """The status JSON as a short table a person reads at a glance."""
    radio = data["radio"]
    apns = data["apns"]
    outbox = data["outbox"]
    tokens = data["tokens"]
    cloud = data.get("cloud")
    lines = [
        f"edgebell {data['version']}: {data['state'].upper()}  (up {_duration(data['uptime_s'])})",
    ]
    for problem in data.get("problems", []):
        lines.append(f"  ! {problem}")
    lines += [
        "",
        f"receiver   {'connected' if radio['connected'] else 'NOT CONNECTED'} on {radio['port']}"
        f"; {_count(radio['frames'], 'frame')}, {radio['bad_frames']} bad"
        f"; last frame {radio['last_frame_at'] or 'never'}",
    ]
    for b in data["buttons"]:
        rings = "1 ring" if b["rings"] == 1 else f"{b['rings']} rings"
        lines.append(f"button     {b['id']}: {rings}, last {b['last_ring_at'] or 'never'}")
    ver = "static config" if tokens["ver"] is None else f"list ver {tokens['ver']}"
    lines.append(
        f"phones     {tokens['count']} ({ver}), {tokens['suppressed']} suppressed by Apple"
    )
    lines.append(
        f"apns       {'connected' if apns['connected'] else 'not connected'} ({apns['auth']} auth)"
        f"; {apns['sent']} sent, {apns['delivered']} delivered, {apns['failed']} failed"
    )
    credentials = apns.get("credentials")
    if credentials:
        lines.append(f"           {_credentials_line(credentials)}")
    if apns.get("last_error"):
        lines.append(f"           last error: {apns['last_error']}")
    oldest = outbox["oldest_age_s"]
    lines.append(
        f"outbox     {outbox['pending']} pending"
        + ("" if oldest is None else f", oldest {oldest:.0f} s")
        + f", {outbox['expired']} expired"
        + (f", {outbox['collapsed']} collapsed" if outbox.get("collapsed") else "")
    )
    if outbox.get("moved_aside"):
        lines.append(f"           corrupt database moved aside at start: {outbox['moved_aside']}")
    if cloud is None:
        lines.append("cloud      not configured (static tokens)")
    else:
        state = "connected" if cloud.get("connected") else "NOT CONNECTED"
        lines.append(f"cloud      {state}; last sync {cloud.get('last_sync_at') or 'never'}")
        if cloud.get("refused_lists") or cloud.get("outgoing_queued"):
            lines.append(
                f"           {cloud.get('refused_lists', 0)} token lists refused"
                f" (last: {cloud.get('last_refusal') or '-'}),"
                f" {cloud.get('outgoing_queued', 0)} messages waiting for the broker"
            )
    home = data.get("home_assistant")
    if home:
        state = "connected" if home.get("connected") else "NOT CONNECTED"
        lines.append(
            f"home asst  {state} to {home.get('url')}; {_count(home.get('published', 0), 'ring')}"
            f" published, {home.get('dropped_stale', 0)} too old to send"
            + (f", {home['queued']} waiting" if home.get("queued") else "")
        )
        if home.get("last_error") and not home.get("connected"):
            lines.append(f"           last error: {home['last_error']}")
    logs = data.get("logs")
    if logs and (logs.get("dropped") or logs.get("repeats_held_back")):
        lines.append(
            f"logs       {logs.get('repeats_held_back', 0)} repeated lines held back,"
            f" {logs.get('dropped', 0)} records dropped (the writer could not keep up)"
        )
    config = data.get("config")
    if config:
        lines.append(f"config     {config['file']}, loaded {config['loaded_at']}")
        if config.get("restart_needed"):
            lines.append(
                "           changed, applied at the next restart: "
                + ", ".join(config["restart_needed"])
            )
    return "\n".join(lines)


def _credentials_line(credentials: dict[str, Any]) -> str:
    state = credentials.get("state")
    if state == "verified":
        return f"credentials verified at {credentials.get('verified_at')}"
    if state == "not checked":
        return "credentials not checked (apns.verify_credentials: false)"
    detail = f": {credentials['detail']}" if credentials.get("detail") else ""
    if state == "refused":
        return f"credentials REFUSED by Apple{detail}"
    return f"credentials not yet proven{detail}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h"
    return f"{s // 86400} days"
