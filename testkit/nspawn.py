"""A Debian system booted under a real systemd (PID 1 in a systemd-nspawn container), for tests.

``systemd-analyze`` judges a unit file; only a running systemd shows what the unit
does: READY=1, the watchdog, reload verdicts, credentials, the device cgroup. This
module builds a minimal Debian root file system once (``debootstrap --variant=minbase``
from the host's own apt mirror, cached outside the checkout), boots it with a fresh
writable overlay per test session, and runs commands inside it.

Facts found on machines like CI's (a VM where systemd is not PID 1, or not running):

- without a host systemd bus nspawn needs ``--keep-unit`` and ``--register=no``;
- nspawn refuses to clean up a disk-backed ``/run``: ``/run/systemd/nspawn`` gets a tmpfs;
- ``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1`` gives the container a cgroup v2 tree of its own;
- ``--system-call-filter=bpf``: nspawn refuses ``bpf()`` by default, and a systemd that
  cannot load its device programs silently drops device control, so every
  ``DeviceAllow=`` check would pass falsely;
- the container shares the host's network namespace: local servers on 127.0.0.1 are
  reachable from inside.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

# Built once per machine and reused; never inside the checkout (it is hundreds of MB).
CACHE_DIR = Path(os.environ.get("EDGEBELL_TEST_CACHE", "/var/cache/edgebell-tests"))
# What a gateway's Debian needs for the service: systemd as PID 1 (with its D-Bus),
# and Python with venv for scripts/install.sh.
PACKAGES = ("systemd", "dbus", "python3", "python3-venv")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NSPAWN_RUN = Path("/run/systemd/nspawn")


class CannotBoot(Exception):
    """This machine cannot boot the container; the message says why and what would fix it."""


def run_logged(
    argv: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None, timeout: float
) -> None:
    """Run ``argv`` with its output appended to ``log``; CannotBoot with the log's tail."""
    with log.open("ab") as out:
        out.write(f"$ {shlex.join(argv)}\n".encode())
        out.flush()
        try:
            result = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CannotBoot(f"{argv[0]} failed: {exc}") from exc
    if result.returncode != 0:
        raise CannotBoot(f"{shlex.join(argv[:3])} ... exited {result.returncode}:\n{tail(log)}")


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def preflight() -> None:
    """CannotBoot naming what is missing: root, the tools, cgroup v2."""
    if os.geteuid() != 0:
        raise CannotBoot("booting a container needs root (run the suite as root, as CI does)")
    for tool in ("debootstrap", "systemd-nspawn", "nsenter", "setpriv"):
        if shutil.which(tool) is None:
            raise CannotBoot(f"{tool} is not installed (scripts/setup installs it)")
    if not any(
        line.split()[2] == "cgroup2" for line in Path("/proc/self/mounts").read_text().splitlines()
    ):
        raise CannotBoot("no cgroup v2 hierarchy is mounted: systemd cannot run in a container")


# -- the root file system -------------------------------------------------------------------------


def host_release() -> str:
    """The host's Debian codename (``bookworm``): the container runs what the gateway runs."""
    text = Path("/etc/os-release").read_text()
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.M)
    if match is None:
        raise CannotBoot("/etc/os-release names no VERSION_CODENAME: not a Debian host?")
    return match[1]


