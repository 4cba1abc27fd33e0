"""Apple's validation of a provider API request, as pure functions: request in, rejection out."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    """The ``reason`` strings of Apple's "Handling notification responses from APNs"."""

    BAD_COLLAPSE_ID = "BadCollapseId"
    BAD_DEVICE_TOKEN = "BadDeviceToken"  # noqa: S105 (a reason, not a secret)
    BAD_EXPIRATION_DATE = "BadExpirationDate"
    BAD_MESSAGE_ID = "BadMessageId"
    BAD_PRIORITY = "BadPriority"
    BAD_TOPIC = "BadTopic"
    DEVICE_TOKEN_NOT_FOR_TOPIC = "DeviceTokenNotForTopic"  # noqa: S105 (a reason, not a secret)
    DUPLICATE_HEADERS = "DuplicateHeaders"
    IDLE_TIMEOUT = "IdleTimeout"
    INVALID_PUSH_TYPE = "InvalidPushType"
    MISSING_DEVICE_TOKEN = "MissingDeviceToken"  # noqa: S105 (a reason, not a secret)
    MISSING_TOPIC = "MissingTopic"
    PAYLOAD_EMPTY = "PayloadEmpty"
    TOPIC_DISALLOWED = "TopicDisallowed"
    BAD_CERTIFICATE = "BadCertificate"
    BAD_CERTIFICATE_ENVIRONMENT = "BadCertificateEnvironment"
    EXPIRED_PROVIDER_TOKEN = "ExpiredProviderToken"  # noqa: S105 (a reason, not a secret)
    FORBIDDEN = "Forbidden"
    INVALID_PROVIDER_TOKEN = "InvalidProviderToken"  # noqa: S105 (a reason, not a secret)
    MISSING_PROVIDER_TOKEN = "MissingProviderToken"  # noqa: S105 (a reason, not a secret)
    BAD_PATH = "BadPath"
    METHOD_NOT_ALLOWED = "MethodNotAllowed"
    EXPIRED_TOKEN = "ExpiredToken"  # noqa: S105 (a reason, not a secret)
    UNREGISTERED = "Unregistered"
    PAYLOAD_TOO_LARGE = "PayloadTooLarge"
    TOO_MANY_PROVIDER_TOKEN_UPDATES = "TooManyProviderTokenUpdates"  # noqa: S105 (a reason, not a secret)
    TOO_MANY_REQUESTS = "TooManyRequests"
    INTERNAL_SERVER_ERROR = "InternalServerError"
    SERVICE_UNAVAILABLE = "ServiceUnavailable"
    SHUTDOWN = "Shutdown"


# Apple lists no reason for a payload that is not a JSON object; of its reasons only
# PayloadEmpty speaks about the payload's content, and a payload with no dictionary
# in it carries no notification, so the stand-in answers that.
PAYLOAD_NOT_JSON_OBJECT = Reason.PAYLOAD_EMPTY

MAX_PAYLOAD = 4096
MAX_VOIP_PAYLOAD = 5120
MAX_COLLAPSE_ID = 64
DEVICE_PATH = "/3/device/"
PUSH_TYPES = frozenset(
    {
        "alert",
        "background",
        "location",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "pushtotalk",
        "widgets",
        "controls",
    }
)
PRIORITIES = frozenset({"10", "5", "1"})

_HEX_TOKEN = re.compile(r"(?:[0-9a-fA-F]{2})+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why APNs refuses a request: HTTP status and Apple's reason string."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Target:
    """A request aimed at a device token, before its headers and payload are checked."""

    token: str


def check_target(method: str, path: str) -> Target | Rejection:
    """Method and ``:path``: only ``POST /3/device/<even-length hex>`` reaches a device."""
    if method != "POST":
        return Rejection(405, Reason.METHOD_NOT_ALLOWED)
    if not path.startswith(DEVICE_PATH):
        return Rejection(404, Reason.BAD_PATH)
    token = path[len(DEVICE_PATH) :]
    if not token:
        return Rejection(400, Reason.MISSING_DEVICE_TOKEN)
    if "/" in token or "?" in token:
        return Rejection(404, Reason.BAD_PATH)
    if _HEX_TOKEN.fullmatch(token) is None:
        return Rejection(400, Reason.BAD_DEVICE_TOKEN)
    return Target(token)


def check_headers(
    headers: Mapping[str, str], *, duplicated: bool, topic: str | None
) -> Rejection | None:
    """The ``apns-*`` request headers, in the order Apple's documentation lists them.

    ``duplicated`` says a header name appeared more than once in the request.
    """
    if duplicated:
        return Rejection(400, Reason.DUPLICATE_HEADERS)
    apns_topic = headers.get("apns-topic")
    if not apns_topic:
        return Rejection(400, Reason.MISSING_TOPIC)
    if topic is not None and apns_topic != topic:
        return Rejection(400, Reason.TOPIC_DISALLOWED)
    push_type = headers.get("apns-push-type")
    if push_type is not None and push_type not in PUSH_TYPES:
        return Rejection(400, Reason.INVALID_PUSH_TYPE)
    priority = headers.get("apns-priority")
    if priority is not None and priority not in PRIORITIES:
        return Rejection(400, Reason.BAD_PRIORITY)
    expiration = headers.get("apns-expiration")
    if expiration is not None and _DIGITS.fullmatch(expiration) is None:
        return Rejection(400, Reason.BAD_EXPIRATION_DATE)
    collapse_id = headers.get("apns-collapse-id")
    if collapse_id is not None and len(collapse_id.encode()) > MAX_COLLAPSE_ID:
        return Rejection(400, Reason.BAD_COLLAPSE_ID)
    apns_id = headers.get("apns-id")
    if apns_id is not None and _UUID.fullmatch(apns_id) is None:
        return Rejection(400, Reason.BAD_MESSAGE_ID)
    return None


def check_payload(payload: bytes, size: int, *, push_type: str | None) -> Rejection | None:
    """The body: present, within Apple's size limit (5 KB for VoIP, else 4 KB), a JSON object.

    ``size`` is the full body length; ``payload`` may hold only its first bytes when
    the body was too large to keep.
    """
    if size == 0:
        return Rejection(400, Reason.PAYLOAD_EMPTY)
    if size > (MAX_VOIP_PAYLOAD if push_type == "voip" else MAX_PAYLOAD):
        return Rejection(413, Reason.PAYLOAD_TOO_LARGE)
    try:
        document = json.loads(payload)
    except ValueError:
        return Rejection(400, PAYLOAD_NOT_JSON_OBJECT)
    if not isinstance(document, dict):
        return Rejection(400, PAYLOAD_NOT_JSON_OBJECT)
    return None


def check_device(token: str) -> Rejection | None:
    """Whether a device has ``token``: only after authentication, topic and payload passed.

    Apple looks the token up last, so a well-formed token that belongs to no device
    answers 400 BadDeviceToken exactly when the credentials and topic were accepted
    (what edgebell's credentials check relies on). The stand-in has no registry of
    devices: every token is some device's except one of only zeros, which APNs never
    issues.
    """
    if token.strip("0") == "":
        return Rejection(400, Reason.BAD_DEVICE_TOKEN)
    return None


def is_uuid(value: str) -> bool:
    """True for the canonical 8-4-4-4-12 form Apple requires of ``apns-id``."""
    return _UUID.fullmatch(value) is not None
