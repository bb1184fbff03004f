"""Shared dependencies: the app's resources, a database session, the client's session, the operator."""

import asyncio
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated

import anyio.to_thread
from celery import Celery
from fastapi import Cookie, Depends, Header, Path, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from delivery import service
from delivery.api.errors import AdminForbidden, AdminUnauthenticated
from delivery.config import Settings
from delivery.errors import Unauthenticated
from delivery.schemas import MAX_BIGINT
from delivery.service import RegistrationJob
from delivery.store import Store
from delivery.worker import REGISTER_TASK


@dataclass
class Resources:
    """What the API holds for its lifetime, made in `lifespan`, never at import."""

    settings: Settings
    engine: AsyncEngine
    maker: async_sessionmaker[AsyncSession]
    store: Store
    celery: Celery
    type_ids: frozenset[int] = field(default_factory=frozenset)
    type_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def type_exists(self, db: AsyncSession, type_id: int) -> bool:
        """Types come from migrations: the ids are kept, and re-read on a miss in case one was added."""
        if type_id not in self.type_ids:
            async with self.type_lock:
                self.type_ids = await service.type_ids(db)
        return type_id in self.type_ids

    async def publish(self, job: RegistrationJob) -> None:
        send = partial(
            self.celery.send_task, REGISTER_TASK, args=[job.to_json()], task_id=job.registration_id
        )
        await anyio.to_thread.run_sync(send)


def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_db(resources: ResourcesDep) -> AsyncIterator[AsyncSession]:
    async with resources.maker() as db:
        yield db


DbSession = Annotated[AsyncSession, Depends(get_db)]


async def current_session(
    db: DbSession,
    session_id: Annotated[str | None, Cookie(description="the token set by GET /sessions/new/")] = None,
) -> int:
    if not session_id:
        raise Unauthenticated
    sid = await service.authenticate(db, session_id)
    if sid is None:
        raise Unauthenticated
    return sid


SessionId = Annotated[int, Depends(current_session)]

PackageId = Annotated[int, Path(ge=1, le=MAX_BIGINT, description="a package id")]


async def require_admin(
    resources: ResourcesDep,
    x_admin_token: Annotated[str | None, Header(description="equal to ADMIN_TOKEN")] = None,
) -> None:
    expected = resources.settings.ADMIN_TOKEN
    if expected is None:
        raise AdminForbidden("operator endpoints are disabled: ADMIN_TOKEN is not configured")
    if x_admin_token is None:
        raise AdminUnauthenticated
    if not hmac.compare_digest(x_admin_token.encode(), expected.get_secret_value().encode()):
        raise AdminForbidden("wrong X-Admin-Token")
