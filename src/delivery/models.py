"""Database models. Every model of the package lives here, so Alembic sees them all."""

import uuid
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    Computed,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    event,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from delivery.db import Base, ExactDecimal, UTCDateTime, utcnow

# SQLite gives auto-increment only to a column declared exactly INTEGER PRIMARY KEY.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")

WEIGHT_PLACES = 3
WEIGHT = ExactDecimal(10, WEIGHT_PLACES)
MONEY_USD = ExactDecimal(12, 2)
MONEY_RUB = ExactDecimal(18, 2)
RATE = ExactDecimal(18, 8)


class ClientSession(Base):
    """A customer's session: the cookie holds a random token, the table only its SHA-256."""

    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    #: Changes to the session's packages (inserted, deleted, priced or moved), counted by triggers (see the
    #: `package_changes` migration); it only grows, so a block map read when it held a figure is
    #: still exact while it holds it.
    package_changes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class PackageType(Base):
    __tablename__ = "package_types"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)


class Package(Base):
    __tablename__ = "packages"
    __table_args__ = (
        # The list queries: newest first (by id) within a session, alone or with a filter.
        Index("ix_packages_session_id", "session_id", "id"),
        Index("ix_packages_session_type_id", "session_id", "type_id", "id"),
        Index("ix_packages_session_type_has_cost_id", "session_id", "type_id", "has_cost", "id"),
        Index("ix_packages_session_has_cost_id", "session_id", "has_cost", "id"),
        # The periodic pricing job walks the packages still without a cost.
        Index("ix_packages_has_cost_id", "has_cost", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    registration_id: Mapped[uuid.UUID] = mapped_column(Uuid(), unique=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"))
    type_id: Mapped[int] = mapped_column(ForeignKey("package_types.id"))
    name: Mapped[str] = mapped_column(String(255))
    weight_kg: Mapped[Decimal] = mapped_column(WEIGHT)
    content_value_usd: Mapped[Decimal] = mapped_column(MONEY_USD)
    delivery_cost_rub: Mapped[Decimal | None] = mapped_column(MONEY_RUB)
    usd_rub_rate: Mapped[Decimal | None] = mapped_column(RATE)
    rate_date: Mapped[date | None] = mapped_column(Date)
    # Derived, so "cost known" can lead an index that also yields id order.
    has_cost: Mapped[bool] = mapped_column(
        Boolean, Computed("delivery_cost_rub IS NOT NULL", persisted=True), nullable=True
    )
    transport_company_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    type: Mapped[PackageType] = relationship(lazy="raise")


class PackageCount(Base):
    """How many packages each session has, per type and cost known or not: a list's total without a COUNT.

    Kept by triggers on `packages` (see the `package_counts` migration), so that every writer keeps it exact:
    the registration job, the pricing job, and anything else that inserts, prices or deletes packages.
    """

    __tablename__ = "package_counts"

    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    type_id: Mapped[int] = mapped_column(ForeignKey("package_types.id", ondelete="CASCADE"), primary_key=True)
    has_cost: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    packages: Mapped[int] = mapped_column(BigInteger)


#: A package's block of ids is `id >> BLOCK_BITS`: 16,384 ids in a row (the `package_blocks` migration's).
BLOCK_BITS = 14


class PackageBlock(Base):
    """How many packages each session has per block of ids, type and cost known or not: where a deep page
    starts, from the running sum of a few hundred rows, not from walking every package before the page.

    Kept by triggers on `packages` (see the `package_blocks` migration), as `PackageCount` is.
    """

    __tablename__ = "package_blocks"

    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    block: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    type_id: Mapped[int] = mapped_column(ForeignKey("package_types.id", ondelete="CASCADE"), primary_key=True)
    has_cost: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    packages: Mapped[int] = mapped_column(BigInteger)


class CostCalculation(Base):
    """The log of cost calculations: one row per package, written with the cost itself."""

    __tablename__ = "cost_calculations"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    package_id: Mapped[int] = mapped_column(ForeignKey("packages.id"), unique=True)
    type_id: Mapped[int] = mapped_column(ForeignKey("package_types.id"))
    delivery_cost_rub: Mapped[Decimal] = mapped_column(MONEY_RUB)
    usd_rub_rate: Mapped[Decimal] = mapped_column(RATE)
    rate_date: Mapped[date] = mapped_column(Date)
    calculated_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class DailyCostTotal(Base):
    """Per UTC day and type, the running sum of `cost_calculations`, kept in the same transaction."""

    __tablename__ = "daily_cost_totals"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    type_id: Mapped[int] = mapped_column(ForeignKey("package_types.id"), primary_key=True)
    packages: Mapped[int] = mapped_column(BigInteger)
    total_cost_rub: Mapped[Decimal] = mapped_column(ExactDecimal(24, 2))


class DeadLetter(Base):
    """A registration job that could not succeed: its body as the worker received it, kept until an operator
    sends it back to the registration queue (`delivery dead-letters requeue`).

    No foreign key: a dead letter outlives its session, and a body that could not be read may name none.
    """

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    #: One letter per registration (a job dead-lettered twice updates it); null when the body names none.
    registration_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    session_id: Mapped[int | None] = mapped_column(BigInteger)
    body: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(String(1000))
    deliveries: Mapped[int] = mapped_column(Integer)
    dead_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class Operator(Base):
    """A named operator: the key they send as `X-Admin-Token` is shown once, at `delivery operators add`;
    the table keeps only its SHA-256, which the guard looks the key up by (`delivery.operators`)."""

    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    #: Never reused, so that the audit trail's names stay unambiguous (a revoked operator keeps theirs).
    name: Mapped[str] = mapped_column(String(64), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: Null while the key is taken.
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AuditEntry(Base):
    """One operator action in the audit trail (`delivery.audit`): written once, never updated or deleted by
    the service (the mapper refuses both, below)."""

    __tablename__ = "audit_entries"
    __table_args__ = (
        # The listing: newest first, over a range of days, alone or for one operator.
        Index("ix_audit_entries_at_id", "at", "id"),
        Index("ix_audit_entries_operator_at_id", "operator", "at", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: An operator's name, `admin` (ADMIN_TOKEN), or `shell:<user>` for a command run at the shell.
    operator: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    object: Mapped[str | None] = mapped_column(String(255))
    outcome: Mapped[str] = mapped_column(String(1000))
    #: The HTTP request's id (`X-Request-ID`); null for a command.
    request_id: Mapped[str | None] = mapped_column(String(128))


def _append_only(_mapper: object, _connection: object, entry: AuditEntry) -> None:
    raise TypeError(f"audit entries are never changed or deleted (entry {entry.id})")


event.listen(AuditEntry, "before_update", _append_only)
event.listen(AuditEntry, "before_delete", _append_only)
