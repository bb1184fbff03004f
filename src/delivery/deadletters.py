"""Dead letters: the registration jobs that could not succeed, kept until an operator sends them back.

A job that fails is narrowed down to itself (the rest of its batch is registered) and tried again, alone,
after a growing delay (`failure_delay`); the failed deliveries so far travel in its message's headers
(`broker.FAILED_DELIVERIES`). At its `DEAD_LETTER_AFTER`th delivery, or at once when it cannot succeed as it
is (`RegistrationImpossible`: its type was deleted), it becomes a dead letter: its body, as the worker
received it, is kept in the `dead_letters` table, and its status becomes `failed` with the reason. After a
fix (a worker that reads a newer job, the type restored, the database's refusal lifted), `requeue` sends the
letters back: each registration is pending again and its job published with no failed delivery counted.

The letters live in the database rather than in a queue of the broker: the same on both brokers (kombu's
embedded transport has no dead-lettering), counted and aged with one statement, and read without taking
them off a queue.
"""

import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Executable, delete, func, select
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from delivery.db import utcnow
from delivery.models import DeadLetter
from delivery.registration import (
    MAX_BACKOFF,
    PENDING_INDEX,
    Failure,
    RegistrationJob,
    StatusRecord,
    record_failed,
    status_key,
)
from delivery.store import Store

logger = logging.getLogger(__name__)

#: The delay before a failed job's second delivery is between half this and this many seconds; it doubles
#: with every delivery after, up to `registration.MAX_BACKOFF`.
FAILURE_DELAY = 2.0
#: The most letters an operator's listing shows (the oldest).
LISTED = 20


def failure_delay(deliveries: int) -> float:
    """Seconds before the next delivery of a job that failed `deliveries` times: doubling each time, a random
    half of it added to the other half, so that jobs failing together spread out but none comes back sooner
    than half its delay (never a hot loop)."""
    full = min(MAX_BACKOFF, FAILURE_DELAY * 2 ** max(deliveries - 1, 0))
    return random.uniform(full / 2, full)


#: What a registration's letter written again replaces.
_REPLACED = ("session_id", "body", "reason", "deliveries", "dead_at")


@dataclass(frozen=True, slots=True)
class Letter:
    """A job to dead-letter, and the deliveries it had."""

    failure: Failure
    deliveries: int


async def keep(maker: async_sessionmaker[AsyncSession], letters: Sequence[Letter]) -> None:
    """Keep the letters, in one transaction; a registration's letter written again replaces its row."""
    if not letters:
        return
    now = utcnow()
    rows = [
        {
            "registration_id": letter.failure.registration_id,
            "session_id": letter.failure.session_id,
            "body": json.dumps(letter.failure.body),
            "reason": letter.failure.reason[:1000],
            "deliveries": letter.deliveries,
            "dead_at": now,
        }
        for letter in letters
    ]
    async with maker() as db, db.begin():
        conn = await db.connection()
        stmt: Executable
        if conn.dialect.name == "sqlite":
            lite = sqlite.insert(DeadLetter).values(rows)
            stmt = lite.on_conflict_do_update(
                index_elements=["registration_id"],
                set_={name: lite.excluded[name] for name in _REPLACED},
            )
        else:
            my = mysql.insert(DeadLetter).values(rows)
            stmt = my.on_duplicate_key_update({name: my.inserted[name] for name in _REPLACED})
        await conn.execute(stmt)


async def mark_failed(store: Store, letters: Sequence[Letter]) -> None:
    """The letters' registrations `failed` with the reason, in one store round trip."""
    await record_failed(
        store,
        [
            (registration_id, session_id, letter.failure.reason)
            for letter in letters
            if (registration_id := letter.failure.registration_id) is not None
            and (session_id := letter.failure.session_id) is not None
        ],
    )


@dataclass(frozen=True, slots=True)
class Summary:
    count: int
    oldest_at: datetime | None


async def summary(db: AsyncSession) -> Summary:
    """How many letters there are and when the oldest was dead-lettered, in one statement."""
    count, oldest = (await db.execute(select(func.count(), func.min(DeadLetter.dead_at)))).one()
    return Summary(int(count), oldest)


async def oldest(db: AsyncSession, limit: int = LISTED) -> list[DeadLetter]:
    return list(
        (await db.scalars(select(DeadLetter).order_by(DeadLetter.dead_at, DeadLetter.id).limit(limit))).all()
    )


async def requeue(
    maker: async_sessionmaker[AsyncSession],
    store: Store,
    publish: Callable[[Any], Awaitable[None]],
    *,
    status_ttl: float,
    chunk: int = 500,
) -> int:
    """Send back every letter there is now, oldest first; how many were sent.

    For each: its registration is pending again (its status holding the job, back in the index of pending
    ones, so that a job lost on its way is recovered like any other), its body is published as it was kept,
    with no failed delivery counted, and only then its letter deleted. A publish that fails stops here with
    the error, that letter and the rest kept. A letter dead-lettered again meanwhile waits for the next
    requeue (it is past the last letter there was at the start). Two requeues at once may publish a job
    twice: harmless, a registration makes one package.
    """
    async with maker() as db:
        last = await db.scalar(select(func.max(DeadLetter.id)))
    if last is None:
        return 0
    sent = 0
    after = 0
    while True:
        async with maker() as db:
            letters = (
                await db.scalars(
                    select(DeadLetter)
                    .where(DeadLetter.id > after, DeadLetter.id <= last)
                    .order_by(DeadLetter.id)
                    .limit(chunk)
                )
            ).all()
        if not letters:
            return sent
        for letter in letters:
            body = json.loads(letter.body)
            if letter.registration_id is not None and letter.session_id is not None:
                # The job kept for recovery only if this process can read it: recovery publishes it anew
                # from a `RegistrationJob`.
                job = body if _readable(body) else None
                record = StatusRecord(letter.session_id, "pending", job=job)
                await store.set(status_key(letter.registration_id), record.dumps(), ttl=status_ttl)
                await store.index_add(PENDING_INDEX, letter.registration_id, time.time())
            await publish(body)
            async with maker() as db, db.begin():
                await db.execute(delete(DeadLetter).where(DeadLetter.id == letter.id))
            logger.warning(
                "dead letter sent back registration_id=%s deliveries=%s reason=%s",
                letter.registration_id,
                letter.deliveries,
                letter.reason,
            )
            sent += 1
            after = letter.id


def _readable(body: Any) -> bool:
    try:
        RegistrationJob.from_json(body)
    except Exception:
        return False
    return True
