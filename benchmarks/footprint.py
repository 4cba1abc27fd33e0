"""Footprint: the idle daemon's memory and CPU, the wall time of ``edgebell status``, import time.

The real daemon runs with N static device tokens against the stand-in and a pty
receiver that answers RFLink's pings, at the log level a gateway runs at (info), so
its idle work (receiver pings, APNs health PINGs) is all there. Read from /proc:
resident memory (VmRSS) once it has settled, and the CPU it used over an idle window.
Then ``edgebell status`` is run as a person runs it (a new process each time, the
installed console script), and the import time of the daemon's modules is taken as
``python -c 'import edgebell.daemon'`` minus a bare ``python -c pass``.

    .venv/bin/python benchmarks/footprint.py [--tokens 1000] [--idle 60] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from common import (
    CLOCK_TICKS,
    PYTHON,
    bench_pki,
    machine,
    proc_cpu_seconds,
    proc_memory_mb,
    scratch,
    summary,
)

from testkit.fake_receiver import FakeReceiver
from testkit.gateway import (
    KEY_ID,
    TEAM_ID,
    TOPIC,
    DaemonProcess,
    random_token,
    token_auth,
    write_config,
)
from testkit.standin_thread import StandInThread

SETTLE_S = 2.0  # after start-up, before memory is read
EDGEBELL = Path(PYTHON).with_name("edgebell")


def _wall_ms(command: list[str], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        samples.append((time.perf_counter() - start) * 1000)
        if done.returncode not in (0, 1):  # 1: degraded is an answer too
            raise RuntimeError(f"{command} failed ({done.returncode}): {done.stderr}")
    return samples


def import_time(runs: int) -> dict[str, Any]:
    """Wall ms of importing the daemon's modules, and of the CLI's, over a bare interpreter."""
    bare = _wall_ms([PYTHON, "-c", "pass"], runs)
    daemon = _wall_ms([PYTHON, "-c", "import edgebell.daemon"], runs)
    cli = _wall_ms([PYTHON, "-c", "import edgebell.cli"], runs)
    base = statistics.median(bare)
    return {
        "interpreter_ms": round(base, 1),
        "daemon_import_ms": round(statistics.median(daemon) - base, 1),
        "cli_import_ms": round(statistics.median(cli) - base, 1),
    }


def imports_rss_mb() -> float:
    """RSS of a bare interpreter that has imported the daemon's modules and nothing else."""
    code = (
        "import edgebell.daemon\n"
        "for line in open('/proc/self/status'):\n"
        "    if line.startswith('VmRSS:'): print(int(line.split()[1]) / 1024)\n"
    )
    done = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True)
    return round(float(done.stdout), 1)


# The child as the daemon runs it, plus its own peak RSS on stderr as it exits. (Not
# ru_maxrss: on Linux a child's counts the benchmark's own memory, copied at the fork.)
_CHILD_WITH_PEAK = (
    "import atexit, runpy, sys\n"
    "def peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'): sys.stderr.write(line)\n"
    "atexit.register(peak)\n"
    "runpy.run_module('edgebell.apns.jwt_child', run_name='__main__')\n"
)