def host_mirror(suite: str, apt: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses for ``suite`` (deb822 or one-line sources)."""
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*"))]
    for path in files:
        if path.suffix not in ("", ".list", ".sources") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(
                    (k.strip().lower(), v.strip())
                    for k, _, v in (
                        line.partition(":") for line in stanza.splitlines() if ":" in line
                    )
                    if not k.startswith("#")
                )
                if (
                    "deb" in fields.get("types", "").split()
                    and suite in fields.get("suites", "").split()
                ):
                    return str(fields.get("uris", "").split()[0])
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                    return words[1]
    raise CannotBoot(f"no apt source for {suite} in /etc/apt/sources.list*: no mirror to use")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder at a time per cache entry (two suites started at once wait for each other)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_rootfs(log: Path, cache: Path = CACHE_DIR) -> Path:
    """The cached minimal Debian with systemd, built with debootstrap on first use."""
    suite = host_release()
    mirror = host_mirror(suite)
    key = hashlib.sha256(f"{suite} {' '.join(PACKAGES)}".encode()).hexdigest()[:12]
    rootfs = cache / f"rootfs-{suite}-{key}"
    with _locked(cache / f"rootfs-{suite}-{key}.lock"):
        if (rootfs / ".edgebell-complete").exists():
            return rootfs
        building = cache / f"rootfs-{suite}-{key}.building"
        shutil.rmtree(building, ignore_errors=True)
        started = time.monotonic()
        run_logged(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                suite,
                str(building),
                mirror,
            ],
            log,
            timeout=1800,
        )
        # A machine id is made at first boot; an empty file keeps it per container run.
        (building / "etc/machine-id").write_text("")
        seconds = time.monotonic() - started
        (building / ".edgebell-complete").write_text(f"debootstrap took {seconds:.0f} s\n")
        shutil.rmtree(rootfs, ignore_errors=True)
        building.rename(rootfs)
    return rootfs


def rootfs_python(rootfs: Path) -> str:
    """The container's Python version (``3.11``), read from its file system."""
    versions = sorted(
        p.name.removeprefix("python")
        for p in (rootfs / "usr/lib").glob("python3.*")
        if (p / "os.py").exists()
    )
    if not versions:
        raise CannotBoot(f"no Python standard library in {rootfs}/usr/lib")
    return versions[-1]


def ensure_wheelhouse(repo: Path, python: str, log: Path, cache: Path = CACHE_DIR) -> Path:
    """Wheels of edgebell's dependencies (and of its build backend) for the container's Python.

    Fetched once on the host, with the host's pip configuration (index, proxy, CA); the
    container then installs offline. When the host runs another Python than the
    container (``python``, e.g. ``3.11``), binary wheels for that version are downloaded.
    """
    project = tomllib.loads((repo / "pyproject.toml").read_text())
    wanted = [
        *project["build-system"]["requires"],
        "wheel",
        *project["project"]["dependencies"],
    ]
    tag = "py" + python.replace(".", "")
    key = hashlib.sha256(" ".join(wanted).encode()).hexdigest()[:12]
    wheels = cache / f"wheels-{tag}-{key}"
    with _locked(cache / f"wheels-{tag}-{key}.lock"):
        if (wheels / ".edgebell-complete").exists():
            return wheels
        building = cache / f"wheels-{tag}-{key}.building"
        shutil.rmtree(building, ignore_errors=True)
        pip = [sys.executable, "-m", "pip"]
        if python == f"{sys.version_info.major}.{sys.version_info.minor}":
            argv = [*pip, "wheel", "-q", "--wheel-dir", str(building), *wanted]
        else:
            argv = [*pip, "download", "-q", "--only-binary=:all:", f"--python-version={python}"]
            argv += ["--dest", str(building), *wanted]
        run_logged(argv, log, timeout=1200)
        (building / ".edgebell-complete").write_text(" ".join(wanted) + "\n")
        shutil.rmtree(wheels, ignore_errors=True)
        building.rename(wheels)
    return wheels


# -- the booted container ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bind:
    """A host path made visible inside the container at ``dest``."""

    host: Path
    dest: str
    read_only: bool = True

    def option(self) -> str:
        return f"--bind{'-ro' if self.read_only else ''}={self.host}:{self.dest}"


def _new_cgroup(name: str) -> Path:
    """A fresh cgroup (v2) below this process's own, for one container.

    With ``--keep-unit`` nspawn builds the container's tree (``payload``, ``supervisor``)
    inside the cgroup it is started in. Two sessions started from the same cgroup (the
    root, on a machine without systemd) would share that tree: each container's systemd
    would then tear down the other's unit cgroups and device programs (seen as devices
    the unit refuses becoming reachable). A cgroup of its own per container prevents it.
    """
    mount = next(
        (
            line.split()[1]
            for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[2] == "cgroup2"
        ),
        None,
    )
    own = next(
        (
            line.split("::", 1)[1]
            for line in Path("/proc/self/cgroup").read_text().splitlines()
            if line.startswith("0::")
        ),
        None,
    )
    if mount is None or own is None:
        raise CannotBoot("no cgroup v2 hierarchy is mounted: systemd cannot run in a container")
    cgroup = Path(mount) / own.strip().lstrip("/") / name
    try:
        cgroup.mkdir()
    except OSError as exc:
        raise CannotBoot(f"cannot create the container's cgroup {cgroup}: {exc}") from exc
    return cgroup


def _remove_cgroup(cgroup: Path) -> None:
    """Remove an emptied cgroup tree, deepest first (best effort: a busy one stays)."""
    for path in sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            path.rmdir()
    with contextlib.suppress(OSError):
        cgroup.rmdir()


def _power_off_with_parent() -> None:
    """Runs in nspawn's child before exec: SIGTERM (an orderly power-off) if the tests die.

    A test runner killed mid-session must not leave a booted container behind.
    """
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


def _is_mount_point(path: Path, fstype: str) -> bool:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        if fields[4] == str(path) and fields[separator + 1] == fstype:
            return True
    return False


class Container:
    """One boot of ``rootfs`` under systemd-nspawn, with a throw-away writable overlay.

    ``root`` is the container's ``/`` as the host sees it: files written there are
    inside at once. :meth:`run` executes a command inside (all of the container's
    namespaces entered, a clean environment), as root or as another user.
    """

    def __init__(
        self, rootfs: Path, workdir: Path, *, binds: Sequence[Bind] = (), name: str = ""
    ) -> None:
        self.rootfs = rootfs
        self.workdir = workdir
        self.binds = tuple(binds)
        # Unique per run: two test sessions on one machine must not share a machine name.
        self.name = name or f"edgebell-test-{os.getpid()}"
        self.root = workdir / "merged"
        self.console = workdir / "console.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._leader: int | None = None
        self._cgroup: Path | None = None

    def __enter__(self) -> Container:
        try:
            self.boot()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def boot(self, timeout: float = 120.0) -> None:
        upper, work = self.workdir / "upper", self.workdir / "work"
        for d in (upper, work, self.root):
            d.mkdir(parents=True, exist_ok=True)
        options = f"lowerdir={self.rootfs},upperdir={upper},workdir={work}"
        run_logged(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)],
            self.console,
            timeout=60,
        )
        NSPAWN_RUN.mkdir(parents=True, exist_ok=True)
        if not _is_mount_point(NSPAWN_RUN, "tmpfs"):
            # Left mounted afterwards: another session's container may be using it by then.
            run_logged(["mount", "-t", "tmpfs", "tmpfs", str(NSPAWN_RUN)], self.console, timeout=60)
        self._cgroup = _new_cgroup(self.name)
        argv = [
            "systemd-nspawn",
            "--quiet",
            "--boot",
            f"--directory={self.root}",
            f"--machine={self.name}",
            "--keep-unit",
            "--register=no",
            "--system-call-filter=bpf",
            "--console=read-only",
            *(b.option() for b in self.binds),
        ]
        env = {"PATH": PATH, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        with self.console.open("ab") as out:
            out.write(f"$ {shlex.join(argv)}\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=self._in_child,
            )
        deadline = time.monotonic() + timeout
        self._leader = self._wait_leader(deadline)
        # `is-system-running --wait` returns once boot is over (running, or degraded).
        while True:
            state = self.run("systemctl", "is-system-running", "--wait", timeout=timeout)
            if state.stdout.strip() in ("running", "degraded"):
                return
            self._check_alive()
            if time.monotonic() > deadline:
                raise CannotBoot(
                    f"the container did not finish booting within {timeout:g} s "
                    f"(state {state.stdout.strip()!r}):\n{tail(self.console)}"
                )
            time.sleep(0.2)

    def _in_child(self) -> None:
        """Runs in nspawn's child before exec: its own cgroup, and power-off with the tests."""
        if self._cgroup is not None:
            (self._cgroup / "cgroup.procs").write_text("0")
        _power_off_with_parent()

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            code = self._proc.returncode
            raise CannotBoot(f"systemd-nspawn exited {code} while booting:\n{tail(self.console)}")

    def _wait_leader(self, deadline: float) -> int:
        """The container's PID 1 as the host sees it: the child of nspawn that runs systemd."""
        assert self._proc is not None
        while True:
            self._check_alive()
            for task in Path(f"/proc/{self._proc.pid}/task").glob("*"):
                with contextlib.suppress(OSError):
                    for child in (task / "children").read_text().split():
                        if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                            return int(child)
            if time.monotonic() > deadline:
                raise CannotBoot(f"no systemd started in the container:\n{tail(self.console)}")
            time.sleep(0.05)

    def run(
        self,
        *argv: str,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container (as ``user``, with its groups, if given)."""
        if self._leader is None:
            raise RuntimeError("the container is not booted")
        as_user: list[str] = []
        if user is not None:
            as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
        variables = {"PATH": PATH, "LANG": "C.UTF-8", **(env or {})}
        environment = [f"{k}={v}" for k, v in variables.items()]
        command = [
            "nsenter",
            f"--target={self._leader}",
            "--all",
            "--root",
            "--wd",
            "env",
            "-i",
            *environment,
            *as_user,
            *argv,
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)

    def path(self, inside: str) -> Path:
        """Where the container's ``inside`` path is on the host."""
        return self.root / inside.lstrip("/")

    def shutdown(self, timeout: float = 60.0) -> None:
        """Power the container off (SIGTERM to nspawn), unmount the overlay, remove it."""
        proc, self._proc, self._leader = self._proc, None, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if _is_mount_point(self.root, "overlay"):
            subprocess.run(["umount", str(self.root)], capture_output=True, check=False)
        if self._cgroup is not None:
            _remove_cgroup(self._cgroup)
            self._cgroup = None
        for d in ("upper", "work", "merged"):
            shutil.rmtree(self.workdir / d, ignore_errors=True)
