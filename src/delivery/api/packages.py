import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response

from delivery import registration, service
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


@router.get("/types/", response_model=list[PackageTypeRead], responses=UNAVAILABLE)
async def list_types(db: DbSession) -> Any:
    """The parcel types, ordered by id."""
    return await service.list_types(db)


@router.get("/packages/", responses=UNAUTHENTICATED | UNAVAILABLE)
async def list_packages(
    db: DbSession,
    session_id: SessionId,
    type: Annotated[int | None, Query(ge=1, le=MAX_INT, description="only this type id")] = None,
    has_cost: Annotated[bool | None, Query(description="only with (true) or without (false) a cost")] = None,
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=100)] = 20,
) -> PackagePage:
    """This session's packages, newest first, filtered and paginated."""
    items, total = await service.list_packages(
        db, session_id, type_id=type, has_cost=has_cost, page=page, size=size
    )
    return PackagePage.build(
        [PackageRead.model_validate(item) for item in items], total=total, page=page, size=size
    )


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
async def get_package(session_id: SessionId, package_id: PackageId, db: DbSession) -> Any:
    """One of this session's packages."""
    return await service.get_package(db, session_id, package_id)
