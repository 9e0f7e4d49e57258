"""API errors: each carries the HTTP code and reason of a Kubernetes-style Status object."""

from typing import Any


class ApiError(Exception):
    code = 500
    reason = "InternalError"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "reason": self.reason,
            "message": self.message,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


class BadRequest(ApiError):
    code, reason = 400, "BadRequest"


class Unauthorized(ApiError):
    code, reason = 401, "Unauthorized"


class Forbidden(ApiError):
    code, reason = 403, "Forbidden"


class NotFound(ApiError):
    code, reason = 404, "NotFound"


class MethodNotAllowed(ApiError):
    code, reason = 405, "MethodNotAllowed"


class NotAcceptable(ApiError):
    code, reason = 406, "NotAcceptable"


class UnsupportedMediaType(ApiError):
    code, reason = 415, "UnsupportedMediaType"


class AlreadyExists(ApiError):
    code, reason = 409, "AlreadyExists"


class Conflict(ApiError):
    code, reason = 409, "Conflict"


class Gone(ApiError):
    code, reason = 410, "Expired"


class Invalid(ApiError):
    code, reason = 422, "Invalid"


class TooManyRequests(ApiError):
    code, reason = 429, "TooManyRequests"


class Unavailable(ApiError):
    code, reason = 503, "ServiceUnavailable"


def error_from_status(code: int, body: Any) -> ApiError:
    """Rebuild the error a server sent, for clients (CLI, agent)."""
    message = body.get("message", "") if isinstance(body, dict) else str(body)
    details = body.get("details", {}) if isinstance(body, dict) else {}
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        NotAcceptable,
        Gone,
        UnsupportedMediaType,
        Invalid,
        TooManyRequests,
        Unavailable,
    ):
        if cls.code == code:
            return cls(message or cls.reason, **details)
    if code == 409:
        reason = body.get("reason") if isinstance(body, dict) else None
        cls409 = AlreadyExists if reason == "AlreadyExists" else Conflict
        return cls409(message, **details)
    error = ApiError(message or f"HTTP {code}", **details)
    error.code = code
    return error
