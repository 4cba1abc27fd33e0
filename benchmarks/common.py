"""What every benchmark shares: summaries, the machine, /proc readings, the stand-in process."""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from testkit.gateway import KEY_ID, TEAM_ID, TOPIC
from testkit.pki import TestPki, make_test_pki

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """Median, p90, p99, min and max of a sample, rounded, with its size."""
    return {
        "n": len(values),
        "p50": round(statistics.median(values), digits),
        "p90": round(percentile(values, 90), digits),
        "p99": round(percentile(values, 99), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy so far (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


@dataclass(frozen=True, slots=True)
class Measured:
    """A finished child process: its output, and the CPU it and everyone else used."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float  # the child's own user + system time (its threads and children included)
    machine_busy_s: float  # every process on the machine, the child included


def run_measured(command: Sequence[str], timeout: float = 600) -> Measured:
    """Run ``command`` to its end; ``getrusage`` of it from ``wait4`` and /proc/stat around it."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        busy_before = machine_busy_seconds()
        start = time.monotonic()
        proc = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise TimeoutError(f"{command[:3]} still running after {timeout} s")
            time.sleep(0.005)
        wall = time.monotonic() - start
        busy = machine_busy_seconds() - busy_before
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            proc.returncode,
            out.read(),
            err.read(),
            wall,
            usage.ru_utime + usage.ru_stime,
            busy,
        )


def proc_rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory (``VmRSS``; ``VmHWM`` for the peak) of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no {field} for process {pid}")


def proc_memory_mb(pid: int) -> dict[str, float]:
    """RSS, PSS (shared pages divided among their users) and USS (private pages) in MiB.

    RSS counts every shared library page the process touched (the interpreter, OpenSSL,
    cryptography's Rust library) in full, as if no other process used them.
    """
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0])
    return {
        "rss": round(fields["Rss"] / 1024, 1),
        "pss": round(fields["Pss"] / 1024, 1),
        "uss": round((fields["Private_Clean"] + fields["Private_Dirty"]) / 1024, 1),
    }


def scratch(prefix: str) -> Path:
    """A new directory under the system's temp dir, removed when the benchmark exits."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def bench_pki(root: Path) -> TestPki:
    return make_test_pki(root / "pki", key_id=KEY_ID, team_id=TEAM_ID)


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``predicate()`` until true; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout} s waiting for {what}")
        time.sleep(interval)


class StandInProcess:
    """``standin_server.py`` as a subprocess: the APNs stand-in on a core of its own."""

    def __init__(self, pki: TestPki, *, port: int = 0, validate_headers: bool = True) -> None:
        self._pki = pki
        self._port = port
        self._validate = validate_headers
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> Self:
        pki = self._pki
        auth = f"{pki.auth_key.key_id}:{pki.auth_key.team_id}:{pki.auth_key.public_key}"
        self.proc = subprocess.Popen(
            [
                PYTHON,
                str(HERE / "standin_server.py"),
                "--cert",
                str(pki.server.cert),
                "--key",
                str(pki.server.key),
                "--auth-key",
                auth,
                "--topic",
                TOPIC,
                "--port",
                str(self._port),
                *([] if self._validate else ["--no-validate-headers"]),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.port = int(self._read()["port"])
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise RuntimeError(f"stand-in: {answer['error']}")
        return answer

    def _read(self) -> dict[str, Any]:
        assert self.proc is not None
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the stand-in process exited ({self.proc.wait(5)})")
        answer = json.loads(line)
        assert isinstance(answer, dict)
        return answer

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
