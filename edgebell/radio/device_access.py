"""Why the kernel refused to open the receiver with EPERM: a device cgroup, and what fixes it.

A file mode or group problem is EACCES. EPERM on opening a character device means a
device cgroup said no: under systemd, the unit's ``DevicePolicy=closed`` with a
``DeviceAllow=`` that does not cover the device. ``DeviceAllow=char-ttyUSB`` is looked
up in ``/proc/devices`` when the unit starts, so a USB serial driver loaded later
(``usbserial``, ``cdc_acm``) stays locked out until the service restarts, and systemd
says so only at debug level. This module turns that into a sentence a person can act on.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# The majors of the unit's DeviceAllow= entries and the driver that registers each.
USB_SERIAL: Mapping[int, tuple[str, str]] = {
    188: ("ttyUSB", "usbserial"),
    166: ("ttyACM", "cdc_acm"),
}


def char_devices(text: str) -> dict[int, tuple[str, ...]]:
    """``/proc/devices``' character section: major -> its names (``4 -> ("tty", "ttyS")``)."""
    majors: dict[int, tuple[str, ...]] = {}
    for line in text.splitlines():
        if line.startswith("Block devices"):
            break
        number, _, name = line.strip().partition(" ")
        if number.isdigit():
            majors[int(number)] = (*majors.get(int(number), ()), name.strip())
    return majors


def _name_of(device: str, names: Sequence[str]) -> str:
    """The ``/proc/devices`` name DeviceAllow=char-NAME would use for ``device``.

    One major may carry several names (4: ``/dev/vc/0``, ``tty``, ``ttyS``): the longest
    that starts the device's own name (``ttyS0`` -> ``ttyS``), else the first plain one.
    """
    base = os.path.basename(device)
    matching = [n for n in names if "/" not in n and base.startswith(n)]
    if matching:
        return max(matching, key=len)
    return next((n for n in names if "/" not in n), "")


def _proc_devices() -> str:
    return Path("/proc/devices").read_text()


def why_refused(
    port: str,
    *,
    environ: Mapping[str, str] = os.environ,
    proc_devices: Callable[[], str] = _proc_devices,
) -> str | None:
    """What to do about EPERM on ``port``; None when it is not a character device."""
    try:
        device = os.path.realpath(port)
        st = os.stat(device)
    except OSError:
        return None
    if not stat.S_ISCHR(st.st_mode):
        return None
    try:
        registered: Mapping[int, Sequence[str]] | None = char_devices(proc_devices())
    except OSError:
        registered = None  # ProcSubset=pid hides /proc/devices from the service itself
    return explain(
        device, os.major(st.st_rdev), registered, under_systemd="INVOCATION_ID" in environ
    )


def explain(
    device: str,
    major: int,
    registered: Mapping[int, Sequence[str]] | None,
    *,
    under_systemd: bool,
) -> str:
    """The sentence for EPERM on ``device``, given the drivers registered now (None: unknown)."""
    if major in USB_SERIAL:
        name, driver = USB_SERIAL[major]
    else:
        driver = ""
        if registered is not None:
            name = _name_of(device, registered.get(major, ()))
        else:  # the kernel's name for it, as the device's own name shows it (ttyS0 -> ttyS)
            name = re.sub(r"\d+$", "", os.path.basename(device))
    label = f"char-{name}, major {major}" if name else f"major {major}"
    if under_systemd:  # started by systemd: the refusal is the unit's
        who = "the unit's DeviceAllow="
    else:
        who = "a device cgroup (a service's or container's DeviceAllow=)"
    what = f"{who} does not cover {device} ({label})"
    if driver:
        missing = registered is not None and major not in registered
        loaded = f" (modprobe {driver}; it is not loaded now)" if missing else ""
        return (
            f"{what}: the {driver} driver was not loaded when the service started; "
            f"restart the service after the driver is loaded{loaded}: systemctl restart edgebell"
        )
    return (
        f"{what}: add it with a drop-in (systemctl edit edgebell): "
        f"DeviceAllow={f'char-{name}' if name else device} rw, then systemctl restart edgebell"
    )
