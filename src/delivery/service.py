"""The API's service functions: sessions, the read side, and accepting registrations."""

import hashlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import false, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from delivery import metrics
from delivery.db import utcnow
from delivery.errors import NotFound, ServiceUnavailable, TransportCompanyConflict
from delivery.models import ClientSession, DailyCostTotal, Package, PackageType
from delivery.schemas import PackageCreate, RegistrationState
from delivery.store import Store

logger = logging.getLogger(__name__)

TOKEN_BYTES = 32  # 256 bits


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_session(db: AsyncSession, *, ttl: int) -> str:
    """Open a session; only the token's hash is stored, the token goes to the client."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    now = utcnow()
    db.add(
        ClientSession(token_hash=hash_token(token), created_at=now, expires_at=now + timedelta(seconds=ttl))
    )
    await db.commit()
    return token


async def authenticate(db: AsyncSession, token: str) -> int | None:
    """The id of the live session holding `token`, or None."""
    stmt = select(ClientSession.id).where(
        ClientSession.token_hash == hash_token(token), ClientSession.expires_at > utcnow()
    )
    return (await db.execute(stmt)).scalar_one_or_none()


async def list_types(db: AsyncSession) -> Sequence[PackageType]:
    return (await db.scalars(select(PackageType).order_by(PackageType.id))).all()


async def list_packages(
    db: AsyncSession,
    session_id: int,
    *,
    type_id: int | None = None,
    has_cost: bool | None = None,
    page: int = 1,
    size: int = 20,
) -> tuple[Sequence[Package], int]:
    """One page, newest first, and the total: one query for the page (types joined) and one count."""
    where = [Package.session_id == session_id]
    if type_id is not None:
        where.append(Package.type_id == type_id)
    if has_cost is not None:
        where.append(Package.has_cost == has_cost)
    total = (await db.execute(select(func.count()).select_from(Package).where(*where))).scalar_one()
    if total <= (page - 1) * size:
        return [], total
    # A deferred join: the page's ids come from the index alone, however deep the page; only those rows
    # are read whole. Still one statement.
    page_ids = (
        select(Package.id).where(*where).order_by(Package.id.desc()).limit(size).offset((page - 1) * size)
    ).subquery()
    stmt = (
        select(Package)
        .join(page_ids, page_ids.c.id == Package.id)
        .options(joinedload(Package.type))
        .order_by(Package.id.desc())
    )
    return (await db.scalars(stmt)).all(), total


async def get_package(db: AsyncSession, session_id: int | None, package_id: int) -> Package:
    """A package, if `session_id` owns it (None: any session's, for operators)."""
    stmt = select(Package).options(joinedload(Package.type)).where(Package.id == package_id)
    if session_id is not None:
        stmt = stmt.where(Package.session_id == session_id)
    package = (await db.scalars(stmt)).one_or_none()
    if package is None:
        raise NotFound("package")
    return package


# --- registration: the status record, the job, and accepting a registration ---


@dataclass(frozen=True, slots=True)
class StatusRecord:
    session_id: int
    state: RegistrationState
    package_id: int | None = None
    error_message: str | None = None
    #: While pending, the job itself, so a job lost on its way can be published again.
    job: dict[str, Any] | None = None

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, raw: str) -> "StatusRecord":
        return cls(**json.loads(raw))


def status_key(status_id: uuid.UUID | str) -> str:
    return f"status:{status_id}"


#: The registrations still pending, scored by when they were last published.
PENDING_INDEX = "registrations:pending"


@dataclass(frozen=True, slots=True)
class RegistrationJob:
    """What the registration job carries through the broker: plain JSON, money as strings."""

    registration_id: str
    session_id: int
    name: str
    weight_kg: str
    type_id: int
    content_value_usd: str
    accepted_at: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RegistrationJob":
        return cls(**data)

    @property
    def weight(self) -> Decimal:
        return Decimal(self.weight_kg)

    @property
    def value(self) -> Decimal:
        return Decimal(self.content_value_usd)


