"""package counts: a list's total from at most six rows, kept by triggers on packages

Revision ID: 2026_11_29_package_counts
Revises: 2026_11_29_initial
Create Date: 2026-11-29

A COUNT over a session's index entries costs time in proportion to its packages (~25 ms for 100,000 on
MariaDB), on every page. `package_counts` holds, per session, type and cost known or not, how many packages
there are. Triggers keep it in the transaction that inserts, prices or deletes a package, whoever writes:
the registration job, the pricing job, a bulk load, an operator's fix. The existing packages are counted
after the triggers exist, with an upsert that sets the exact count, so a package written meanwhile is
counted once.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_11_29_package_counts"
down_revision: str | None = "2026_11_29_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIGGERS = ("packages_count_insert", "packages_count_update", "packages_count_delete")

_OLD_KEY = (
    "session_id = OLD.session_id AND type_id = OLD.type_id AND has_cost = (OLD.delivery_cost_rub IS NOT NULL)"
)
_NEW_ROW = "(NEW.session_id, NEW.type_id, NEW.delivery_cost_rub IS NOT NULL, 1)"
_CHANGED = (
    "NOT (OLD.session_id <=> NEW.session_id AND OLD.type_id <=> NEW.type_id"
    " AND (OLD.delivery_cost_rub IS NULL) = (NEW.delivery_cost_rub IS NULL))"
)

MYSQL_TRIGGERS = (
    f"""CREATE TRIGGER packages_count_insert AFTER INSERT ON packages FOR EACH ROW
INSERT INTO package_counts (session_id, type_id, has_cost, packages) VALUES {_NEW_ROW}
ON DUPLICATE KEY UPDATE packages = packages + 1""",
    f"""CREATE TRIGGER packages_count_update AFTER UPDATE ON packages FOR EACH ROW
BEGIN
  IF {_CHANGED} THEN
    UPDATE package_counts SET packages = packages - 1 WHERE {_OLD_KEY};
    INSERT INTO package_counts (session_id, type_id, has_cost, packages) VALUES {_NEW_ROW}
    ON DUPLICATE KEY UPDATE packages = packages + 1;
  END IF;
END""",
    f"""CREATE TRIGGER packages_count_delete AFTER DELETE ON packages FOR EACH ROW
UPDATE package_counts SET packages = packages - 1 WHERE {_OLD_KEY}""",
)

_SQLITE_UPSERT = (
    f"INSERT INTO package_counts (session_id, type_id, has_cost, packages) VALUES {_NEW_ROW}"
    " ON CONFLICT (session_id, type_id, has_cost) DO UPDATE SET packages = packages + 1;"
)
SQLITE_TRIGGERS = (
    f"""CREATE TRIGGER packages_count_insert AFTER INSERT ON packages
BEGIN
  {_SQLITE_UPSERT}
END""",
    f"""CREATE TRIGGER packages_count_update
AFTER UPDATE OF session_id, type_id, delivery_cost_rub ON packages
WHEN OLD.session_id IS NOT NEW.session_id OR OLD.type_id IS NOT NEW.type_id
  OR (OLD.delivery_cost_rub IS NULL) IS NOT (NEW.delivery_cost_rub IS NULL)
BEGIN
  UPDATE package_counts SET packages = packages - 1 WHERE {_OLD_KEY};
  {_SQLITE_UPSERT}
END""",
    f"""CREATE TRIGGER packages_count_delete AFTER DELETE ON packages
BEGIN
  UPDATE package_counts SET packages = packages - 1 WHERE {_OLD_KEY};
END""",
)

_COUNT_EXISTING = (
    "INSERT INTO package_counts (session_id, type_id, has_cost, packages)"
    " SELECT session_id, type_id, has_cost, COUNT(*) FROM packages WHERE true"
    " GROUP BY session_id, type_id, has_cost"
)


def upgrade() -> None:
    op.create_table(
        "package_counts",
        sa.Column("session_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("type_id", sa.Integer(), nullable=False),
        sa.Column("has_cost", sa.Boolean(), nullable=False),
        sa.Column("packages", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_package_counts_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["type_id"],
            ["package_types.id"],
            name=op.f("fk_package_counts_type_id_package_types"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", "type_id", "has_cost", name=op.f("pk_package_counts")),
    )
    # Each CREATE TRIGGER takes effect at once (MariaDB commits it; Alembic runs SQLite's DDL outside a
    # transaction): a package written between a trigger and the count is counted by both, so the count sets
    # (not adds) the exact figure; it locks what it reads until it commits.
    if op.get_bind().dialect.name == "sqlite":
        for trigger in SQLITE_TRIGGERS:
            op.execute(trigger)
        op.execute(
            _COUNT_EXISTING
            + " ON CONFLICT (session_id, type_id, has_cost) DO UPDATE SET packages = excluded.packages"
        )
    else:
        for trigger in MYSQL_TRIGGERS:
            op.execute(trigger)
        op.execute(_COUNT_EXISTING + " ON DUPLICATE KEY UPDATE packages = VALUES(packages)")


def downgrade() -> None:
    for trigger in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.drop_table("package_counts")
