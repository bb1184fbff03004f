"""Housekeeping: expired sessions, and the embedded broker's delivered messages."""

import logging
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import ColumnElement, delete, exists, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from delivery.db import utcnow
from delivery.models import ClientSession, Package

logger = logging.getLogger(__name__)

SESSION_BATCH = 1000
#: How long after its expiry a session is kept: a registration accepted just before it expired may still be
#: waiting for its job (retries, the recovery job) for as long as its status lives — STATUS_TTL, 1 day
#: by default. Its package row needs the session row.
SESSION_GRACE = timedelta(days=1)
BROKER_BATCH = 5000
#: kombu's SQLAlchemy transport: the table of messages, and how it stores a DateTime on SQLite.
KOMBU_MESSAGE_TABLE = "kombu_message"
_SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"


async def delete_expired_sessions(
    maker: async_sessionmaker[AsyncSession],
    *,
    now: datetime | None = None,
    batch: int = SESSION_BATCH,
    grace: timedelta = SESSION_GRACE,
) -> int:
    """Delete the sessions that expired more than `grace` ago and own no package; how many were deleted.

    A session that owns packages is kept, expired or not: its packages stay readable by id (operators,
    the daily totals' log) and keep their owner, so no foreign key is loosened and no package is orphaned
    or deleted with its session. Such a session is inert — its token no longer authenticates — and small;
    most sessions that expire never registered anything. Pass a `grace` of at least STATUS_TTL.

    Each batch is its own short transaction (ids in key order from where the last batch stopped), so locks
    are held briefly and a long backlog neither blocks the API nor fills the undo log. The DELETE checks
    again that the session has no package, so one created meanwhile keeps its session.
    """
    cutoff = (now or utcnow()) - grace
    deletable: tuple[ColumnElement[bool], ...] = (
        ClientSession.expires_at < cutoff,
        ~exists().where(Package.session_id == ClientSession.id),
    )
    deleted = 0
    after = 0
    while True:
        async with maker() as db, db.begin():
            ids = list(
                await db.scalars(
                    select(ClientSession.id)
                    .where(ClientSession.id > after, *deletable)
                    .order_by(ClientSession.id)
                    .limit(batch)
                )
            )
            if not ids:
                break
            result = await db.execute(
                delete(ClientSession)
                .where(ClientSession.id.in_(ids), *deletable)
                .execution_options(synchronize_session=False)
            )
            deleted += result.rowcount  # type: ignore[attr-defined]
        after = ids[-1]
    logger.info("expired sessions deleted count=%d cutoff=%s", deleted, cutoff.isoformat())
    return deleted


def purge_embedded_broker(
    broker_db_path: Path,
    *,
    older_than: timedelta,
    now: datetime | None = None,
    batch: int = BROKER_BATCH,
) -> int:
    """Delete the messages the embedded broker delivered more than `older_than` ago; how many were deleted.

    kombu's SQLAlchemy transport never deletes a message: taking one sets `visible` to false (and its
    `timestamp`, in the local time of the taker) and leaves the row, so the file grows by every job ever
    run. A taken message is never read again — an unacknowledged one is put back as a new row — so deleting
    it loses nothing. Messages still waiting (`visible` true) are never touched. Batches are short write
    transactions, so a worker taking a message waits at most for one batch. The freed pages are reused by
    later messages; the file does not shrink (that takes a VACUUM, with the broker stopped).

    Sync, like the transport: call it from a thread or a Celery task. A missing file or table is no error.
    """
    if not broker_db_path.exists():
        return 0
    # The transport writes naive local times (datetime.now): compare in the same clock.
    cutoff = ((now or datetime.now()) - older_than).strftime(_SQLITE_DATETIME)
    deleted = 0
    connection = sqlite3.connect(broker_db_path, timeout=30, isolation_level=None)
    try:
        if not connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (KOMBU_MESSAGE_TABLE,)
        ).fetchone():
            return 0
        while True:
            cursor = connection.execute(
                f"DELETE FROM {KOMBU_MESSAGE_TABLE} WHERE id IN ("
                f" SELECT id FROM {KOMBU_MESSAGE_TABLE}"
                "  WHERE visible = 0 AND (timestamp IS NULL OR timestamp < ?) LIMIT ?)",
                (cutoff, batch),
            )
            deleted += cursor.rowcount
            if cursor.rowcount < batch:
                break
    finally:
        connection.close()
    logger.info("embedded broker purged deleted=%d older_than_s=%d", deleted, older_than.total_seconds())
    return deleted
