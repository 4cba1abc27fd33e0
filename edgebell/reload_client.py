"""``edgebell reload``: ask the running daemon to re-read its config and report its verdict."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from edgebell import control

# Reading the file and checking the keys it names takes well under a second; a daemon
# that needs longer is stuck, and systemctl reload should say so rather than hang.
RELOAD_TIMEOUT = 30.0


def reload(sock: Path, out: TextIO) -> int:
    """0 when the daemon took the file, 1 when it refused it (the reason on stderr)."""
    answer = control.request(sock, {"cmd": "reload"}, timeout=RELOAD_TIMEOUT)
    if not answer.get("ok"):
        reason = answer.get("error") or "no reason given"
        print(
            f"edgebell: reload refused, still running the previous configuration: {reason}",
            file=sys.stderr,
        )
        return 1
    print(f"reloaded {answer.get('file')}", file=out)
    pending = answer.get("restart_needed") or []
    if pending:
        print(
            f"changed, applied only at the next restart (systemctl restart edgebell): "
            f"{', '.join(str(p) for p in pending)}",
            file=out,
        )
    return 0
