"""`parse_error`: every branch of the error envelope, and bodies that are not envelopes at all."""

from __future__ import annotations

import pytest

from chorus_client import errors
from chorus_client.errors import parse_error


def envelope(type_: object, message: object = "boom", code: object = None, param: object = None) -> dict:
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}


@pytest.mark.parametrize(
    ("status", "type_", "cls"),
    [
        (400, "invalid_request_error", errors.InvalidRequestError),
        (413, "invalid_request_error", errors.InvalidRequestError),
        (415, "invalid_request_error", errors.InvalidRequestError),
        (422, "invalid_request_error", errors.InvalidRequestError),
        (401, "authentication_error", errors.AuthenticationError),
        (403, "permission_error", errors.PermissionDeniedError),
        (404, "not_found_error", errors.NotFoundError),
        (409, "conflict_error", errors.ConflictError),
        (429, "rate_limit_error", errors.RateLimitError),
        (503, "overloaded_error", errors.OverloadedError),
        (504, "timeout_error", errors.DeadlineExceededError),
        (500, "server_error", errors.InternalServerError),
    ],
)
def test_envelope_type_picks_the_class(status, type_, cls):
    exc = parse_error(status, envelope(type_, "adapter 'fr' not found", code="adapter_not_found", param="model"))
    assert type(exc) is cls
    assert isinstance(exc, errors.APIError) and isinstance(exc, errors.ChorusError)
    assert (exc.status, exc.type, exc.code, exc.param) == (status, type_, "adapter_not_found", "model")
    assert exc.message == "adapter 'fr' not found"
    assert "adapter 'fr' not found" in str(exc) and str(status) in str(exc)


def test_the_type_wins_over_the_status():
    # A 400 whose envelope says not_found is a NotFoundError: the server's type is the more precise word.
    assert type(parse_error(400, envelope("not_found_error"))) is errors.NotFoundError


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.InvalidRequestError),
        (401, errors.AuthenticationError),
        (403, errors.PermissionDeniedError),
        (404, errors.NotFoundError),
        (409, errors.ConflictError),
        (413, errors.InvalidRequestError),
        (418, errors.InvalidRequestError),
        (429, errors.RateLimitError),
        (500, errors.InternalServerError),
        (502, errors.InternalServerError),
        (503, errors.OverloadedError),
        (504, errors.DeadlineExceededError),
    ],
)
def test_unknown_type_falls_back_to_the_status(status, cls):
    assert type(parse_error(status, envelope("brand_new_error"))) is cls
    assert type(parse_error(status, envelope(None))) is cls
    assert type(parse_error(status, envelope(42))) is cls


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"detail": "Not Found"}, "Not Found"),  # FastAPI's default shape
        ({"detail": [{"loc": ["body", "file"], "msg": "Field required"}]}, "Field required"),
        ("<html>502 Bad Gateway</html>", "502 Bad Gateway"),
        ("", "HTTP 502 with no error body"),
        (None, "HTTP 502 with no error body"),
        ({"error": "a string, not an object"}, "HTTP 502 with no error body"),
        ([1, 2], "[1, 2]"),
    ],
)
def test_bodies_that_are_not_envelopes(payload, message):
    exc = parse_error(502, payload)
    assert type(exc) is errors.InternalServerError
    assert message in exc.message and exc.type is None and exc.code is None


def test_missing_message_and_odd_field_types_do_not_break_parsing():
    exc = parse_error(409, {"error": {"type": "conflict_error", "code": 7, "param": ["x"]}})
    assert type(exc) is errors.ConflictError
    assert exc.message == "HTTP 409 (conflict_error)" and exc.code is None and exc.param is None


def test_retry_after_is_carried():
    assert parse_error(503, envelope("overloaded_error"), retry_after=2.5).retry_after == 2.5
    assert parse_error(404, envelope("not_found_error")).retry_after is None


def test_long_non_json_bodies_are_cut():
    assert len(parse_error(500, "x" * 100_000).message) == 1000
