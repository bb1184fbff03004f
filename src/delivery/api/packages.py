import time
import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from delivery import registration, service
from delivery.api import bodies
from delivery.api.deps import DbSession, PackageId, ResourcesDep, SessionId
from delivery.api.responses import PACKAGE_NOT_FOUND, STATUS_NOT_FOUND, UNAUTHENTICATED, UNAVAILABLE
from delivery.api.routing import DecimalRoute
from delivery.errors import InvalidField
from delivery.schemas import (
    MAX_INT,
    PackageCreate,
    PackagePage,
    PackageRead,
    PackageTypeRead,
    RegistrationAccepted,
    RegistrationStatus,
)

router = APIRouter(route_class=DecimalRoute, tags=["packages"])

# The reads answer bytes encoded once (`bodies`); `response_model` keeps documenting their shapes.
JSON = "application/json"


#: Types come from migrations: their answer is kept this long, then read anew (a type added while serving).
TYPES_CACHE_SECONDS = 60.0


@dataclass
class _TypesAnswer:
    body: bytes
    read_at: float


@router.get("/types/", response_model=list[PackageTypeRead], responses=UNAVAILABLE)
async def list_types(request: Request, resources: ResourcesDep) -> Response:
    """The parcel types, ordered by id."""
    # Kept on the app, not the module: each app has its own database.
    kept: _TypesAnswer | None = getattr(request.app.state, "types_answer", None)
    if kept is None or time.monotonic() - kept.read_at > TYPES_CACHE_SECONDS:
        async with resources.maker() as db:
            kept = _TypesAnswer(bodies.package_types(await service.list_types(db)), time.monotonic())
        request.app.state.types_answer = kept
    return Response(kept.body, media_type=JSON)


@router.get("/packages/", response_model=PackagePage, responses=UNAUTHENTICATED | UNAVAILABLE)
async def list_packages(
    db: DbSession,
    session_id: SessionId,
    type: Annotated[int | None, Query(ge=1, le=MAX_INT, description="only this type id")] = None,
    has_cost: Annotated[bool | None, Query(description="only with (true) or without (false) a cost")] = None,
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Response:
    """This session's packages, newest first, filtered and paginated."""
    rows, total = await service.list_packages(
        db, session_id, type_id=type, has_cost=has_cost, page=page, size=size
    )
    return Response(bodies.package_page(rows, total=total, page=page, size=size), media_type=JSON)


@router.post(
    "/packages/",
    status_code=202,
    responses=UNAUTHENTICATED
    | UNAVAILABLE
    | {202: {"headers": {"Location": {"description": "the status URL", "schema": {"type": "string"}}}}},
)
async def register_package(
    data: PackageCreate,
    db: DbSession,
    session_id: SessionId,
    resources: ResourcesDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(min_length=1, max_length=255, description="repeat it to get the same registration back"),
    ] = None,
) -> RegistrationAccepted:
    """Accept a package for registration; follow it at the `Location` status URL."""
    if not await resources.type_exists(db, data.type_id):
        raise InvalidField("type_id", f"type {data.type_id} does not exist; see GET /types/")
    status_id = await registration.accept_registration(
        resources.store,
        resources.publish,
        session_id=session_id,
        data=data,
        idempotency_key_value=idempotency_key,
        status_ttl=resources.settings.STATUS_TTL,
    )
    response.headers["Location"] = f"/packages/status/{status_id}/"
    return RegistrationAccepted(status_id=status_id)


@router.get(
    "/packages/status/{status_id}/",
    responses=UNAUTHENTICATED | STATUS_NOT_FOUND | UNAVAILABLE,
)
async def registration_status(
    status_id: uuid.UUID, session_id: SessionId, resources: ResourcesDep, db: DbSession
) -> RegistrationStatus:
    """Where a registration stands: pending, registered (with the package id) or failed."""
    record = await registration.get_status(resources.store, db, session_id, status_id)
    return RegistrationStatus.of(status_id, record)


@router.get(
    "/packages/{package_id}/",
    response_model=PackageRead,
    responses=UNAUTHENTICATED | PACKAGE_NOT_FOUND | UNAVAILABLE,
)
async def get_package(session_id: SessionId, package_id: PackageId, db: DbSession) -> Response:
    """One of this session's packages."""
    return Response(bodies.package(await service.read_package(db, session_id, package_id)), media_type=JSON)
