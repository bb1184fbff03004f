"""Shared dependencies: the app's resources, a database session, the client's session, the operator."""

import asyncio
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

import anyio.to_thread
import sqlalchemy.exc
from celery import Celery
from fastapi import Cookie, Depends, Header, Path, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from delivery import operators, service
from delivery.api import ratelimits
from delivery.api.errors import AdminForbidden, AdminUnauthenticated
from delivery.broker import AmqpPublisher, publish_registration
from delivery.config import Settings
from delivery.errors import NotFound, Unauthenticated
from delivery.ratelimit import Limiter
from delivery.registration import RegistrationJob
from delivery.schemas import MAX_BIGINT
from delivery.store import Store

logger = logging.getLogger(__name__)

#: What a lost connection to the database raises.
DB_GONE = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)
#: Seconds the type ids read from the database are taken as they are, before a registration reads them again.
TYPE_IDS_TTL = 5.0


@dataclass
class Resources:
    """What the API holds for its lifetime, made in `lifespan`, never at import."""

    settings: Settings
    engine: AsyncEngine
    maker: async_sessionmaker[AsyncSession]
    store: Store
    celery: Celery
    #: On RabbitMQ, the API's own publisher; None on the embedded broker, published through Celery's producer.
    publisher: AmqpPublisher | None = None
    #: What a registration's type is checked on: read at the first registration, and again on an id not
    #: among them or once `type_ids_ttl` seconds have passed since (`type_ids_read_at`, monotonic).
    type_ids: frozenset[int] = field(default_factory=frozenset)
    type_ids_read_at: float = -math.inf
    type_ids_ttl: float = TYPE_IDS_TTL
    #: Read at start, for the OpenAPI document's list of type ids.
    documented_type_ids: frozenset[int] = field(default_factory=frozenset)
    type_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sessions: service.SessionCache = field(default_factory=service.SessionCache)
    #: Where the blocks of lists read deep lately start (hints, checked by each page's statement).
    block_maps: service.BlockMaps = field(default_factory=service.BlockMaps)
    #: The rate limits; None when they are off (`RATE_LIMIT_ENABLED=false`).
    limiter: Limiter | None = None

    def type_known(self, type_id: int) -> bool:
        """Whether `type_id` is among the type ids read within the last `type_ids_ttl` seconds (no I/O)."""
        return type_id in self.type_ids and time.monotonic() - self.type_ids_read_at < self.type_ids_ttl

    async def type_exists(self, db: AsyncSession, type_id: int) -> bool:
        """Whether the type exists, as read within the last `type_ids_ttl` seconds: a type removed while
        the API runs is refused within that time, before anything is stored or queued (its job could only
        fail). A database away when they are due is no reason to refuse a type read before: those are kept
        for another period, and a type not among them is the database's 503."""
        if self.type_known(type_id):
            return True
        async with self.type_lock:
            if self.type_known(type_id):
                return True  # read meanwhile by another request
            try:
                self.type_ids = await service.type_ids(db)
            except DB_GONE as exc:
                if type_id not in self.type_ids:
                    raise
                logger.warning("parcel types not read again, the last read ones kept error=%r", exc)
            self.type_ids_read_at = time.monotonic()
        return type_id in self.type_ids

    async def publish(self, job: RegistrationJob) -> None:
        if self.publisher is not None:
            await self.publisher.publish(job)
        else:
            await anyio.to_thread.run_sync(publish_registration, self.celery, job)


async def get_resources(request: Request) -> Resources:
    # async: FastAPI runs a plain `def` dependency in the thread pool, a hand-off dearer than the work.
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_db(resources: ResourcesDep) -> AsyncIterator[AsyncSession]:
    db = resources.maker()
    try:
        yield db
    finally:
        # Closing runs after the answer went out: a connection that died meanwhile (the database restarted)
        # must not turn into an error there. The pool drops that connection; the answer stands.
        try:
            await db.close()
        except DB_GONE as exc:
            logger.warning("database connection lost when closing a session error=%r", exc)


DbSession = Annotated[AsyncSession, Depends(get_db)]


async def current_session(
    db: DbSession,
    resources: ResourcesDep,
    session_id: Annotated[str | None, Cookie(description="the token set by GET /sessions/new/")] = None,
) -> int:
    if not session_id:
        raise Unauthenticated
    sid = await service.authenticate(db, session_id, cache=resources.sessions)
    if sid is None:
        raise Unauthenticated
    return sid


SessionId = Annotated[int, Depends(current_session)]


class SessionLimit(ratelimits.RouteLimit):
    """A rate limit per session, as a route's dependency: `dependencies=[Depends(SessionLimit("reads"))]`."""

    async def __call__(self, request: Request, session_id: SessionId) -> None:
        await ratelimits.count(request, self.rule, str(session_id))


class AddressLimit(ratelimits.RouteLimit):
    """A rate limit per client address, as a route's dependency."""

    per_session = False

    async def __call__(self, request: Request) -> None:
        await ratelimits.count(request, self.rule, ratelimits.client_address(request.scope))


def database_id(what: str, name: str) -> Callable[[int], Awaitable[int]]:
    """The path parameter `name`, a row's id: not an integer → 422; an integer no row can have → 404.

    Ids run from 1 to the largest BIGINT: 0, a negative or a larger number names nothing, as an unknown id
    does, rather than being invalid input (nor a number sent to the database to overflow its column).
    """

    async def valid_id(value: Annotated[int, Path(alias=name, description=f"a {what} id")]) -> int:
        if not 1 <= value <= MAX_BIGINT:
            raise NotFound(what)
        return value

    return valid_id


PackageId = Annotated[int, Depends(database_id("package", "package_id"))]


#: The 403 of operator endpoints that no key can open.
NONE_CONFIGURED = "operator endpoints are disabled: not configured (no operator, and ADMIN_TOKEN is not set)"


async def require_admin(
    request: Request,
    resources: ResourcesDep,
    db: DbSession,
    x_admin_token: Annotated[
        str | None, Header(description="an operator's key (`delivery operators add`), or ADMIN_TOKEN")
    ] = None,
) -> str:
    """The operator whose key the request carries: ADMIN_TOKEN's `admin` (no database read), or the named
    operator found by the key's hash (one indexed read). A wrong key counts against the client address."""
    admin_token = resources.settings.ADMIN_TOKEN
    if x_admin_token is None:
        if admin_token is None and not await operators.any_active(db):
            raise AdminForbidden(NONE_CONFIGURED)
        raise AdminUnauthenticated
    name: str | None = None
    if admin_token is not None and hmac.compare_digest(
        x_admin_token.encode(), admin_token.get_secret_value().encode()
    ):
        name = operators.ADMIN
    elif x_admin_token:
        name = await operators.by_key(db, x_admin_token)
    if name is None and admin_token is None and not await operators.any_active(db):
        raise AdminForbidden(NONE_CONFIGURED)
    await ratelimits.check_operator_key(request, right=name is not None)
    if name is None:
        raise AdminForbidden("wrong X-Admin-Token")
    return name


#: The operator of the request, for a route that records what they do.
OperatorName = Annotated[str, Depends(require_admin)]
