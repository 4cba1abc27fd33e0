"""Where secret files live (systemd credentials, config dir) and reading them safely."""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from edgebell.errors import ConfigError

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
# Where systemd 252 itself looks for ``LoadCredential=NAME`` (systemd.exec(5)), in its order:
# a key that reaches the service must also be found by ``check-config`` in a root shell.
CREDENTIAL_STORES = (
    Path("/etc/credstore"),
    Path("/run/credstore"),
    Path("/usr/local/lib/credstore"),
    Path("/usr/lib/credstore"),
    Path("/lib/credstore"),
)


def search_places(
    name: str,
    *,
    base_dir: Path,
    environ: Mapping[str, str],
    stores: Sequence[Path] = CREDENTIAL_STORES,
) -> tuple[str, ...]:
    """Where :func:`resolve_secret_path` looks for a bare ``name``, in order, for messages."""
    if not is_bare_name(name):
        return ()
    credentials = environ.get(CREDENTIALS_ENV, "")
    first = (
        f"the service's credentials (${CREDENTIALS_ENV} = {credentials})"
        if credentials
        else f"the service's credentials (${CREDENTIALS_ENV} is not set here)"
    )
    return (first, str(base_dir), *(str(store) for store in stores))


def is_bare_name(text: str) -> bool:
    """A name without a directory (``edgebell.apns.p8``): looked up as a credential."""
    return "/" not in text and text not in ("", ".", "..", "~")


def resolve_secret_path(
    path: str | os.PathLike[str],
    *,
    base_dir: Path,
    environ: Mapping[str, str],
    stores: Sequence[Path] = CREDENTIAL_STORES,
) -> Path:
    """The file a config entry names.

    A bare name (no slash) is taken from ``$CREDENTIALS_DIRECTORY`` when that is set
    and holds the file (systemd ``LoadCredential=``), else from ``base_dir`` (the config
    file's directory), else from systemd's credential ``stores`` — so ``check-config`` or
    a daemon started by hand as root finds the keys the service is given. Any other
    relative path is relative to ``base_dir``; ``~`` means the home directory.
    """
    # Path("./x") would print as "x": look at the text as written to tell a bare name.
    text = os.fspath(path)
    if is_bare_name(text):
        credentials = environ.get(CREDENTIALS_ENV, "")
        if credentials and os.path.exists(Path(credentials) / text):
            return Path(credentials) / text
        # os.path.exists, not Path.exists: a store only root may read must not raise.
        if not os.path.exists(base_dir / text):
            for store in stores:
                if os.path.exists(store / text):
                    return store / text
    resolved = Path(text).expanduser()
    return resolved if resolved.is_absolute() else base_dir / resolved


def read_file(path: Path, *, what: str) -> bytes:
    """The bytes of a file the config names; ConfigError (naming it) if it cannot be read."""
    return _read(path, what=what, secret=False)


def read_secret(path: Path, *, what: str) -> bytes:
    """The bytes of a secret file, refused if anyone but its owner may read or change it.

    ``what`` names the file's role in messages ("APNs auth key"); contents never appear.
    """
    return _read(path, what=what, secret=True)


def read_passphrase(path: Path) -> bytes:
    """A passphrase file's passphrase: its bytes without the line ending editors add."""
    return read_secret(path, what="passphrase file").rstrip(b"\r\n")


def _read(path: Path, *, what: str, secret: bool) -> bytes:
    refuse_special_file(path, what=what)
    try:
        # O_NONBLOCK: should the path turn into a FIFO after the check, open() still returns
        # at once (and the fstat below refuses it) instead of waiting for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except PermissionError:
        raise ConfigError(
            f"{what} {path} is not readable by this user (uid {os.getuid()}): permission denied"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be opened: {exc.strerror}") from exc
    try:
        # Check the mode on the descriptor we read from, so a swap in between cannot fool us.
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{what} {path} is not a regular file")
        if secret:
            refuse_shared_secret(path, mode, what=what)
        os.set_blocking(fd, True)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror}") from exc
    finally:
        os.close(fd)


def refuse_special_file(path: Path, *, what: str) -> None:
    """ConfigError for a FIFO, device or socket where a file is expected, without opening it.

    Opening a FIFO for reading blocks until a writer comes: ``check-config`` and ``run``
    would hang forever on a key file that is one. A path that cannot be looked at is left
    to ``open()``, whose error says why.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise ConfigError(f"{what} {path} is not a regular file ({kind}): refused without reading")


_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}

# The one rule for keys: their owner alone may read them. The service gets its own copy
# from systemd (LoadCredential=, mode 0400, owned by the service user) of a file root keeps
# in /etc/credstore with mode 0600; the support staff's group `edgebell` may read the
# config but never a key.
SECRET_MODE_MASK = stat.S_IRWXG | stat.S_IRWXO


def refuse_shared_secret(path: Path, mode: int, *, what: str) -> None:
    """ConfigError when anyone but the owner may read or change a secret file."""
    if mode & SECRET_MODE_MASK:
        who = "other users" if mode & stat.S_IRWXO else f"group {_group_name(path)}"
        raise ConfigError(
            f"{what} {path} is open to {who} (mode {stat.S_IMODE(mode):04o}); a key is for its "
            f"owner alone: chmod 600 {path} (keep it root-owned in /etc/credstore for the "
            "service, or owned by the user that runs edgebell)"
        )


def _group_name(path: Path) -> str:
    try:
        return grp.getgrgid(os.stat(path).st_gid).gr_name
    except (OSError, KeyError):
        return "members"
