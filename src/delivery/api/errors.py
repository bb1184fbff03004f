"""One table maps domain errors, and a backing service that went away, to HTTP answers: status, body,
headers. The exception handlers answer from it and `delivery.api.responses` documents from it, so the
answers and the OpenAPI document cannot drift apart."""

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kombu.exceptions
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.routing import Match

from delivery.errors import (
    InvalidField,
    NotFound,
    ServiceUnavailable,
    TransportCompanyConflict,
    Unauthenticated,
)
from delivery.ratelimit import RateLimited
from delivery.schemas import ConflictProblem, Problem

logger = logging.getLogger(__name__)

RETRY_AFTER = {"Retry-After": "5"}


class AdminUnauthenticated(Exception):
    """No X-Admin-Token header."""


class AdminForbidden(Exception):
    """A wrong or revoked key, or no operator configured."""


Body = Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class Answer:
    """How an error is answered, and how the OpenAPI document describes that answer."""

    status: int
    description: str
    body: Body
    #: The answer's headers, or what makes them of the error.
    headers: Mapping[str, str] | Callable[[Any], Mapping[str, str]] = field(default_factory=dict)
    model: type[Problem] = Problem

    def headers_of(self, exc: Exception) -> dict[str, str]:
        return dict(self.headers(exc) if callable(self.headers) else self.headers)

    def response(self, exc: Exception) -> JSONResponse:
        return JSONResponse(self.body(exc), status_code=self.status, headers=self.headers_of(exc))


def _detail(exc: Exception) -> dict[str, Any]:
    return {"detail": str(exc)}


def _says(detail: str) -> Body:
    return lambda _: {"detail": detail}


def _down(service: str | None = None) -> Answer:
    """503 for a backing service that did not answer: `service`, or the one the error names."""
    return Answer(
        503,
        "A backing service is down; try again after Retry-After",
        lambda exc: {"detail": f"{service or exc.service} is unavailable, try again later"},
        RETRY_AFTER,
    )


def _invalid_field(exc: InvalidField) -> dict[str, Any]:
    # The shape of FastAPI's own 422, which documents it: a check against the data, after the schema's.
    return {"detail": [{"type": "value_error", "loc": ["body", exc.field], "msg": exc.message}]}


ANSWERS: dict[type[Exception], Answer] = {
    NotFound: Answer(404, "Unknown, or another session's", _detail),
    Unauthenticated: Answer(
        401,
        "No session, or an unknown or expired one",
        _says("no valid session: open one with GET /sessions/new/"),
    ),
    AdminUnauthenticated: Answer(
        401, "No X-Admin-Token header", _says("operator endpoint: send the X-Admin-Token header")
    ),
    AdminForbidden: Answer(403, "A wrong or revoked key, or no operator configured", _detail),
    InvalidField: Answer(422, "Invalid input", _invalid_field),
    TransportCompanyConflict: Answer(
        409,
        "Another company holds the package; its id is in `transport_company_id`",
        lambda exc: {"detail": str(exc), "transport_company_id": exc.holder_id},
        model=ConflictProblem,
    ),
    RateLimited: Answer(
        429,
        "Over a rate limit; try again after Retry-After (the RateLimit fields tell the limit)",
        _detail,
        lambda exc: exc.verdict.headers(),
    ),
    ServiceUnavailable: _down(),
    # A lost connection, a refused connection or an exhausted pool: the database is not answering.
    sqlalchemy.exc.OperationalError: _down("database"),
    sqlalchemy.exc.InterfaceError: _down("database"),
    sqlalchemy.exc.TimeoutError: _down("database"),
    kombu.exceptions.OperationalError: _down("broker"),
}

#: What the OpenAPI document says of the headers the answers carry.
HEADER_DOCS = {
    "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}},
    "RateLimit-Policy": {
        "description": 'each window of the limit (IETF draft): `"<name>";q=<quota>;w=<seconds>`',
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'what remains of each window, the seconds until it ends: `"<name>";r=<n>;t=<seconds>`',
        "schema": {"type": "string"},
    },
}


def answer_for(exc: Exception) -> Answer:
    """The answer of the nearest class of `exc` in the table."""
    return next(ANSWERS[cls] for cls in type(exc).__mro__ if cls in ANSWERS)


async def error_response(request: Request, exc: Exception) -> JSONResponse:
    """The answer to an exception raised on the way to `request`'s answer, as the app's handlers give it."""
    if any(cls in ANSWERS for cls in type(exc).__mro__):
        return await _answer(request, exc)
    return await _internal(request, exc)


async def _answer(request: Request, exc: Exception) -> JSONResponse:
    answer = answer_for(exc)
    if answer.status >= 500:
        logger.warning("backing service unavailable path=%s error=%r", request.url.path, exc)
    return answer.response(exc)


#: The methods a path is probed for when it answers 405.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


async def _method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's `Allow` names the methods of the first route of the path only (`GET` for `/packages/`,
    which takes `POST` too): here every route is asked which methods of the path it takes in full."""
    probe = {"type": "http", "path": request.scope["path"], "root_path": request.scope.get("root_path", "")}
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches(probe | {"method": method})[0] is Match.FULL for route in request.app.router.routes
        )
    ]
    return JSONResponse(
        {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": ", ".join(allowed)}
    )


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error path=%s", request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error"}, status_code=500)


def register_exception_handlers(app: FastAPI) -> None:
    for exc_type in ANSWERS:
        app.add_exception_handler(exc_type, _answer)
    app.add_exception_handler(405, _method_not_allowed)
    app.add_exception_handler(Exception, _internal)
