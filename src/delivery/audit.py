"""The audit trail: one row per operator action, written when the action is done (or refused, or failed),
before its answer goes out, and never updated or deleted by the service (nothing here does, and the model's
mapper refuses both).

A row names who acted (an operator's name, `admin` for `ADMIN_TOKEN`, `shell:<user>` for a command run at
the shell), the action, its object, the outcome, the HTTP request's id (null for a command) and when (UTC).
The outcome is `ok`, `refused` or `failed`, followed after a colon by what happened, when that says more:
`ok: sent back 3`, `refused: company 7 holds it`, `failed: broker is unavailable`.

An entry that cannot be written fails the request (the action's answer would otherwise claim a trail that
is not there); it is logged first, in full.
"""

import getpass
import logging
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum

from sqlalchemy import ColumnElement, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from delivery.db import utcnow
from delivery.logs import request_id
from delivery.models import AuditEntry

logger = logging.getLogger(__name__)


class Action(StrEnum):
    PRICING_START = "pricing.start"  # POST /admin/jobs/price-packages/
    PRICING_RUN = "pricing.run"  # delivery price
    COMPANY_BIND = "company.bind"
    OPERATOR_ADD = "operator.add"
    OPERATOR_REVOKE = "operator.revoke"
    DEAD_LETTERS_REQUEUE = "dead_letters.requeue"


def shell_operator() -> str:
    """Who runs a command: the user of the shell (a name no operator can have: it holds a colon)."""
    try:
        user = getpass.getuser()
    except OSError:  # no user name for this uid (a container's)
        user = "unknown"
    return f"shell:{user}"[:64]


def failed(exc: BaseException) -> str:
    return f"failed: {exc}"


async def record(
    db: AsyncSession, *, operator: str, action: Action, object: str | None, outcome: str
) -> None:
    """Write one entry, under the current request's id (none outside a request)."""
    at = utcnow()
    values = {
        "at": at,
        "operator": operator,
        "action": action.value,
        "object": None if object is None else object[:255],
        "outcome": outcome[:1000],
        "request_id": request_id.get(),
    }
    try:
        await db.execute(insert(AuditEntry).values(values))
        await db.commit()
    except Exception:
        logger.error(
            "audit entry not written operator=%s action=%s object=%s outcome=%s at=%s",
            operator,
            action.value,
            object,
            outcome,
            at.isoformat(),
        )
        raise


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


async def page(
    db: AsyncSession,
    *,
    start: date | None,
    end: date | None,
    operator: str | None,
    page: int,
    size: int,
) -> tuple[list[AuditEntry], int]:
    """One page of the entries from the UTC day `start` to the UTC day `end` (both included, either open),
    of one operator or all, newest first; and how many entries there are in all."""
    where: list[ColumnElement[bool]] = []
    if start is not None:
        where.append(AuditEntry.at >= _midnight(start))
    if end is not None and end < date.max:
        where.append(AuditEntry.at < _midnight(end + timedelta(days=1)))
    if operator:
        where.append(AuditEntry.operator == operator)
    total = int(await db.scalar(select(func.count()).select_from(AuditEntry).where(*where)) or 0)
    offset = (page - 1) * size
    if offset >= total:
        return [], total  # past the end: no query with an offset the database may not hold
    entries = await db.scalars(
        select(AuditEntry)
        .where(*where)
        .order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
        .offset(offset)
        .limit(size)
    )
    return list(entries.all()), total
