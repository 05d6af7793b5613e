"""HTTP-facing errors and their single mapping to OpenAI's error envelope.

Every non-2xx answer is `{"error": {"message", "type", "param", "code"}}`. Domain errors from the engine and the
store are translated here, once; routers raise them (or `ApiError`) and never build responses by hand.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from chorus_server.engine import errors as engine_errors
from chorus_server.tenants.base import DatabaseUnavailable
from chorus_store import errors as store_errors

logger = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    507: "server_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "overloaded_error",
    504: "timeout_error",
}


class ApiError(StarletteHTTPException):
    """An error with an HTTP status, a stable machine `code` and a message telling the caller what to do.

    It subclasses Starlette's HTTPException so that FastAPI re-raises it unchanged even from inside request-body
    parsing (where any other exception would become a generic 400)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(status_code=status, detail=message, headers=headers)
        self.message, self.code, self.param = message, code, param


def envelope(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    error_type = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(
        envelope(error.status_code, error.message, error.code, error.param), error.status_code, error.headers
    )


# Domain error -> (status, code); the first matching class wins.
DOMAIN_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    (store_errors.AdapterNotFound, 404, "adapter_not_found"),
    (store_errors.VersionNotFound, 404, "version_not_found"),
    (store_errors.AdapterRejected, 422, "invalid_adapter"),
    (store_errors.PublishConflict, 409, "version_conflict"),
    (store_errors.NameTaken, 409, "name_taken"),
    (store_errors.AdapterCorrupt, 500, "adapter_corrupt"),  # permanent: no Retry-After
    (store_errors.StoreUnavailable, 503, "store_unavailable"),
    (engine_errors.InputError, 400, "invalid_audio"),
    (engine_errors.AdapterError, 422, "invalid_adapter"),
    (engine_errors.DeviceOutOfMemory, 503, "device_out_of_memory"),
    (engine_errors.DeviceFault, 503, "device_unavailable"),
    (DatabaseUnavailable, 503, "tenant_database_unavailable"),
)


def from_domain(exc: Exception) -> ApiError | None:
    """The HTTP meaning of an engine or store error (None: not a domain error)."""
    for cls, status, code in DOMAIN_ERRORS:
        if isinstance(exc, cls):
            headers = {"Retry-After": "5"} if status == 503 else None  # 503s are transient; retrying helps
            return ApiError(status, str(exc), code, headers=headers)
    return None


def as_api_error(exc: ApiError | Exception) -> ApiError:
    """`exc` as an ApiError, for code outside the exception handlers (middleware); unknown errors are re-raised."""
    if isinstance(exc, ApiError):
        return exc
    mapped = from_domain(exc)
    if mapped is None:
        raise exc
    return mapped


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, ApiError):
            return error_response(exc)
        if isinstance(exc.__cause__, OSError):  # FastAPI's "error parsing the body": the temp dir is full or gone
            logger.error("cannot buffer a request body: %s", exc.__cause__)
            return error_response(
                ApiError(
                    503,
                    "the server cannot store the upload right now (temporary space); retry later",
                    "temp_storage_unavailable",
                    headers={"Retry-After": "30"},
                )
            )
        return error_response(ApiError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {})))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
        param = ".".join(location) or None
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else str(first.get("msg", "invalid request"))
        status = 400 if first.get("type") == "missing" else 422
        return error_response(ApiError(status, message, "invalid_parameter", param))

    @app.exception_handler(store_errors.StoreError)
    @app.exception_handler(engine_errors.EngineError)
    @app.exception_handler(DatabaseUnavailable)
    async def domain_error(_: Request, exc: Exception) -> JSONResponse:
        mapped = from_domain(exc)
        if mapped is None:
            logger.exception("unmapped domain error", exc_info=exc)
            mapped = ApiError(500, "internal error; the server log has the details", "internal_error")
        return error_response(mapped)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return error_response(ApiError(500, "internal error; the server log has the details", "internal_error"))
