"""Payload building and cutting, collapse ids, request reprs, and the privacy filter."""

from __future__ import annotations

import json
import logging
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgebell.apns.model import Environment, PushRequest
from edgebell.apns.payload import MAX_PAYLOAD, build_payload, collapse_id_for
from edgebell.privacy import RedactingFilter, redact, short_token


def payload(
    title: str = "Doorbell", body: str = "Someone is at the Front door", **kw: object
) -> bytes:
    args: dict[str, object] = {
        "title": title,
        "body": body,
        "sound": "default",
        "thread_id": "front",
        "ring_id": "0b6f3c1e-1c1f-4b8e-9d2a-6a1f0c2d3e4f",
        "button": "front",
        "at": "2024-05-01T14:05:00.123Z",
    }
    args.update(kw)
    return build_payload(**args)  # type: ignore[arg-type]


def test_payload_shape_is_exactly_the_contract() -> None:
    data = payload()
    assert json.loads(data) == {
        "aps": {
            "alert": {"title": "Doorbell", "body": "Someone is at the Front door"},
            "sound": "default",
            "interruption-level": "time-sensitive",
            "thread-id": "front",
        },
        "edgebell": {
            "ring_id": "0b6f3c1e-1c1f-4b8e-9d2a-6a1f0c2d3e4f",
            "button": "front",
            "at": "2024-05-01T14:05:00.123Z",
        },
    }
    assert b" " not in data.replace(b"Someone is at the Front door", b"")  # compact
    assert list(json.loads(data)["aps"]) == ["alert", "sound", "interruption-level", "thread-id"]


def test_no_sound_means_no_sound_key() -> None:
    assert "sound" not in json.loads(payload(sound=None))["aps"]


def test_utf8_not_escaped() -> None:
    data = payload(body="Quelqu'un à la porte 門 🔔")
    assert "Quelqu'un à la porte 門 🔔".encode() in data


@pytest.mark.parametrize("unit", ["é", "門", "🔔", '"', "\\", "\n", "\x01", "a"])
def test_long_body_is_cut_to_the_limit_never_rejected(unit: str) -> None:
    body = unit * 5000
    data = payload(body=body)
    assert len(data) <= MAX_PAYLOAD
    cut = json.loads(data)["aps"]["alert"]["body"]
    assert cut.endswith("…")
    assert body.startswith(cut[:-1].rstrip())
    if not unit.isspace():
        # As long as possible: one more character would not fit.
        longer = json.dumps(cut[:-1] + unit + "…", ensure_ascii=False).encode()
        grown = len(data) - len(json.dumps(cut, ensure_ascii=False).encode()) + len(longer)
        assert grown > MAX_PAYLOAD
    assert json.loads(data)["aps"]["alert"]["title"] == "Doorbell"


def test_emoji_body_cut_on_a_character_boundary() -> None:
    data = payload(body="Someone rang 🔔" * 600)
    data.decode("utf-8")  # strict: no half characters
    assert len(data) <= MAX_PAYLOAD


def test_long_title_is_cut_after_the_body() -> None:
    data = payload(title="T" * 5000, body="B" * 5000)
    alert = json.loads(data)["aps"]["alert"]
    assert len(data) <= MAX_PAYLOAD
    assert alert["body"] == "…"
    assert alert["title"].startswith("TTT")
    assert alert["title"].endswith("…")


def test_small_limit_still_fits() -> None:
    data = payload(body="x" * 1000, limit=300)
    assert len(data) <= 300
    assert json.loads(data)["aps"]["alert"]["body"].endswith("…")


def test_fixed_parts_larger_than_the_limit_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="no room"):
        payload(limit=50)


def test_lone_surrogate_does_not_make_the_push_impossible() -> None:
    data = payload(body="bad \udc80 byte")
    data.decode("utf-8")


