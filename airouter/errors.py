"""The router's error tree, and the one place that turns errors into OpenAI error JSON."""

from __future__ import annotations

import msgspec


class RouterError(Exception):
    """An error the client sees as an OpenAI error object with an HTTP status."""

    status = 500
    type = "server_error"
    code: str | None = None
    # True when another node may well succeed: connection refused, 503, node unavailable.
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}


class InvalidRequest(RouterError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(RouterError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(RouterError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(RouterError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class BodyTooLarge(RouterError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(RouterError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(RouterError):
    """The backend answered with an error; status and body are relayed in OpenAI's shape."""

    type = "upstream_error"


class BadGateway(RouterError):
    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class ServiceUnavailable(RouterError):
    status = 503
    type = "upstream_error"
    code = "service_unavailable"
    retryable = True


class GatewayTimeout(RouterError):
    status = 504
    type = "upstream_error"
    code = "gateway_timeout"


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


_encode = msgspec.json.Encoder().encode


def error_detail(err: RouterError) -> ErrorDetail:
    return ErrorDetail(err.message, err.type, err.param, err.code)


def error_json(err: RouterError) -> bytes:
    """The OpenAI error body for `err`."""
    return _encode(ErrorBody(error_detail(err)))


def internal_error() -> RouterError:
    """What an unexpected exception becomes: no traceback or detail leaks to the client."""
    return RouterError("The router failed to handle the request.", code="internal_error")


def shutting_down() -> RouterError:
    return ServiceUnavailable(
        "The server is shutting down; retry on another instance.",
        code="shutting_down",
        headers={"Retry-After": "1"},
    )


def unknown_url(path: str) -> NotFound:
    return NotFound(
        f"Unknown request URL: {path}. Please check the URL and method.", code="unknown_url"
    )
