"""The JSON nesting limit for input from outside."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgebell import jsonlimits


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"a": "[[[[{{{{" * 20, "b": ['"[[[[', "\\", "]]"]})
    assert jsonlimits.loads(text, limit=2) == json.loads(text)


def test_exactly_the_limit_is_accepted_one_more_is_refused() -> None:
    assert jsonlimits.loads("[" * 32 + "]" * 32) is not None
    with pytest.raises(jsonlimits.TooDeep, match="nested deeper than 32 levels"):
        jsonlimits.loads("[" * 33 + "]" * 33)


def test_too_deep_is_a_value_error_like_any_bad_json() -> None:
    with pytest.raises(ValueError, match="nested deeper"):
        jsonlimits.loads(b"[" * 100_000)


@given(st.recursive(st.none() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)))
def test_what_json_dumps_writes_reads_back(value: object) -> None:
    assert jsonlimits.loads(json.dumps(value), limit=1000) == value
