"""Plain helpers that make test data: sessions through the API or the database, packages in the database."""

import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from delivery import operators
from delivery.api import create_app
from delivery.config import Settings
from delivery.db import utcnow
from delivery.models import AuditEntry, ClientSession, Package
from delivery.service import hash_token

COOKIE = "session_id"

Maker = async_sessionmaker[AsyncSession]


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """Like the `client` fixture, for an app built from other settings: lifespan run, `http.app` set."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            http.app = app  # type: ignore[attr-defined]
            yield http


def _maker(client: httpx.AsyncClient) -> Maker:
    maker: Maker = client.app.state.resources.maker  # type: ignore[attr-defined]
    return maker


async def open_session(client: httpx.AsyncClient) -> int:
    """Open a session through the API (the client now holds its cookie); the session row's id."""
    response = await client.get("/sessions/new/")
    assert response.status_code == 204, response.text
    token = response.cookies[COOKIE]
    async with _maker(client)() as db:
        session_id: int | None = await db.scalar(
            select(ClientSession.id).where(ClientSession.token_hash == hash_token(token))
        )
    assert session_id is not None, "the session's token hash is not in the sessions table"
    return session_id


async def add_session(
    maker: Maker, *, ttl: int = 3600, expires_at: datetime | None = None
) -> tuple[int, str]:
    """A session made directly in the database: (its id, its token)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    row = ClientSession(
        token_hash=hash_token(token),
        created_at=now,
        expires_at=expires_at if expires_at is not None else now + timedelta(seconds=ttl),
    )
    async with maker() as db:
        db.add(row)
        await db.commit()
    session_id: int = row.id
    return session_id, token


def use_session(client: httpx.AsyncClient, token: str | None) -> None:
    """Make the client send this session token from now on (None: no cookie at all)."""
    client.cookies.clear()
    if token is not None:
        client.cookies.set(COOKIE, token)


def _package(
    *,
    session_id: int,
    type_id: int,
    name: str,
    weight_kg: Decimal,
    content_value_usd: Decimal,
    delivery_cost_rub: Decimal | None,
    transport_company_id: int | None,
    created_at: datetime | None,
) -> Package:
    priced = delivery_cost_rub is not None
    return Package(
        registration_id=uuid.uuid4(),
        session_id=session_id,
        type_id=type_id,
        name=name,
        weight_kg=weight_kg,
        content_value_usd=content_value_usd,
        delivery_cost_rub=delivery_cost_rub,
        usd_rub_rate=Decimal("95.12340000") if priced else None,
        rate_date=date(2024, 1, 2) if priced else None,
        transport_company_id=transport_company_id,
        created_at=created_at if created_at is not None else utcnow(),
    )


async def add_package(
    maker: Maker,
    *,
    session_id: int,
    type_id: int = 1,
    name: str = "Winter jacket",
    weight_kg: Decimal = Decimal("1.25"),
    content_value_usd: Decimal = Decimal("120"),
    delivery_cost_rub: Decimal | None = None,
    transport_company_id: int | None = None,
    created_at: datetime | None = None,
) -> int:
    """Insert one package row (as the registration job would) and return its id."""
    package = _package(
        session_id=session_id,
        type_id=type_id,
        name=name,
        weight_kg=weight_kg,
        content_value_usd=content_value_usd,
        delivery_cost_rub=delivery_cost_rub,
        transport_company_id=transport_company_id,
        created_at=created_at,
    )
    async with maker() as db:
        db.add(package)
        await db.commit()
    package_id: int = package.id
    return package_id


async def add_packages(
    maker: Maker,
    *,
    session_id: int,
    count: int,
    type_id: int = 1,
    name: str = "Parcel",
    weight_kg: Decimal = Decimal("1.25"),
    content_value_usd: Decimal = Decimal("120"),
    delivery_cost_rub: Decimal | None = None,
) -> list[int]:
    """Insert `count` packages named "<name> 0", "<name> 1", ... one after another; their ids, ascending."""
    ids: list[int] = []
    async with maker() as db:
        for index in range(count):
            package = _package(
                session_id=session_id,
                type_id=type_id,
                name=f"{name} {index}",
                weight_kg=weight_kg,
                content_value_usd=content_value_usd,
                delivery_cost_rub=delivery_cost_rub,
                transport_company_id=None,
                created_at=None,
            )
            db.add(package)
            await db.flush()
            ids.append(package.id)
        await db.commit()
    return ids


async def add_unpriced_packages(
    maker: Maker, session_id: int, specs: Sequence[tuple[int, str, str]]
) -> list[int]:
    """Insert packages without a cost, as a bank outage leaves them: (type_id, weight_kg, content_value_usd)
    each; their ids, in order."""
    now = datetime.now(UTC)
    rows = [
        Package(
            registration_id=uuid.uuid4(),
            session_id=session_id,
            type_id=type_id,
            name=f"parcel {i}",
            weight_kg=Decimal(weight),
            content_value_usd=Decimal(value),
            created_at=now,
        )
        for i, (type_id, weight, value) in enumerate(specs)
    ]
    async with maker() as db:
        db.add_all(rows)
        await db.commit()
        return [row.id for row in rows]


async def add_operator(maker: Maker, name: str) -> str:
    """A named operator made as `delivery operators add` makes one; their key."""
    async with maker() as db:
        _, key = await operators.add(db, name)
    return key


async def audit_entries(maker: Maker) -> list[AuditEntry]:
    """The audit trail, oldest first."""
    async with maker() as db:
        return list((await db.scalars(select(AuditEntry).order_by(AuditEntry.id))).all())
