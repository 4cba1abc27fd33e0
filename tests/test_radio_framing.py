"""Line splitting with a cap, and bytes to text, for receiver output."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from edgebell.radio.events import BadFrame
from edgebell.radio.framing import (
    Line,
    LineSplitter,
    OverlongLine,
    decode_line,
    overlong_frame,
)


def lines(chunks: list[Line | OverlongLine]) -> list[bytes]:
    assert all(isinstance(c, Line) for c in chunks), chunks
    return [c.data for c in chunks if isinstance(c, Line)]


def feed_all(splitter: LineSplitter, *parts: bytes) -> list[Line | OverlongLine]:
    out: list[Line | OverlongLine] = []
    for part in parts:
        out += splitter.feed(part)
    return out


def test_splits_on_lf_crlf_and_bare_cr() -> None:
    splitter = LineSplitter()
    assert lines(splitter.feed(b"one\ntwo\r\nthree\rfour")) == [b"one", b"two", b"three"]
    assert lines(splitter.feed(b"\n")) == [b"four"]


def test_cr_lf_split_across_reads_is_one_line_end() -> None:
    splitter = LineSplitter()
    # The line is out as soon as its CR arrives, without waiting for the LF.
    assert lines(splitter.feed(b"20;01;OK;\r")) == [b"20;01;OK;"]
    assert lines(splitter.feed(b"\n20;02;OK;\r")) == [b"20;02;OK;"]
    assert lines(splitter.feed(b"")) == []
    assert lines(splitter.feed(b"\n")) == []


def test_empty_lines_are_lines() -> None:
    assert lines(LineSplitter().feed(b"a\r\r\n\nb\n")) == [b"a", b"", b"", b"b"]


def test_partial_line_waits_for_its_end() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"20;77;EV15") == []
    assert splitter.buffered == len(b"20;77;EV15")
    assert lines(splitter.feed(b"27;\r\n")) == [b"20;77;EV1527;"]
    assert splitter.buffered == 0


def test_line_of_exactly_max_length_is_kept() -> None:
    splitter = LineSplitter(max_line=8)
    assert lines(splitter.feed(b"12345678\n")) == [b"12345678"]


def test_over_long_line_is_reported_once_and_discarded_to_its_end() -> None:
    splitter = LineSplitter(max_line=8)
    out = feed_all(splitter, b"123456", b"789", b"abcdef" * 100, b"xyz\r\nok\r\n")
    assert out == [OverlongLine(b"123456789", 8), Line(b"ok")]
    assert splitter.buffered == 0


def test_over_long_line_in_one_read_then_good_line() -> None:
    splitter = LineSplitter()
    out = splitter.feed(b"x" * 600 + b"\r\n20;01;OK;\r\n")
    assert len(out) == 2
    assert isinstance(out[0], OverlongLine)
    assert out[0].head == b"x" * 64  # a sample, not the whole line
    assert out[1] == Line(b"20;01;OK;")


def test_over_long_report_is_a_bad_frame() -> None:
    bad = overlong_frame(OverlongLine(b"abc", 512))
    assert bad.reason == "over-long line (more than 512 bytes)"
    assert bad.raw.startswith("abc")


def test_reset_drops_the_partial_line() -> None:
    splitter = LineSplitter()
    splitter.feed(b"half a li")
    splitter.reset()
    assert lines(splitter.feed(b"20;01;OK;\n")) == [b"20;01;OK;"]


def test_reset_ends_discarding_and_the_pending_lf() -> None:
    splitter = LineSplitter(max_line=4)
    splitter.feed(b"toolong")
    splitter.reset()
    assert lines(splitter.feed(b"ab\n")) == [b"ab"]
    splitter.feed(b"cd\r")
    splitter.reset()
    assert lines(splitter.feed(b"\nef\n")) == [b"", b"ef"]


def test_decode_line() -> None:
    assert decode_line("Grüße".encode()) == "Grüße"
    bad = decode_line(b"20;01;\xff\xfeOK;")
    assert isinstance(bad, BadFrame)
    assert bad.reason == "not UTF-8"
    assert "\\xff" in bad.raw


@given(st.lists(st.binary(max_size=300), max_size=30), st.integers(min_value=1, max_value=64))
def test_memory_stays_bounded(chunks: list[bytes], max_line: int) -> None:
    splitter = LineSplitter(max_line)
    for chunk in chunks:
        for item in splitter.feed(chunk):
            if isinstance(item, Line):
                assert len(item.data) <= max_line
                assert b"\r" not in item.data
                assert b"\n" not in item.data
        assert splitter.buffered <= max_line


@given(st.binary(max_size=400), st.lists(st.integers(min_value=0, max_value=400), max_size=10))
def test_where_reads_split_does_not_matter(data: bytes, cuts: list[int]) -> None:
    whole = LineSplitter(max_line=32).feed(data)
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    parts = [data[a:b] for a, b in itertools.pairwise(bounds)]
    assert feed_all(LineSplitter(max_line=32), *parts) == whole


@given(st.binary(max_size=200))
def test_decode_line_never_raises(data: bytes) -> None:
    result = decode_line(data)
    assert isinstance(result, str | BadFrame)
