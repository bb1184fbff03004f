"""The API's service functions: sessions, the read side, and the operators' actions.

Accepting a registration and reading its status live in `delivery.registration`."""

import bisect
import collections
import functools
import hashlib
import logging
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import cachetools
from sqlalchemy import Integer, Row, Select, bindparam, false, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import joinedload

from delivery import deadletters
from delivery.db import utcnow
from delivery.errors import NotFound, TransportCompanyConflict
from delivery.jobs import LAST_PRICING_KEY, PricingRun
from delivery.models import (
    BLOCK_BITS,
    ClientSession,
    CostCalculation,
    DailyCostTotal,
    Package,
    PackageBlock,
    PackageCount,
    PackageType,
)
from delivery.registration import PENDING_INDEX
from delivery.schemas import MAX_BIGINT, Backlog, PricingRunRead
from delivery.store import Store

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


#: A row of any columns (read by name).
AnyRow = Row[*tuple[Any, ...]]

_TYPES = select(PackageType.id, PackageType.name).order_by(PackageType.id)


async def list_types(conn: AsyncConnection) -> Sequence[AnyRow]:
    """The types as rows of `id`, `name`, ordered by id."""
    return (await conn.execute(_TYPES)).all()


#: A package as the reads answer it: its columns and its type's, no ORM object (building one per row, with
#: its identity map entry and relationship, cost more than the rest of the read).
PACKAGE_COLUMNS = (
    Package.id,
    Package.name,
    Package.weight_kg,
    Package.content_value_usd,
    Package.delivery_cost_rub,
    Package.transport_company_id,
    Package.created_at,
    PackageType.id.label("type_id"),
    PackageType.name.label("type_name"),
)


def _filters(table: type[Package | PackageCount | PackageBlock], by_type: bool, by_cost: bool) -> list[Any]:
    """A list's conditions on `table` (the packages, or their kept counts): its session, and the filters
    given (their values bound as `type_id`, `has_cost`)."""
    where = [table.session_id == bindparam("session_id")]
    if by_type:
        where.append(table.type_id == bindparam("type_id"))
    if by_cost:
        where.append(table.has_cost == bindparam("has_cost"))
    return where


@functools.cache
def _page_statements(by_type: bool, by_cost: bool) -> tuple[Select[Any], Select[Any]]:
    """A page with its total, and the total alone, for one combination of filters; values are bound."""
    where = _filters(Package, by_type, by_cost)
    counted = _filters(PackageCount, by_type, by_cost)
    # The total from the kept counts: at most six rows, however many packages the session has.
    count = select(func.coalesce(func.sum(PackageCount.packages), 0)).where(*counted)
    return _page(where, "skip", count.scalar_subquery().label("total")), count


def _page(where: list[Any], skip: str, *extra: Any) -> Select[Any]:
    """The page's rows, newest first, with `extra` columns: a deferred join, the page's ids come from the
    index alone (past `skip` of them), however deep the page; only those rows are read whole."""
    page_ids = (
        select(Package.id)
        .where(*where)
        .order_by(Package.id.desc())
        .limit(bindparam("size", type_=Integer))
        .offset(bindparam(skip, type_=Integer))
    ).subquery()
    return (
        select(*PACKAGE_COLUMNS, *extra)
        .join(page_ids, page_ids.c.id == Package.id)
        .join(PackageType, PackageType.id == Package.type_id)
        .order_by(Package.id.desc())
    )


#: From this many packages before a page on, its start is found from `package_blocks`.
DEEP_SKIP = 1_000
#: A deep page whose session's packages changed since its map was read is read again, at most this many
#: times; then by OFFSET alone.
DEEP_TRIES = 3
#: Block maps kept by `BlockMaps` (one per session and combination of filters read deep lately).
BLOCK_MAPS_SIZE = 1_024
#: Places a block map learns from the pages it served, at most (then the oldest learned goes first).
LEARNED_PLACES = 256

#: A list's key in `BlockMaps`: session id, type id, has cost (None: not filtered).
ListKey = tuple[int, int | None, bool | None]


