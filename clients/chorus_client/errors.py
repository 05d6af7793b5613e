"""One exception class per error type of the server's OpenAI-style error envelope, and the parser that picks it.

Every non-2xx answer carries `{"error": {"message", "type", "param", "code"}}`. The `type` chooses the class;
when the body is not an envelope (a proxy's HTML page, an empty 502) the HTTP status chooses instead.
"""

from __future__ import annotations

from typing import Any


class ChorusError(Exception):
    """Base of every error the SDK raises."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = (
            f" ({self.status} {self.code})" if self.status and self.code else f" ({self.status})" if self.status else ""
        )
        return f"{self.message}{where}"


class APIConnectionError(ChorusError):
    """The server could not be reached, or the connection broke before an answer arrived."""


class APIError(ChorusError):
    """The server answered with an error status."""


class InvalidRequestError(APIError):
    """400/413/415/422: the request (audio, parameters, adapter file) was rejected; fix it, do not retry."""


class AuthenticationError(APIError):
    """401: the API key is missing or unknown."""


class PermissionDeniedError(APIError):
    """403: the key's tenant may not do this (e.g. change another tenant's adapter)."""


class NotFoundError(APIError):
    """404: the adapter (or version) does not exist or is not visible to this key."""


class ConflictError(APIError):
    """409: e.g. `expected_version` did not match the adapter's current version."""


class RateLimitError(APIError):
    """429: the tenant is over its rate; retried with backoff, honouring Retry-After."""


class OverloadedError(APIError):
    """503: the queue is full or the server is not ready; retried with backoff, honouring Retry-After."""


class DeadlineExceededError(APIError):
    """504: the request waited past its deadline."""


class InternalServerError(APIError):
    """500 and any other 5xx without a more specific type."""


ERROR_TYPES: dict[str, type[APIError]] = {
    "invalid_request_error": InvalidRequestError,
    "authentication_error": AuthenticationError,
    "permission_error": PermissionDeniedError,
    "not_found_error": NotFoundError,
    "conflict_error": ConflictError,
    "rate_limit_error": RateLimitError,
    "overloaded_error": OverloadedError,
    "timeout_error": DeadlineExceededError,
    "server_error": InternalServerError,
}

STATUS_TYPES: dict[int, type[APIError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: InvalidRequestError,
    415: InvalidRequestError,
    422: InvalidRequestError,
    429: RateLimitError,
    503: OverloadedError,
    504: DeadlineExceededError,
}


def _class_for_status(status: int) -> type[APIError]:
    if status in STATUS_TYPES:
        return STATUS_TYPES[status]
    return InternalServerError if status >= 500 else InvalidRequestError if status >= 400 else APIError


def parse_error(status: int, payload: Any, retry_after: float | None = None) -> APIError:
    """The exception for an error answer: by the envelope's `type`, else by `status`. Never raises itself."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        # FastAPI's default `{"detail": ...}`, a plain-text body or nothing at all.
        detail = payload.get("detail") if isinstance(payload, dict) else payload
        text = str(detail).strip() if detail not in (None, "") else f"HTTP {status} with no error body"
        return _class_for_status(status)(text[:1000], status=status, retry_after=retry_after)
    kind, code, param = (_str_or_none(error.get(k)) for k in ("type", "code", "param"))
    cls = ERROR_TYPES.get(kind or "") or _class_for_status(status)
    message = error.get("message")
    return cls(
        str(message) if message else f"HTTP {status} ({kind or 'no type'})",
        status=status,
        type=kind,
        code=code,
        param=param,
        retry_after=retry_after,
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
