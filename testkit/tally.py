"""Counting a fault run: notifications expected, delivered, duplicated and lost, from Apple's side.

A notification is one ring for one phone. The stand-in's 200 answers are what Apple
delivered; a push that stands for several collapsed rings (``edgebell.rings``)
covers that many. Several 200s with one collapse id count once, as the phone shows
them once, and the extra ones are the duplicates. The tallies of a run go to a
JSON-lines file when ``EDGEBELL_FAULT_REPORT`` names one (scripts/reliability-report).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from testkit.apns_standin import ReceivedPush

REPORT_ENV = "EDGEBELL_FAULT_REPORT"


@dataclass(frozen=True, slots=True)
class Tally:
    """What one fault test saw. ``figures`` holds its other measurements (503s, RSS ...)."""

    fault: str
    expected: int
    delivered: int
    duplicated: int
    lost: int
    unexpected: int = 0  # pushes nobody should have had (dead or expired ones)
    figures: Mapping[str, Any] = field(default_factory=dict)
    # Seconds from the last press to the first delivery of the last push any phone
    # needed (None: no press was timed).
    last_phone_s: float | None = None

    def line(self) -> str:
        extra = "".join(f", {k} {v}" for k, v in self.figures.items())
        last = "" if self.last_phone_s is None else f", last phone {self.last_phone_s:.1f} s"
        return (
            f"{self.fault}: expected {self.expected}, delivered {self.delivered}, "
            f"duplicated {self.duplicated}, lost {self.lost}, unexpected {self.unexpected}"
            f"{last}{extra}"
        )


def rings_of(push: ReceivedPush) -> int:
    """How many rings a delivered push stands for (1 unless rings collapsed into it)."""
    rings = push.json().get("edgebell", {}).get("rings", 1)
    return rings if isinstance(rings, int) else 1


def tally(
    fault: str,
    pushes: Iterable[ReceivedPush],
    expected: Mapping[str, int],
    *,
    figures: Mapping[str, Any] | None = None,
    pressed_ns: int | None = None,
) -> Tally:
    """Compare the stand-in's delivered pushes with ``expected`` (token -> rings it should hear).

    ``pressed_ns`` (``time.monotonic_ns()`` of the last press, the stand-in's clock in the
    same process) gives ``last_phone_s``: when the last phone was reached after it, each
    push counted at its first delivery (a duplicate does not make a phone later)."""
    per_collapse: dict[tuple[str, str], list[ReceivedPush]] = defaultdict(list)
    unexpected = 0
    for push in pushes:
        if push.status != 200:
            continue
        if push.token not in expected:
            unexpected += 1
            continue
        per_collapse[(push.token, push.headers.get("apns-collapse-id", ""))].append(push)
    covered: Counter[str] = Counter()
    duplicated = 0
    for (token, _), copies in per_collapse.items():
        covered[token] += max(rings_of(p) for p in copies)
        duplicated += len(copies) - 1
    lost = sum(max(0, want - covered[token]) for token, want in expected.items())
    last_phone_s = None
    if pressed_ns is not None and per_collapse:
        reached = max(min(p.received_ns for p in copies) for copies in per_collapse.values())
        last_phone_s = round(max(0, reached - pressed_ns) / 1e9, 2)
    delivered = sum(min(want, covered[token]) for token, want in expected.items())
    return Tally(
        fault=fault,
        expected=sum(expected.values()),
        delivered=delivered,
        duplicated=duplicated,
        lost=lost,
        unexpected=unexpected,
        figures=dict(figures or {}),
        last_phone_s=last_phone_s,
    )


def record(result: Tally, environ: Mapping[str, str] = os.environ) -> None:
    """Append ``result`` to the report file named by ``EDGEBELL_FAULT_REPORT`` (if any)."""
    target = environ.get(REPORT_ENV)
    if not target:
        return
    with Path(target).open("a", encoding="utf-8") as out:
        out.write(json.dumps(asdict(result)) + "\n")


def read_report(path: Path) -> list[Tally]:
    tallies = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            data = json.loads(line)
            tallies.append(Tally(**data))
    return tallies


def rss_kib(pid: int) -> int:
    """A process's resident memory (VmRSS) in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")
