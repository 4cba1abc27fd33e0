"""Fault counts for docs/reliability.md: runs tests/test_faults.py, tabulates what each stated.

Every fault test ends by stating how many notifications (ring x phone) were
expected, delivered, duplicated and lost, plus its own measurements; with
``EDGEBELL_FAULT_REPORT`` set they land in a JSON-lines file, which this script
turns into the table of docs/reliability.md (between its ``faults:begin`` and
``faults:end`` markers, with ``--write``).

    .venv/bin/python benchmarks/faults.py [--realtime] [--write docs/reliability.md]

``--realtime`` runs the issue's durations (APNs back after 20 s, 60 s of rings)
with the production retry policy (1-60 s, 10 s request timeout) instead of the
test suite's scaled-down ones; it takes a few minutes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from testkit.tally import REPORT_ENV, Tally, read_report

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- faults:begin -->"
END = "<!-- faults:end -->"


def run(realtime: bool) -> tuple[list[Tally], float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "faults.jsonl"
        env = {**os.environ, REPORT_ENV: str(report)}
        if realtime:
            env["EDGEBELL_FAULTS_REALTIME"] = "1"
        started = datetime.datetime.now()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/test_faults.py",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        took = (datetime.datetime.now() - started).total_seconds()
        summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
        if result.returncode != 0:
            sys.stderr.write(result.stdout + result.stderr)
            raise SystemExit(f"the fault tests failed: {summary}")
        return read_report(report), took, summary


def table(tallies: list[Tally]) -> str:
    lines = [
        "| fault | expected | delivered | duplicated | lost | last phone reached |"
        " measured besides |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for t in tallies:
        figures = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in t.figures.items())
        if t.unexpected:
            figures = f"UNEXPECTED {t.unexpected}; " + figures
        last = "—" if t.last_phone_s is None else f"{t.last_phone_s:.1f} s after the press"
        lines.append(
            f"| {t.fault} | {t.expected} | {t.delivered} | {t.duplicated} | {t.lost} | {last}"
            f" | {figures} |"
        )
    return "\n".join(lines)


def block(tallies: list[Tally], *, realtime: bool, took: float, summary: str) -> str:
    mode = (
        "`--realtime`: the issue's durations, production retry policy (1-60 s, 10 s timeout)"
        if realtime
        else "scaled (as in `scripts/test`): outage 3 s, 8 s of rings, retries 0.1-1 s, 1 s timeout"
    )
    cores = os.cpu_count()
    return "\n".join(
        [
            BEGIN,
            f"Last run: {datetime.date.today().isoformat()}, {platform.machine()}, {cores} cores, "
            f"CPython {platform.python_version()}; {mode}; {summary} (wall {took:.0f} s).",
            "",
            table(tallies),
            END,
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realtime", action="store_true", help="the issue's full durations")
    parser.add_argument("--write", type=Path, help="replace the table in this markdown file")
    args = parser.parse_args()
    tallies, took, summary = run(args.realtime)
    text = block(tallies, realtime=args.realtime, took=took, summary=summary)
    print(text)
    if args.write is not None:
        doc = args.write.read_text()
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
        if not pattern.search(doc):
            raise SystemExit(f"{args.write} has no {BEGIN} ... {END} block")
        args.write.write_text(pattern.sub(lambda _: text, doc, count=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
