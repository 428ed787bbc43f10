"""Errors that carry an HTTP status and a machine-readable code.

Every error a user can cause ends as `{"error": {"code", "message", "field"}}` with a 4xx
status; raising one of these anywhere in a request is enough to get that answer.
"""

from __future__ import annotations


class HubError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra: dict = {}  # more for the caller, e.g. the channels that could be used
        if code:
            self.code = code
        if status:
            self.status = status

    def as_json(self) -> dict:
        body: dict = {"code": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        return {"error": {**body, **self.extra}}


class BadRequest(HubError):
    status = 400
    code = "bad_request"


class Unauthorized(HubError):
    status = 401
    code = "unauthorized"


class Forbidden(HubError):
    status = 403
    code = "forbidden"


class SignatureRejected(HubError):
    """A webhook whose signature or timestamp does not check out (always 403)."""

    status = 403
    code = "bad_signature"


class NotFound(HubError):
    status = 404
    code = "not_found"


class Conflict(HubError):
    status = 409
    code = "conflict"


class PayloadTooLarge(HubError):
    status = 413
    code = "payload_too_large"


class Unprocessable(HubError):
    status = 422
    code = "unprocessable"


class Unavailable(HubError):
    """Storage or queue unreachable: the caller should retry later (503)."""

    status = 503
    code = "unavailable"


class ConfigError(Exception):
    """Invalid configuration; the message names the account and field to fix."""


class Throttled(Exception):
    """The channel's rate limit says wait: the job comes back after `defer_s`, no attempt spent."""

    def __init__(self, defer_s: float) -> None:
        super().__init__(f"throttled for {defer_s:.2f} s")
        self.defer_s = defer_s


class SendError(Exception):
    """An outbound send failed. `permanent` failures are not retried."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
