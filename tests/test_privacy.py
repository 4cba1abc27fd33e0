"""Device tokens and JWTs stay out of log lines: every token the config accepts is masked."""

from __future__ import annotations

import logging

import pytest

from edgebell.privacy import RedactingFilter, redact
from testkit.gateway import random_token


@pytest.mark.parametrize("nbytes", [8, 9, 16, 32, 100])
def test_every_token_length_the_config_accepts_is_shortened(nbytes: int) -> None:
    token = random_token(nbytes)
    assert redact(f"push to {token} failed") == f"push to {token[:8]}… failed"
    assert redact(f"/3/device/{token}?x") == f"/3/device/{token[:8]}…?x"


def test_short_hex_is_left_alone() -> None:
    # Key ids, small counters, 15 hex digits: not a token, and useful in a log.
    text = "key ABC123DEFG, stream 1f, id 0123456789abcde"
    assert redact(text) == text


def test_a_16_digit_token_in_a_log_record_is_masked() -> None:
    token = random_token(8)
    record = logging.LogRecord(
        "edgebell", logging.WARNING, __file__, 1, "token %s dead", (token,), None
    )
    assert RedactingFilter().filter(record)
    assert record.getMessage() == f"token {token[:8]}… dead"
