import re
import time
import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from sqlalchemy.ext.asyncio import AsyncConnection

from delivery import registration, service
from delivery.api import bodies
from delivery.api.deps import DbSession, PackageId, Resources, ResourcesDep, SessionId
from delivery.api.fastpath import fast_path
from delivery.api.responses import PACKAGE_NOT_FOUND, STATUS_NOT_FOUND, UNAUTHENTICATED, UNAVAILABLE
from delivery.api.routing import DecimalRoute, decimal_json
from delivery.db import utcnow
from delivery.errors import InvalidField
from delivery.schemas import (
    MAX_BIGINT,
    MAX_INT,
    PackageCreate,
    PackagePage,
    PackageRead,
    PackageTypeRead,
    RegistrationAccepted,
    RegistrationStatus,
)

# The reads answer bytes encoded once (`bodies`); `response_model` keeps documenting their shapes. The hot
# endpoints have a fast path (`delivery.api.fastpath`): the same service functions, before FastAPI's stack.
JSON = "application/json"

router = APIRouter(route_class=DecimalRoute, tags=["packages"])


def _cached_session(request: Request, resources: Resources) -> int | None:
    """The session of the request's cookie if the cache holds it (as `current_session` would find it)."""
    token = request.cookies.get("session_id")
    if not token:
        return None
    return resources.sessions.get(service.hash_token(token), utcnow())


#: What the fast path takes of a query: each parameter once, as `name=value` of plain characters.
_QUERY_PART = re.compile(rb"(type|has_cost|page|size)=([0-9a-z]{1,15})")
#: Integers as FastAPI reads them, in their plain spelling only (no sign, leading zero, space, underscore).
_PLAIN_INT = re.compile(rb"[1-9][0-9]{0,14}")
_BOOLS = {b"true": True, b"false": False}


def _plain_query(query: bytes) -> dict[bytes, bytes] | None:
    """The list's parameters, if each is given at most once, plainly; None for anything else."""
    params: dict[bytes, bytes] = {}
    if not query:
        return params
    for part in query.split(b"&"):
        match = _QUERY_PART.fullmatch(part)
        if match is None or match[1] in params:
            return None
        params[match[1]] = match[2]
    return params


def _plain_int(value: bytes | None, default: int | None, high: int) -> int | None:
    """`value` as an int within 1..`high`; `default` when absent; -1 when FastAPI must answer."""
    if value is None:
        return default
    if _PLAIN_INT.fullmatch(value) is None or (number := int(value)) > high:
        return -1
    return number


#: Types come from migrations: their answer is kept this long, then read anew (a type added while serving).
TYPES_CACHE_SECONDS = 60.0


@dataclass
class _TypesAnswer:
    body: bytes
    read_at: float


def _kept_types(request: Request) -> _TypesAnswer | None:
    # Kept on the app, not the module: each app has its own database.
    kept: _TypesAnswer | None = getattr(request.app.state, "types_answer", None)
    if kept is None or time.monotonic() - kept.read_at > TYPES_CACHE_SECONDS:
        return None
    return kept


@router.get("/types/", response_model=list[PackageTypeRead], responses=UNAVAILABLE)
async def list_types(request: Request, resources: ResourcesDep) -> Response:
    """The parcel types, ordered by id."""
    kept = _kept_types(request)
    if kept is None:
        async with resources.engine.connect() as conn:
            kept = _TypesAnswer(bodies.package_types(await service.list_types(conn)), time.monotonic())
        request.app.state.types_answer = kept
    return Response(kept.body, media_type=JSON)


@fast_path(list_types)
async def _fast_types(request: Request) -> Response | None:
    kept = _kept_types(request)
    return None if kept is None else Response(kept.body, media_type=JSON)


MAX_SIZE = 100
#: The largest page number the fast path reads itself (FastAPI's handler answers larger ones alike).
MAX_PAGE = 10**15


@router.get("/packages/", response_model=PackagePage, responses=UNAUTHENTICATED | UNAVAILABLE)
async def list_packages(
    db: DbSession,
    session_id: SessionId,
    resources: ResourcesDep,
    type: Annotated[int | None, Query(ge=1, le=MAX_INT, description="only this type id")] = None,
    has_cost: Annotated[bool | None, Query(description="only with (true) or without (false) a cost")] = None,
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=MAX_SIZE)] = 20,
) -> Response:
    """This session's packages, newest first, filtered and paginated."""
    conn = await db.connection()
    return await _package_page(conn, resources, session_id, type, has_cost, page, size)


