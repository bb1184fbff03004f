"""Engine, session factory and the column types that keep money exact on every backend."""

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, DateTime, Dialect, MetaData, Numeric, event
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator, TypeEngine

from delivery.config import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


#: Of every MySQL/MariaDB connection and table: all of Unicode, emoji included (utf8mb3 stops at 3 bytes).
MYSQL_CHARSET = "utf8mb4"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ExactDecimal(TypeDecorator[Decimal]):
    """`DECIMAL(precision, scale)` where the database has one; scaled integers on SQLite.

    SQLite has no decimal type: a NUMERIC column there holds a binary float. Storing
    `value * 10**scale` as an integer keeps every amount (and every SUM) exact.
    """

    impl = Numeric
    cache_ok = True

    def __init__(self, precision: int, scale: int) -> None:
        super().__init__(precision=precision, scale=scale, asdecimal=True)
        self.precision = precision
        self.scale = scale
        self._quantum = Decimal(1).scaleb(-scale)

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(self.precision, self.scale, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Decimal | int | None:
        if value is None:
            return None
        exact = value.quantize(self._quantum)
        if exact != value:
            raise ValueError(f"{value} has more than {self.scale} decimal places")
        if dialect.name == "sqlite":
            return int(exact.scaleb(self.scale))
        return exact

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-self.scale).quantize(self._quantum)
        return Decimal(value).quantize(self._quantum)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime, stored naive (UTC) on backends that drop the zone."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def create_engine(settings: Settings, *, autocommit: bool = False, **kwargs: Any) -> AsyncEngine:
    """An engine for `settings`; `autocommit` for callers whose every statement stands alone (the API).

    In autocommit mode MariaDB runs each statement as its own transaction, and SQLAlchemy sends no ROLLBACK
    when a session closes: one round trip fewer per request. (SQLite's rollback of nothing costs nothing.)
    """
    url = make_url(settings.DATABASE_URL)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    if autocommit:
        kwargs.setdefault("isolation_level", "AUTOCOMMIT")
        kwargs.setdefault("skip_autocommit_rollback", True)
        # No ping before each checkout: it doubled the round trips of a read. A connection that died (the
        # database restarted) fails its request with a 503 instead, once: SQLAlchemy then invalidates every
        # connection the pool held from before, and `pool_recycle` retires idle ones before the server would.
        kwargs.setdefault("pool_pre_ping", False)
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_recycle", 3600)
    # The tables are utf8mb4 (a migration sees to it); a connection in any other character set, the server's
    # default or the URL's, would refuse or mangle what they can hold.
    kwargs["connect_args"] = {**kwargs.get("connect_args", {}), "charset": MYSQL_CHARSET}
    return create_async_engine(url, **kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