Publisher = Callable[[RegistrationJob], Awaitable[None]]


async def type_ids(db: AsyncSession) -> frozenset[int]:
    return frozenset((await db.scalars(select(PackageType.id))).all())


async def accept_registration(
    store: Store,
    publish: Publisher,
    *,
    session_id: int,
    data: PackageCreate,
    idempotency_key: str | None,
    status_ttl: int,
) -> uuid.UUID:
    """Store a pending status and publish the job; undo the status if the broker refuses."""
    status_id = uuid.uuid4()
    idem_key = None
    if idempotency_key is not None:
        idem_key = f"idem:{session_id}:{hash_token(idempotency_key)}"
        if not await store.add(idem_key, str(status_id), ttl=status_ttl):
            existing = await store.get(idem_key)
            if existing is not None:
                return uuid.UUID(existing)
            await store.set(idem_key, str(status_id), ttl=status_ttl)
    job = RegistrationJob(
        registration_id=str(status_id),
        session_id=session_id,
        name=data.name,
        weight_kg=str(data.weight_kg),
        type_id=data.type_id,
        content_value_usd=str(data.content_value_usd),
        accepted_at=time.time(),
    )
    pending = StatusRecord(session_id, "pending", job=job.to_json())
    await store.set(status_key(status_id), pending.dumps(), ttl=status_ttl)
    await store.index_add(PENDING_INDEX, str(status_id), job.accepted_at)
    try:
        await publish(job)
    except Exception as exc:
        logger.warning("registration not published status_id=%s error=%r", status_id, exc)
        await store.delete(status_key(status_id))
        await store.index_remove(PENDING_INDEX, str(status_id))
        if idem_key is not None:
            await store.delete(idem_key, if_value=str(status_id))
        raise ServiceUnavailable("broker") from exc
    metrics.REGISTRATIONS_ACCEPTED.inc()
    logger.info("registration accepted status_id=%s session_id=%s", status_id, session_id)
    return status_id


async def get_status(store: Store, session_id: int, status_id: uuid.UUID) -> StatusRecord:
    raw = await store.get(status_key(status_id))
    record = None if raw is None else StatusRecord.loads(raw)
    if record is None or record.session_id != session_id:
        raise NotFound("registration status")
    return record


# --- operators ---


async def bind_transport_company(db: AsyncSession, package_id: int, company_id: int) -> Package:
    """The first company wins: one conditional UPDATE decides, whatever the concurrency."""
    while True:
        result = await db.execute(
            update(Package)
            .where(Package.id == package_id, Package.transport_company_id.is_(None))
            .values(transport_company_id=company_id)
            .execution_options(synchronize_session=False)
        )
        await db.commit()
        package = await get_package(db, None, package_id)
        if result.rowcount == 1 or package.transport_company_id == company_id:  # type: ignore[attr-defined]
            return package
        if package.transport_company_id is not None:
            raise TransportCompanyConflict(package.transport_company_id)
        # The package was created after the UPDATE looked for it: it exists now, so the next UPDATE decides.


async def daily_costs(db: AsyncSession, day: date) -> list[tuple[PackageType, int, Decimal]]:
    """Per type, the packages priced on `day` (UTC) and the sum of their costs, from the running totals."""
    stmt = (
        select(PackageType, DailyCostTotal.packages, DailyCostTotal.total_cost_rub)
        .outerjoin(DailyCostTotal, (DailyCostTotal.type_id == PackageType.id) & (DailyCostTotal.day == day))
        .order_by(PackageType.id)
    )
    return [
        (ptype, count or 0, total or Decimal("0.00"))
        for ptype, count, total in (await db.execute(stmt)).all()
    ]


async def count_awaiting_cost(db: AsyncSession) -> int:
    return (
        await db.execute(select(func.count()).select_from(Package).where(Package.has_cost == false()))
    ).scalar_one()