@settings(max_examples=60, deadline=None)
@given(title=st.text(max_size=3000), body=st.text(max_size=6000))
def test_any_text_gives_valid_json_within_the_limit(title: str, body: str) -> None:
    data = payload(title=title, body=body)
    assert len(data) <= MAX_PAYLOAD
    alert = json.loads(data.decode("utf-8"))["aps"]["alert"]
    if alert["body"] != body.encode("utf-8", "replace").decode("utf-8"):
        assert alert["body"].endswith("…")


def test_collapse_id() -> None:
    ring_id = "0b6f3c1e-1c1f-4b8e-9d2a-6a1f0c2d3e4f"
    assert collapse_id_for(ring_id) == ring_id
    long = collapse_id_for("r" * 200)
    assert len(long.encode()) <= 64
    assert long == collapse_id_for("r" * 200)  # the same for every retry of the ring
    assert long != collapse_id_for("r" * 201)
    unicode = collapse_id_for("ring-é")
    assert unicode.isascii()
    assert len(unicode) <= 64
    assert redact(long) == long  # not mistaken for a device token in logs


def test_push_request_repr_hides_the_token() -> None:
    token = secrets.token_hex(32)
    request = PushRequest(
        token=token,
        environment=Environment.SANDBOX,
        topic="com.example.doorbell",
        payload=b"{}",
        apns_id="0b6f3c1e-1c1f-4b8e-9d2a-6a1f0c2d3e4f",
        collapse_id="c",
        expiration=1,
    )
    assert token not in repr(request)
    assert token[:8] + "…" in repr(request)
    assert Environment.SANDBOX.host == "api.sandbox.push.apple.com"
    assert Environment.PRODUCTION.host == "api.push.apple.com"


# -- privacy -------------------------------------------------------------------------------

JWT = (
    "eyJhbGciOiJFUzI1NiIsImtpZCI6IkFCQzEyM0RFRkcifQ"
    ".eyJpc3MiOiJERUYxMjNHSElKIiwiaWF0IjoxNzAwMDAwMDAwfQ"
    ".MEUCIQDx-_abc123XYZ"
)


def test_short_token() -> None:
    assert short_token("8b3c0d1e2f" + "0" * 54) == "8b3c0d1e…"


def test_redact_masks_tokens_of_any_length_and_jwts() -> None:
    t32 = secrets.token_hex(16)
    t100 = secrets.token_hex(50).upper()
    text = f"path=/3/device/{t32} other={t100} auth=bearer {JWT} id=0b6f3c1e-1c1f-4b8e"
    out = redact(text)
    assert t32 not in out
    assert t32[:8] + "…" in out
    assert t100 not in out
    assert t100[:8] + "…" in out
    assert JWT not in out
    assert "eyJhbGci" not in out
    assert "id=0b6f3c1e-1c1f-4b8e" in out  # UUID pieces are not tokens
    assert redact("short abcdef12") == "short abcdef12"


def test_filter_masks_messages_args_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    token = secrets.token_hex(32)
    handler = caplog.handler
    redactor = RedactingFilter()
    handler.addFilter(redactor)
    try:
        third_party = logging.getLogger("hpack.test")
        with caplog.at_level(logging.DEBUG):
            third_party.debug("Adding %s=%s", b":path", f"/3/device/{token}".encode())
            third_party.debug("authorization: bearer %s", JWT)
            try:
                raise RuntimeError(f"bad token {token}")
            except RuntimeError:
                logging.getLogger("edgebell.test").exception("failed")
        text = caplog.text
    finally:
        handler.removeFilter(redactor)
    assert token not in text
    assert JWT not in text
    assert token[:8] + "…" in text
    assert "<jwt>" in text
    assert "RuntimeError" in text


def test_filter_never_lets_arguments_of_a_broken_record_through() -> None:
    token = secrets.token_hex(32)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "count %d", (token,), None)
    assert RedactingFilter().filter(record)
    assert token not in record.getMessage()
    assert "count %d" in record.getMessage()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s/%s", (token, JWT), None)
    RedactingFilter().filter(record)
    assert record.getMessage() == f"{token[:8]}…/<jwt>"
