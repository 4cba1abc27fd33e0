"""A throwaway PostgreSQL server for tests and benchmarks: its own cluster, port and socket dir.

PostgreSQL refuses to run as root, so as root the cluster belongs to ``nobody``
(in a directory of its own under the system temp dir, which ``nobody`` can
reach); as any other user it is simply that user's.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from testkit.mosquitto import free_port

PG_BIN_DIRS = tuple(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True))
_TIMEOUT = 60.0


def pg_bin(name: str) -> str:
    for directory in PG_BIN_DIRS:
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    return found


class PostgresServer:
    """``initdb`` + ``pg_ctl start`` on 127.0.0.1 and a free port; ``stop()`` removes it all."""

    def __init__(self, *, user: str = "nobody") -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="edgebell-pg-"))
        self.data = self.dir / "data"
        self.sockets = self.dir / "sock"
        self.sockets.mkdir()
        self.log = self.dir / "postgres.log"
        self._run_as: dict[str, Any] = {}
        if os.getuid() == 0:
            account = pwd.getpwnam(user)
            for path in (self.dir, self.sockets):
                os.chown(path, account.pw_uid, account.pw_gid)
            self._run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        self.role = "edgebell"
        self.started = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.role}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            check=False,
            cwd=self.dir,
            **self._run_as,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({result.returncode}):\n{result.stdout}\n"
                f"{result.stderr}\n{self.log_text()}"
            )

    def start(self) -> Self:
        # Trust on loopback only: a test cluster of one run, gone when it stops.
        self._run(
            pg_bin("initdb"),
            "-D",
            str(self.data),
            "-U",
            self.role,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        self.resume()
        return self

    def resume(self) -> None:
        """Start the server on its cluster (after ``start()`` made it, or ``halt()``)."""
        self._run(
            pg_bin("pg_ctl"),
            "start",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            str(int(_TIMEOUT)),
            "-o",
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.sockets} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50",
        )
        self.started = True
        self._wait_ready()

    def halt(self) -> None:
        """Stop the server and keep its data: a database that went away for a while."""
        self._run(pg_bin("pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w")
        self.started = False

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + _TIMEOUT
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=5).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; its URL."""
        import psycopg
        from psycopg import sql

        name = name or f"t_{secrets.token_hex(6)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def stop(self) -> None:
        if self.started:
            self.started = False
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(pg_bin("pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w")
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
