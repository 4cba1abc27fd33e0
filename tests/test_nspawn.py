"""The real-systemd test's own machinery: which apt mirror the container is built from."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.nspawn import CannotBoot, host_mirror

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example.net/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example.net/debian-security
Suites: bookworm-security
Components: main
"""


def apt_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_the_mirror_of_a_deb822_source(tmp_path: Path) -> None:
    apt = apt_dir(tmp_path, {"sources.list.d/debian.sources": DEB822})
    assert host_mirror("bookworm", apt) == "http://mirror.example.net/debian"


def test_the_mirror_of_a_one_line_source_with_options(tmp_path: Path) -> None:
    lines = (
        "# deb http://old.example.net/debian bookworm main\n"
        "deb-src http://src.example.net/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.example.net/debian bookworm main\n"
    )
    apt = apt_dir(tmp_path, {"sources.list": lines})
    assert host_mirror("bookworm", apt) == "http://one.example.net/debian"


def test_a_disabled_file_or_another_suite_is_no_mirror(tmp_path: Path) -> None:
    apt = apt_dir(
        tmp_path,
        {
            "sources.list.d/debian.sources.disabled": DEB822,
            "sources.list.d/other.list": "deb http://x.example.net/debian trixie main\n",
        },
    )
    with pytest.raises(CannotBoot, match="no apt source for bookworm"):
        host_mirror("bookworm", apt)
