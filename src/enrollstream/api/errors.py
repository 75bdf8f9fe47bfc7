"""One JSON error shape for every answer that is not a success (seed 001's error table):

    {"error": {"code": "campaign_not_found", "message": "...", "fields": [...]}}

`code` is stable and machine-readable (seed 001's codes, and `unauthorized`, `invalid_request`,
`not_found`, `method_not_allowed`); `fields` lists each invalid field of a 422 `invalid_request`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException


class FieldError(BaseModel):
    field: str  # where, dotted: "body.batch_size", "query.limit"
    message: str


class ErrorDetail(BaseModel):
    code: str
    message: str
    fields: list[FieldError] = []


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    """An answer with one of the documented codes."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        fields: list[FieldError] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.fields = fields


def campaign_not_found(campaign_id: str) -> ApiError:
    # The same answer for another account's campaign as for no campaign at all: a key learns nothing.
    return ApiError(404, "campaign_not_found", f"no campaign {campaign_id!r} in this account")


def unauthorized(message: str = "a valid API key is required: Authorization: Bearer <key>") -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


# What each status documents in the OpenAPI document, for `responses=` on the routes.
def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in statuses}


def _body(code: str, message: str, fields: list[FieldError] | None = None) -> dict[str, Any]:
    return ErrorBody(error=ErrorDetail(code=code, message=message, fields=fields or [])).model_dump()


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        body = _body(exc.code, exc.message, exc.fields)
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        fields = [
            FieldError(field=".".join(map(str, error.get("loc", ()))), message=error.get("msg", ""))
            for error in exc.errors()
        ]
        return JSONResponse(_body("invalid_request", "the request is invalid", fields), status_code=422)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return JSONResponse(_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