async def _package_page(
    conn: AsyncConnection,
    resources: Resources,
    session_id: int,
    type_id: int | None,
    has_cost: bool | None,
    page: int,
    size: int,
) -> Response:
    rows, total = await service.list_packages(
        conn,
        session_id,
        type_id=type_id,
        has_cost=has_cost,
        page=page,
        size=size,
        block_maps=resources.block_maps,
    )
    return Response(bodies.package_page(rows, total=total, page=page, size=size), media_type=JSON)


@fast_path(list_packages)
async def _fast_list(request: Request) -> Response | None:
    resources: Resources = request.app.state.resources
    params = _plain_query(request.scope["query_string"])
    if params is None or (session_id := _cached_session(request, resources)) is None:
        return None
    type_id = _plain_int(params.get(b"type"), None, MAX_INT)
    page = _plain_int(params.get(b"page"), 1, MAX_PAGE)
    size = _plain_int(params.get(b"size"), 20, MAX_SIZE)
    raw_cost = params.get(b"has_cost")
    has_cost = None if raw_cost is None else _BOOLS.get(raw_cost)
    if type_id == -1 or page == -1 or size == -1 or (raw_cost is not None and has_cost is None):
        return None
    assert page is not None and size is not None
    async with resources.engine.connect() as conn:
        return await _package_page(conn, resources, session_id, type_id, has_cost, page, size)


MAX_KEY_LENGTH = 255


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
        Header(
            min_length=1, max_length=MAX_KEY_LENGTH, description="repeat it to get the same registration back"
        ),
    ] = None,
) -> RegistrationAccepted:
    """Accept a package for registration; follow it at the `Location` status URL."""
    if not await resources.type_exists(db, data.type_id):
        raise InvalidField("type_id", f"type {data.type_id} does not exist; see GET /types/")
    accepted = await _accept(resources, session_id, data, idempotency_key)
    response.headers["Location"] = status_url(accepted.status_id)
    return accepted


async def _accept(
    resources: Resources, session_id: int, data: PackageCreate, idempotency_key: str | None
) -> RegistrationAccepted:
    status_id = await registration.accept_registration(
        resources.store,
        resources.publish,
        session_id=session_id,
        data=data,
        idempotency_key=idempotency_key,
        status_ttl=resources.settings.STATUS_TTL,
    )
    return RegistrationAccepted(status_id=status_id)


def status_url(status_id: uuid.UUID) -> str:
    return f"/packages/status/{status_id}/"


#: The body the fast path parses itself; FastAPI's handler answers any other content type (or none).
_JSON_CONTENT = b"application/json"


@fast_path(register_package)
async def _fast_register(request: Request) -> Response | None:
    resources: Resources = request.app.state.resources
    if (session_id := _cached_session(request, resources)) is None:
        return None
    content_type = key = None
    for name, value in request.scope["headers"]:
        if name == b"content-type":
            content_type = value if content_type is None else b""
        elif name == b"idempotency-key":
            key = value if key is None else b""
    if content_type != _JSON_CONTENT or (key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH):
        return None
    try:
        data = PackageCreate.model_validate(decimal_json(await request.body()))
    except Exception:  # anything to refuse (or nested too deep to parse): FastAPI's handler answers it
        return None
    if not resources.type_known(data.type_id):
        return None  # unknown to this process yet, or read too long ago: the handler reads the types again
    accepted = await _accept(resources, session_id, data, None if key is None else key.decode("latin-1"))
    response = Response(accepted.model_dump_json().encode(), status_code=202, media_type=JSON)
    response.headers["location"] = status_url(accepted.status_id)
    return response


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
    return await _package(await db.connection(), session_id, package_id)


async def _package(conn: AsyncConnection, session_id: int, package_id: int) -> Response:
    return Response(bodies.package(await service.read_package(conn, session_id, package_id)), media_type=JSON)


@fast_path(get_package)
async def _fast_package(request: Request) -> Response | None:
    resources: Resources = request.app.state.resources
    raw_id = request.path_params["package_id"].encode()
    if _plain_int(raw_id, None, MAX_BIGINT) in (None, -1):
        return None
    if (session_id := _cached_session(request, resources)) is None:
        return None
    async with resources.engine.connect() as conn:
        return await _package(conn, session_id, int(raw_id))