def signer_child(key: Path, runs: int) -> dict[str, Any]:
    """What one provider JWT costs now that a child signs it: wall time, CPU and peak RSS."""
    request = _signer_request(key)
    wall, cpu, peak = [], [], []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.Popen(
            [PYTHON, "-c", _CHILD_WITH_PEAK],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdin.write(request)
        proc.stdin.close()
        out, err = proc.stdout.read(), proc.stderr.read()  # a JWT, or one line: no deadlock
        # wait4, not Popen.wait: the CPU of this child alone.
        _, wait_status, usage = os.wait4(proc.pid, 0)
        wall.append((time.perf_counter() - start) * 1000)
        proc.returncode = os.waitstatus_to_exitcode(wait_status)
        proc.stdout.close()
        proc.stderr.close()
        if proc.returncode != 0 or out.count(b".") != 2:
            raise RuntimeError(f"the signer failed ({proc.returncode}): {err.decode()}")
        cpu.append((usage.ru_utime + usage.ru_stime) * 1000)
        peak.append(int(err.decode().rsplit("VmHWM:", 1)[1].split()[0]) / 1024)
    return {
        "runs": runs,
        "wall_ms": summary(wall, 1),
        "cpu_ms_p50": round(statistics.median(cpu), 1),
        "peak_rss_mb": round(max(peak), 1),
    }


def _signer_request(key: Path) -> bytes:
    claims = {"kid": KEY_ID, "iss": TEAM_ID, "iat": int(time.time()), "name": str(key)}
    return json.dumps(claims).encode() + b"\n" + key.read_bytes()


def measure(tokens: int, idle: float, status_runs: int, import_runs: int) -> dict[str, Any]:
    root = scratch("edgebell-footprint-")
    pki = bench_pki(root)
    with (
        StandInThread.for_pki(pki, topic=TOPIC) as apns,
        FakeReceiver(root / "ttyRF", answer_pings=True) as receiver,
    ):
        files = write_config(
            root,
            port=str(receiver.path),
            apns_url=apns.url,
            ca_file=pki.ca.cert,
            auth=token_auth(pki.auth_key),
            tokens=[random_token() for _ in range(tokens)],
            overrides={"log_level": "info"},
        )
        with DaemonProcess(files) as daemon:
            assert daemon.proc is not None
            pid = daemon.proc.pid
            daemon.wait_status(lambda s: s["radio"]["connected"] and s["apns"]["connected"])
            time.sleep(SETTLE_S)
            memory = proc_memory_mb(pid)
            pings = receiver.pings
            cpu_before = proc_cpu_seconds(pid)
            time.sleep(idle)
            cpu_after = proc_cpu_seconds(pid)
            pings = receiver.pings - pings
            memory_after = proc_memory_mb(pid)
            status_ms = _wall_ms(
                [str(EDGEBELL), "status", "--config", str(files.config)], status_runs
            )
            # The same daemon, asked with a config that lists 3 static tokens instead of
            # N: what a gateway whose phones come from the cloud's token list reads.
            small = root / "config-3-tokens.yaml"
            data = yaml.safe_load(files.config.read_text())
            data["tokens"] = data["tokens"][:3]
            small.write_text(yaml.safe_dump(data, sort_keys=False))
            small_status_ms = _wall_ms(
                [str(EDGEBELL), "status", "--config", str(small)], status_runs
            )
            daemon.stop()
    return {
        "tokens": tokens,
        "idle_memory_mb": memory,
        "idle_memory_after_mb": memory_after,
        "idle_window_s": idle,
        "idle_cpu_pct": round((cpu_after - cpu_before) / idle * 100, 3),
        # /proc counts CPU in clock ticks: less than one tick over the window reads as 0.
        "idle_cpu_resolution_pct": round(100 / CLOCK_TICKS / idle, 3),
        "idle_receiver_pings": pings,
        "status_ms": summary(status_ms, 1),
        "status_small_config_ms": summary(small_status_ms, 1),
        "imports": import_time(import_runs),
        "imports_rss_mb": imports_rss_mb(),
        "signer": signer_child(pki.auth_key.private_key, import_runs),
        "machine": machine(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle CPU window")
    parser.add_argument("--status-runs", type=int, default=20)
    parser.add_argument("--import-runs", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.tokens, args.idle, args.status_runs, args.import_runs)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    s, imports = result["status_ms"], result["imports"]
    small = result["status_small_config_ms"]
    m, after = result["idle_memory_mb"], result["idle_memory_after_mb"]
    print(f"footprint of the idle daemon with {args.tokens} tokens")
    print(
        f"  RSS {m['rss']} MiB (PSS {m['pss']}, private {m['uss']});"
        f" after the idle window RSS {after['rss']} MiB"
    )
    print(
        f"  CPU over {args.idle:g} s idle: {result['idle_cpu_pct']} % of one core"
        f" ({result['idle_receiver_pings']} receiver pings meanwhile)"
    )
    print(f"  edgebell status: p50 {s['p50']} ms, p90 {s['p90']} ms, max {s['max']} ms")
    print(
        f"  edgebell status, config with 3 static tokens: p50 {small['p50']} ms,"
        f" p90 {small['p90']} ms, max {small['max']} ms"
    )
    signer = result["signer"]
    print(
        f"  JWT signer child: p50 {signer['wall_ms']['p50']} ms wall,"
        f" {signer['cpu_ms_p50']} ms CPU, peak RSS {signer['peak_rss_mb']} MiB"
    )
    print(
        f"  import: edgebell.daemon {imports['daemon_import_ms']} ms, edgebell.cli"
        f" {imports['cli_import_ms']} ms (bare interpreter {imports['interpreter_ms']} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
