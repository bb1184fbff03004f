"""The API's service functions: sessions, the read side, and accepting registrations."""

import functools
import hashlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import cachetools
from sqlalchemy import Integer, Select, bindparam, false, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from delivery import metrics
from delivery.db import utcnow
from delivery.errors import NotFound, ServiceUnavailable, TransportCompanyConflict
from delivery.models import ClientSession, DailyCostTotal, Package, PackageCount, PackageType
from delivery.schemas import MAX_BIGINT, PackageCreate, RegistrationState
from delivery.store import Store, delete_unindexed, set_indexed

logger = logging.getLogger(__name__)

TOKEN_BYTES = 32  # 256 bits
SESSION_CACHE_SECONDS = 5.0
SESSION_CACHE_SIZE = 10_000


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


class SessionCache:
    """Live sessions seen lately, token hash -> (session id, expiry), each kept `ttl` seconds, at most `size`.

    Every request of a customer otherwise costs a query for its session. A session still ends at its expiry:
    the cached expiry is checked on each hit. What the cache cannot see is a session changed in the database
    (an operator cutting it short): that takes effect within `ttl` seconds. Unknown tokens are not kept.
    """

    def __init__(self, *, ttl: float = SESSION_CACHE_SECONDS, size: int = SESSION_CACHE_SIZE) -> None:
        # Full: the least recently used entry goes first.
        self._entries: cachetools.TTLCache[str, tuple[int, datetime]] = cachetools.TTLCache(size, ttl)

    def get(self, token_hash: str, now: datetime) -> int | None:
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        session_id, expires_at = entry
        if now >= expires_at:
            self._entries.pop(token_hash, None)
            return None
        return session_id

    def put(self, token_hash: str, session_id: int, expires_at: datetime) -> None:
        self._entries[token_hash] = (session_id, expires_at)


# Built once: building a statement costs more CPU than running it through the compiled cache.
_LIVE_SESSION = select(ClientSession.id, ClientSession.expires_at).where(
    ClientSession.token_hash == bindparam("token_hash"), ClientSession.expires_at > bindparam("now")
)


async def authenticate(db: AsyncSession, token: str, *, cache: SessionCache | None = None) -> int | None:
    """The id of the live session holding `token`, or None."""
    token_hash = hash_token(token)
    now = utcnow()
    if cache is not None and (session_id := cache.get(token_hash, now)) is not None:
        return session_id
    row = (await db.execute(_LIVE_SESSION, {"token_hash": token_hash, "now": now})).one_or_none()
    if row is None:
        return None
    if cache is not None:
        cache.put(token_hash, row.id, row.expires_at)
    return int(row.id)


async def list_types(db: AsyncSession) -> Sequence[PackageType]:
    return (await db.scalars(select(PackageType).order_by(PackageType.id))).all()


@functools.cache
def _page_statements(by_type: bool, by_cost: bool) -> tuple[Select[Any], Select[Any]]:
    """A page with its total, and the total alone, for one combination of filters; values are bound."""
    where = [Package.session_id == bindparam("session_id")]
    counted = [PackageCount.session_id == bindparam("session_id")]
    if by_type:
        where.append(Package.type_id == bindparam("type_id"))
        counted.append(PackageCount.type_id == bindparam("type_id"))
    if by_cost:
        where.append(Package.has_cost == bindparam("has_cost"))
        counted.append(PackageCount.has_cost == bindparam("has_cost"))
    # The total from the kept counts: at most six rows, however many packages the session has.
    count = select(func.coalesce(func.sum(PackageCount.packages), 0)).where(*counted)
    # A deferred join: the page's ids come from the index alone, however deep the page; only those rows
    # are read whole.
    page_ids = (
        select(Package.id)
        .where(*where)
        .order_by(Package.id.desc())
        .limit(bindparam("size", type_=Integer))
        .offset(bindparam("skip", type_=Integer))
    ).subquery()
    page = (
        select(Package, count.scalar_subquery())
        .join(page_ids, page_ids.c.id == Package.id)
        .options(joinedload(Package.type))
        .order_by(Package.id.desc())
    )
    return page, count


