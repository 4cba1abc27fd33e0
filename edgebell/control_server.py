"""The daemon's end of the control socket: serves JSON-line requests from ``edgebell`` commands.

The socket is mode 0660: only root and the daemon's group (``edgebell`` under
systemd) may ring the doorbell or read its status.

Commands are safe to retry (see :mod:`edgebell.control`): a request whose
``deadline`` has passed when the daemon gets to it is not run (its client has given
up), and a ``request_id`` seen before is answered with the first result, marked
``"repeat": true``, instead of running again.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import socket
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

from edgebell import jsonlimits
from edgebell.control import JSON, MAX_REQUEST
from edgebell.errors import ControlError
from edgebell.recent import RecentReplies

log = logging.getLogger(__name__)

# A handler answers a request with one reply, or with an async stream of them (learn).
Handler = Callable[[JSON], Awaitable[JSON] | AsyncIterator[JSON]]

# A command is started only while this much of its client's patience is left, so that
# its answer can still reach the client: one it gives up on is never run behind its back.
REPLY_MARGIN = 0.5


class ControlServer:
    """Serves the control socket for the daemon's lifetime."""

    def __init__(self, path: Path, handlers: Mapping[str, Handler]) -> None:
        self.path = path
        self._handlers = dict(handlers)
        self._server: asyncio.AbstractServer | None = None
        self._recent: RecentReplies[JSON] = RecentReplies()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            mode: int | None = self.path.lstat().st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None:
            if not stat.S_ISSOCK(mode):
                # A config pointing control_socket at a real file must not cost that file.
                raise ControlError(
                    f"control socket path {self.path} exists and is not a socket:"
                    " not removing it (check control_socket in the configuration)"
                )
            if _daemon_answers(self.path):
                raise ControlError(f"another edgebell daemon is already running on {self.path}")
            self.path.unlink()  # a socket left behind by a daemon that died
        # A socket is created with the umask applied; set the mode before anyone can connect.
        old = os.umask(0o117)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            try:
                request = jsonlimits.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except jsonlimits.TooDeep as exc:
                await _send(writer, {"ok": False, "error": f"bad request: JSON {exc}"})
                return
            except ValueError:
                await _send(writer, {"ok": False, "error": "bad request: one JSON object expected"})
                return
            handler = self._handlers.get(str(request.get("cmd")))
            if handler is None:
                await _send(
                    writer, {"ok": False, "error": f"unknown command {request.get('cmd')!r}"}
                )
                return
            late = _past_deadline(request)
            if late is not None:
                log.warning("control request %r not run: %s", request.get("cmd"), late)
                await _send(writer, {"ok": False, "error": late, "expired": True})
                return
            answer = handler(request)
            if isinstance(answer, AsyncIterator):
                await self._stream(answer, reader, writer)
                return
            request_id = request.get("request_id")
            if not isinstance(request_id, str) or not request_id:
                await _send(writer, await answer)
                return
            reply, repeat = await self._recent.once(request_id, lambda: answer)
            if repeat:
                if inspect.iscoroutine(answer):
                    answer.close()  # never started: this request ran before
                reply = {**reply, "repeat": True}
            await _send(writer, reply)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            pass  # the client went away or sent nonsense: nothing to clean up but the socket
        except Exception:
            log.exception("control request failed")
            with contextlib.suppress(Exception):
                await _send(writer, {"ok": False, "error": "internal error (see the daemon's log)"})
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _stream(
        answers: AsyncIterator[JSON], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        hangup = asyncio.ensure_future(reader.read(1))  # EOF when the client hangs up
        try:
            iterator = aiter(answers)
            while True:
                nxt = asyncio.ensure_future(anext(iterator))
                done, _ = await asyncio.wait({nxt, hangup}, return_when="FIRST_COMPLETED")
                if nxt not in done:
                    nxt.cancel()
                    return
                try:
                    item = nxt.result()
                except StopAsyncIteration:
                    return
                await _send(writer, item)
        finally:
            hangup.cancel()
            with contextlib.suppress(Exception):
                await answers.aclose()  # type: ignore[attr-defined]


def _past_deadline(request: JSON) -> str | None:
    """Why a request must not run any more (its client has given up), or None."""
    deadline = request.get("deadline")
    if not isinstance(deadline, int | float) or isinstance(deadline, bool):
        return None
    late = time.monotonic() - (deadline - REPLY_MARGIN)
    if late < 0:
        return None
    return (
        f"request reached the daemon {late:.1f} s past its deadline (the client had given up):"
        " not run"
    )


async def _send(writer: asyncio.StreamWriter, message: JSON) -> None:
    writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


def _daemon_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True