@dataclass(slots=True)
class BlockMap:
    """Places in a list, as of its session's `package_changes` being `changes`: at `aboves[i]`, exactly
    that many of the list's packages have an id of `uppers[i]` or more, so the page past `skip` packages
    is the one past `skip - aboves[i]` of the ids below `uppers[i]`. The places are where its blocks start
    (from `package_blocks`), and the first and the end of the pages served from it (so a page read again,
    or the next one, walks no package before its own)."""

    aboves: list[int]
    uppers: list[int]
    total: int
    changes: int | None
    learned: collections.deque[int] = field(default_factory=collections.deque)

    @classmethod
    def of(cls, rows: Sequence[AnyRow]) -> "BlockMap":
        """From the list's blocks, newest first."""
        aboves, uppers, above = [], [], 0
        for row in rows:
            if packages := int(row.packages):
                aboves.append(above)
                uppers.append((int(row.block) + 1) << BLOCK_BITS)
                above += packages
        return cls(aboves, uppers, above, int(rows[0].changes) if rows else None)

    def start(self, skip: int) -> tuple[int, int] | None:
        """The nearest place at or before the page past `skip` packages: its `upper` and how many of the
        ids below it come before the page; None: past the end."""
        if skip >= self.total:
            return None
        at = bisect.bisect_right(self.aboves, skip) - 1
        return self.uppers[at], skip - self.aboves[at]

    def learn(self, above: int, upper: int) -> None:
        """One more place (of this map's `changes`)."""
        at = bisect.bisect_left(self.aboves, above)
        if at < len(self.aboves) and self.aboves[at] == above:
            return
        self.aboves.insert(at, above)
        self.uppers.insert(at, upper)
        self.learned.append(above)
        if len(self.learned) > LEARNED_PLACES:
            at = bisect.bisect_left(self.aboves, self.learned.popleft())
            del self.aboves[at], self.uppers[at]


class BlockMaps:
    """The block maps of lists read deep lately, per process, at most `size` (the least recently used goes
    first). A map is a hint, never an answer: the page's statement reads, in its own snapshot, its session's
    `package_changes`, and a map read at another figure is read again. Paging on through a list then costs
    one statement a page instead of two."""

    def __init__(self, size: int = BLOCK_MAPS_SIZE) -> None:
        self._maps: cachetools.LRUCache[ListKey, BlockMap] = cachetools.LRUCache(size)

    def get(self, key: ListKey) -> BlockMap | None:
        return self._maps.get(key)

    def put(self, key: ListKey, blocks: BlockMap) -> None:
        self._maps[key] = blocks

    def forget(self, key: ListKey) -> None:
        self._maps.pop(key, None)


@functools.cache
def _deep_statements(by_type: bool, by_cost: bool) -> tuple[Select[int, int], Select[Any]]:
    """A deep page: the list's blocks, then the page from its start block; each with its session's changes,
    read in the same snapshot."""
    where = [*_filters(Package, by_type, by_cost), Package.id < bindparam("upper")]
    changes = (
        select(ClientSession.package_changes)
        .where(ClientSession.id == bindparam("session_id"))
        .scalar_subquery()
        .label("changes")
    )
    # Newest block first, each block's packages (of every type and cost, unless filtered).
    blocks = (
        select(PackageBlock.block, func.sum(PackageBlock.packages).label("packages"), changes)
        .where(*_filters(PackageBlock, by_type, by_cost))
        .group_by(PackageBlock.block)
        .order_by(PackageBlock.block.desc())
    )
    _, count = _page_statements(by_type, by_cost)
    return blocks, _page(where, "walk", count.scalar_subquery().label("total"), changes)


async def list_packages(
    conn: AsyncConnection,
    session_id: int,
    *,
    type_id: int | None = None,
    has_cost: bool | None = None,
    page: int = 1,
    size: int = 20,
    block_maps: BlockMaps | None = None,
) -> tuple[Sequence[AnyRow], int]:
    """One page of rows (`PACKAGE_COLUMNS`), newest first, and the total, in one statement (types joined);
    a page past the end costs one more for the total, a deep page one more for the list's block map (unless
    `block_maps` holds it)."""
    by_type, by_cost = type_id is not None, has_cost is not None
    stmt, count = _page_statements(by_type, by_cost)
    # A page number past any real list asks for an offset the database cannot hold: clamp it.
    skip = min((page - 1) * size, MAX_BIGINT)
    params = {"session_id": session_id, "type_id": type_id, "has_cost": has_cost, "size": size, "skip": skip}
    # On a connection, not through an ORM session: the rows are plain columns, and the ORM's execution
    # layers (compile state, identity map) cost more CPU than the statement's round trip.
    if skip >= DEEP_SKIP:
        key = (session_id, type_id, has_cost)
        deep = await _deep_page(conn, by_type, by_cost, skip, params, key, block_maps or BlockMaps(1))
        if deep is not None:
            return deep
    rows = (await conn.execute(stmt, params)).all()
    if not rows:
        return [], int((await conn.execute(count, params)).scalar_one())
    return rows, int(rows[0].total)


