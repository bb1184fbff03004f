"""One place maps domain errors (and a backing service that went away) to HTTP answers."""

import logging

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

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"


class AdminUnauthenticated(Exception):
    """No X-Admin-Token header."""


class AdminForbidden(Exception):
    """A wrong token, or operator endpoints not configured."""


def unavailable(service: str) -> JSONResponse:
    return JSONResponse(
        {"detail": f"{service} is unavailable, try again later"},
        status_code=503,
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NotFound)
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _unauthenticated(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": "no valid session: open one with GET /sessions/new/"},
        status_code=401,
    )


async def _admin_unauthenticated(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": "operator endpoint: send the X-Admin-Token header"}, status_code=401)


async def _admin_forbidden(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=403)


async def _invalid_field(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidField)
    detail = [{"type": "value_error", "loc": ["body", exc.field], "msg": exc.message}]
    return JSONResponse({"detail": detail}, status_code=422)


async def _conflict(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TransportCompanyConflict)
    return JSONResponse({"detail": str(exc), "transport_company_id": exc.holder_id}, status_code=409)


async def _service_unavailable(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceUnavailable)
    logger.warning("backing service unavailable service=%s path=%s", exc.service, request.url.path)
    return unavailable(exc.service)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("database unavailable path=%s error=%r", request.url.path, exc)
    return unavailable("database")


async def _broker_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("broker unavailable path=%s error=%r", request.url.path, exc)
    return unavailable("broker")


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
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Unauthenticated, _unauthenticated)
    app.add_exception_handler(AdminUnauthenticated, _admin_unauthenticated)
    app.add_exception_handler(AdminForbidden, _admin_forbidden)
    app.add_exception_handler(InvalidField, _invalid_field)
    app.add_exception_handler(TransportCompanyConflict, _conflict)
    app.add_exception_handler(ServiceUnavailable, _service_unavailable)
    app.add_exception_handler(405, _method_not_allowed)
    # A lost connection, a refused connection or an exhausted pool: the database is not answering.
    for exc_type in (
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        sqlalchemy.exc.TimeoutError,
    ):
        app.add_exception_handler(exc_type, _database_unavailable)
    app.add_exception_handler(kombu.exceptions.OperationalError, _broker_unavailable)
    app.add_exception_handler(Exception, _internal)
