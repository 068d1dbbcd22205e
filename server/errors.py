"""The OpenAI error envelope: {"error": {"message", "type", "param", "code"}} for every failure, and
the server's own error types. Shared by every room of server/ (it imports none of them)."""

from collections.abc import Mapping, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    416: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}

_LOCATIONS = ("body", "query", "path", "header")  # FastAPI's first loc item: where, not which parameter


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


class StorageError(OSError):
    """The artifact store cannot be read or written now (disk full or read-only, S3 unreachable)."""


def envelope(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error" if status >= 500 else
                                                             "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(status, message, param=None, code=None, headers=None) -> JSONResponse:
    return JSONResponse(envelope(status, message, param, code), status_code=status, headers=headers)


def not_found(video_id: str) -> APIError:
    return APIError(404, f"No video found with id '{video_id}'.", param="video_id", code="video_not_found")


def validation_error(errors: Sequence[Mapping]) -> APIError:
    """The first of pydantic's (or FastAPI's) validation errors as a 400 naming the parameter."""
    err = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(p) for p in err.get("loc", ()) if p not in _LOCATIONS) or None
    if err.get("type") == "missing":
        return APIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if err.get("type") == "extra_forbidden":
        return APIError(400, f"Unknown parameter: '{param}'.", param=param, code="unknown_parameter")
    return APIError(400, f"Invalid value for '{param}': {err.get('msg')}.", param=param, code="invalid_value")


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        error = validation_error(exc.errors())
        return error_response(error.status, error.message, error.param, error.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"Unknown route {request.method} {request.url.path}."
        return error_response(exc.status_code, message, None, code, getattr(exc, "headers", None))

    from starlette.requests import ClientDisconnect

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect):
        # the client closed (or half-closed) its side before its body was read: nobody hears a reply,
        # and it is not the server's error (no traceback)
        return error_response(400, "The client closed the connection before its request was read.", None,
                              "client_disconnected")

    import redis

    @app.exception_handler(redis.RedisError)
    async def _redis_down(request: Request, exc: redis.RedisError):
        return error_response(503, "The job store (Redis) is unavailable; try again shortly.", None,
                              "redis_unavailable", {"Retry-After": "2"})

    @app.exception_handler(StorageError)
    async def _storage_down(request: Request, exc: StorageError):
        import logging
        logging.getLogger("paris.api").warning("artifact storage failed on %s %s: %s", request.method,
                                               request.url.path, exc)
        return error_response(503, "Artifact storage is unavailable; try again shortly.", None,
                              "storage_unavailable", {"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        import logging
        logging.getLogger("paris.api").exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "Internal server error.", None, "internal_error")