async def _deep_page(
    conn: AsyncConnection,
    by_type: bool,
    by_cost: bool,
    skip: int,
    params: dict[str, Any],
    key: ListKey,
    block_maps: BlockMaps,
) -> tuple[Sequence[AnyRow], int] | None:
    """A page far from the start, walking the index only from the nearest place before it that the list's
    block map knows (where a block starts, or where a page served from the map starts or ends): the map is
    kept or read. The page's statement reads, in its own snapshot, the session's `package_changes`; at the
    figure the map was read with, no package of the session has moved since and the page is exact in that
    snapshot (and teaches the map its own places), otherwise the map is read again. None: read it by OFFSET
    alone (past the end, or the packages kept changing)."""
    blocks_statement, page = _deep_statements(by_type, by_cost)
    blocks = block_maps.get(key)
    for _ in range(DEEP_TRIES):
        kept = blocks is not None
        if blocks is None:
            blocks = BlockMap.of((await conn.execute(blocks_statement, params)).all())
            block_maps.put(key, blocks)
        found = blocks.start(skip)
        if found is None:
            if kept:
                blocks = None  # past the end of a kept map: the list may have grown since
                continue
            return None
        upper, walk = found
        rows = (await conn.execute(page, params | {"upper": upper, "walk": walk})).all()
        if rows and rows[0].changes == blocks.changes:
            blocks.learn(skip, rows[0].id + 1)
            blocks.learn(skip + len(rows), rows[-1].id)
            return rows, int(rows[0].total)
        blocks = None
    block_maps.forget(key)
    return None


_PACKAGE = select(Package).options(joinedload(Package.type)).where(Package.id == bindparam("package_id"))
_OWN_PACKAGE = _PACKAGE.where(Package.session_id == bindparam("session_id"))


_OWN_PACKAGE_ROW = (
    select(*PACKAGE_COLUMNS)
    .join(PackageType, PackageType.id == Package.type_id)
    .where(Package.id == bindparam("package_id"), Package.session_id == bindparam("session_id"))
)


async def read_package(conn: AsyncConnection, session_id: int, package_id: int) -> AnyRow:
    """One of `session_id`'s packages as a row of `PACKAGE_COLUMNS`."""
    params = {"package_id": package_id, "session_id": session_id}
    row = (await conn.execute(_OWN_PACKAGE_ROW, params)).one_or_none()
    if row is None:
        raise NotFound("package")
    return row


async def get_package(db: AsyncSession, session_id: int | None, package_id: int) -> Package:
    """A package, if `session_id` owns it (None: any session's, for operators)."""
    stmt = _PACKAGE if session_id is None else _OWN_PACKAGE
    params = {"package_id": package_id, "session_id": session_id}
    package = (await db.scalars(stmt, params)).one_or_none()
    if package is None:
        raise NotFound("package")
    return package


async def type_ids(db: AsyncSession) -> frozenset[int]:
    return frozenset((await db.scalars(select(PackageType.id))).all())


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


DailyTotals = list[tuple[PackageType, int, Decimal]]


async def daily_costs_range(db: AsyncSession, start: date, end: date) -> list[tuple[date, DailyTotals]]:
    """`daily_costs` for every day from `start` to `end` (both included), from one statement.

    Every type comes back at least once (the outer join), so a day without a calculation still lists every
    type, at zero; the sums are the running totals' exact decimals.
    """
    in_range = (DailyCostTotal.type_id == PackageType.id) & DailyCostTotal.day.between(start, end)
    stmt = (
        select(PackageType, DailyCostTotal.day, DailyCostTotal.packages, DailyCostTotal.total_cost_rub)
        .outerjoin(DailyCostTotal, in_range)
        .order_by(PackageType.id)
    )
    types: dict[int, PackageType] = {}
    kept: dict[tuple[date, int], tuple[int, Decimal]] = {}
    for ptype, day, count, total in (await db.execute(stmt)).all():
        types.setdefault(ptype.id, ptype)
        if day is not None:
            kept[day, ptype.id] = (count, total)
    zero = (0, Decimal("0.00"))
    days = (start + timedelta(days=n) for n in range((end - start).days + 1))
    return [(day, [(t, *kept.get((day, t.id), zero)) for t in types.values()]) for day in days]


#: Pending registrations are counted by listing them: beyond this many the backlog says "at least".
PENDING_COUNT_CAP = 10_000


async def backlog(db: AsyncSession, store: Store) -> Backlog:
    """The operators' backlog: exact counts from the database and the store's index of pending
    registrations (up to `PENDING_COUNT_CAP`), and the last cost calculation from the cost log."""
    pending = await store.index_below(PENDING_INDEX, math.inf, PENDING_COUNT_CAP + 1)
    last_run = await store.get(LAST_PRICING_KEY)
    dead = await deadletters.summary(db)
    return Backlog(
        packages_without_cost=await count_awaiting_cost(db),
        registrations_pending=min(len(pending), PENDING_COUNT_CAP),
        registrations_pending_exact=len(pending) <= PENDING_COUNT_CAP,
        last_cost_calculated_at=await db.scalar(select(func.max(CostCalculation.calculated_at))),
        last_pricing_run=None
        if last_run is None
        else PricingRunRead.model_validate(PricingRun.loads(last_run)),
        dead_letters=dead.count,
        oldest_dead_letter_at=dead.oldest_at,
    )


def _pricing_run(raw: str | None) -> PricingRunRead | None:
    return None if raw is None else PricingRunRead.model_validate(PricingRun.loads(raw))


async def count_awaiting_cost(db: AsyncSession) -> int:
    return (
        await db.execute(select(func.count()).select_from(Package).where(Package.has_cost == false()))
    ).scalar_one()
