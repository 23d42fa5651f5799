"""JSON error answers shaped as the RabbitMQ management plugin's."""

from __future__ import annotations

from typing import Any

from aiohttp import web

REALM = 'Basic realm="RabbitMQ Management"'


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=_dumps)


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value, default=str, separators=(",", ":"))


class ApiError(web.HTTPException):
    """An answer ``{"error": ..., "reason": ...}`` with a status code."""

    def __init__(self, status: int, error: str, reason: str, headers: dict[str, str] | None = None):
        self.status_code = status
        super().__init__(
            text=_dumps({"error": error, "reason": reason}),
            content_type="application/json",
            headers=headers,
        )


def not_found() -> ApiError:
    return ApiError(404, "Object Not Found", "Not Found")


def bad_request(reason: str) -> ApiError:
    return ApiError(400, "bad_request", reason)


def unauthorized(reason: str = "Login failed") -> ApiError:
    return ApiError(401, "not_authorized", reason, {"WWW-Authenticate": REALM})


def forbidden(reason: str = "Not administrator user") -> ApiError:
    # RabbitMQ answers 401 for a user whose tags do not allow the request.
    return ApiError(401, "not_authorised", reason, {"WWW-Authenticate": REALM})