async def list_packages(
    db: AsyncSession,
    session_id: int,
    *,
    type_id: int | None = None,
    has_cost: bool | None = None,
    page: int = 1,
    size: int = 20,
) -> tuple[Sequence[Package], int]:
    """One page, newest first, and the total, in one statement (types joined); a page past the end costs
    one more for the total."""
    stmt, count = _page_statements(type_id is not None, has_cost is not None)
    params = {
        "session_id": session_id,
        "type_id": type_id,
        "has_cost": has_cost,
        "size": size,
        # A page number past any real list asks for an offset the database cannot hold: clamp it.
        "skip": min((page - 1) * size, MAX_BIGINT),
    }
    rows = (await db.execute(stmt, params)).all()
    if not rows:
        return [], int((await db.execute(count, params)).scalar_one())
    return [package for package, _ in rows], int(rows[0][1])


_PACKAGE = select(Package).options(joinedload(Package.type)).where(Package.id == bindparam("package_id"))
_OWN_PACKAGE = _PACKAGE.where(Package.session_id == bindparam("session_id"))


async def get_package(db: AsyncSession, session_id: int | None, package_id: int) -> Package:
    """A package, if `session_id` owns it (None: any session's, for operators)."""
    stmt = _PACKAGE if session_id is None else _OWN_PACKAGE
    params = {"package_id": package_id, "session_id": session_id}
    package = (await db.scalars(stmt, params)).one_or_none()
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


#: The namespace of registration ids derived from an Idempotency-Key (a fixed, random UUID).
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c7f0e-2b8a-4d59-9a43-1f4e8c2d7b90")


def keyed_registration_id(session_id: int, idempotency_key: str, data: PackageCreate) -> uuid.UUID:
    """The registration id of a session's Idempotency-Key with this parcel, the same on every retry.

    The store remembers a key for STATUS_TTL, but may forget it sooner (a Redis restart without persistence;
    a 503 whose job reached the queue after all). A retry then publishes the same registration id again, and
    the package's unique registration id still makes it one package. The parcel is part of the name: a key
    used again, once the store forgot it, for another parcel is another registration, never the old package.
    """
    parcel = data.model_dump_json()
    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{session_id}\n{idempotency_key}\n{parcel}")


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
    status_id = (
        uuid.uuid4() if idempotency_key is None else keyed_registration_id(session_id, idempotency_key, data)
    )
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
    await set_indexed(
        store,
        status_key(status_id),
        pending.dumps(),
        ttl=status_ttl,
        index=PENDING_INDEX,
        member=str(status_id),
        score=job.accepted_at,
    )
    try:
        await publish(job)
    except Exception as exc:
        logger.warning("registration not published status_id=%s error=%r", status_id, exc)
        await delete_unindexed(store, status_key(status_id), index=PENDING_INDEX, member=str(status_id))
        if idem_key is not None:
            await store.delete(idem_key, if_value=str(status_id))
        raise ServiceUnavailable("broker") from exc
    metrics.REGISTRATIONS_ACCEPTED.inc()
    logger.info("registration accepted status_id=%s session_id=%s", status_id, session_id)
    return status_id


async def get_status(store: Store, db: AsyncSession, session_id: int, status_id: uuid.UUID) -> StatusRecord:
    """The status record; if the store no longer has it, the package made for it, if there is one.

    The store is the fast path and the only record of pending and failed registrations; the package's
    unique registration id is the lasting record of a registered one (the store may lose its keys).
    """
    raw = await store.get(status_key(status_id))
    record = None if raw is None else StatusRecord.loads(raw)
    if record is None:
        package_id = await db.scalar(
            select(Package.id).where(Package.registration_id == status_id, Package.session_id == session_id)
        )
        if package_id is not None:
            return StatusRecord(session_id, "registered", package_id=package_id)
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
        # The session keeps the package a pass before loaded (commits expire nothing here): read the row anew,
        # or a stale copy answers the wrong company, or loops for ever on a package another company took.
        db.expire_all()
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
