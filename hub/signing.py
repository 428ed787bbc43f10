"""omnihub's own request signature, for the protocols we define (the app channel, the raw
email webhook, callbacks to app backends):

    X-Omnihub-Timestamp: <unix seconds>
    X-Omnihub-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + raw body)>
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from hub.errors import SignatureRejected

TIMESTAMP_HEADER = "x-omnihub-timestamp"
SIGNATURE_HEADER = "x-omnihub-signature"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-Omnihub-Signature` value for a body sent at `timestamp`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signed_headers(secret: str, body: bytes, now: float | None = None,
                   content_type: str = "application/json") -> dict[str, str]:
    timestamp = str(int(now if now is not None else time.time()))
    return {"X-Omnihub-Timestamp": timestamp, "X-Omnihub-Signature": sign(secret, timestamp, body),
            "Content-Type": content_type}


def verify_signed(headers: Mapping[str, str], body: bytes, secret: str, window_s: int) -> None:
    """Raise SignatureRejected unless the body is signed with `secret` within the window."""
    timestamp = headers.get(TIMESTAMP_HEADER)
    signature = headers.get(SIGNATURE_HEADER)
    if not timestamp or not signature:
        raise SignatureRejected("missing X-Omnihub-Timestamp or X-Omnihub-Signature header",
                                code="missing_signature")
    if not hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.encode()):
        raise SignatureRejected("signature does not match the body", code="bad_signature")
    try:
        age = abs(time.time() - int(timestamp))
    except ValueError:
        raise SignatureRejected("X-Omnihub-Timestamp must be unix seconds",
                                code="bad_timestamp") from None
    if window_s and age > window_s:
        raise SignatureRejected(f"timestamp is outside the {window_s} s window",
                                code="stale_timestamp")
