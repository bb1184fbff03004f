"""package blocks: where a deep page starts, from a few hundred rows instead of every package before it

Revision ID: 2026_12_01_package_blocks
Revises: 2026_11_30_utf8mb4
Create Date: 2026-12-01

A page's ids come from the index on (session_id, id), but OFFSET still walks every entry before the page:
page 2,000 of a 100,000-package session walks 40,000 of them (backwards, ~10 ms of MariaDB per request).
`package_blocks` holds, per session, block of ids (`id >> 14`: 16,384 ids in a row), type and cost known or
not, how many packages there are. A deep page finds its block from the running sum of these counts and walks
only within that block. Triggers keep the counts in the transaction that inserts, prices or deletes a
package, as they keep `package_counts`; the existing packages are counted after the triggers exist, with an
upsert that sets the exact count.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_01_package_blocks"
down_revision: str | None = "2026_11_30_utf8mb4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: As `delivery.models.BLOCK_BITS`; a migration keeps its own copy, the value it was written with.
BLOCK_BITS = 14

TRIGGERS = ("packages_block_insert", "packages_block_update", "packages_block_delete")

_OLD_KEY = (
    f"session_id = OLD.session_id AND block = OLD.id >> {BLOCK_BITS} AND type_id = OLD.type_id"
    " AND has_cost = (OLD.delivery_cost_rub IS NOT NULL)"
)
_NEW_ROW = f"(NEW.session_id, NEW.id >> {BLOCK_BITS}, NEW.type_id, NEW.delivery_cost_rub IS NOT NULL, 1)"
_COLUMNS = "(session_id, block, type_id, has_cost, packages)"
_CHANGED = (
    "NOT (OLD.id <=> NEW.id AND OLD.session_id <=> NEW.session_id AND OLD.type_id <=> NEW.type_id"
    " AND (OLD.delivery_cost_rub IS NULL) = (NEW.delivery_cost_rub IS NULL))"
)

MYSQL_TRIGGERS = (
    f"""CREATE TRIGGER packages_block_insert AFTER INSERT ON packages FOR EACH ROW
INSERT INTO package_blocks {_COLUMNS} VALUES {_NEW_ROW}
ON DUPLICATE KEY UPDATE packages = packages + 1""",
    f"""CREATE TRIGGER packages_block_update AFTER UPDATE ON packages FOR EACH ROW
BEGIN
  IF {_CHANGED} THEN
    UPDATE package_blocks SET packages = packages - 1 WHERE {_OLD_KEY};
    INSERT INTO package_blocks {_COLUMNS} VALUES {_NEW_ROW}
    ON DUPLICATE KEY UPDATE packages = packages + 1;
  END IF;
END""",
    f"""CREATE TRIGGER packages_block_delete AFTER DELETE ON packages FOR EACH ROW
UPDATE package_blocks SET packages = packages - 1 WHERE {_OLD_KEY}""",
)

_SQLITE_UPSERT = (
    f"INSERT INTO package_blocks {_COLUMNS} VALUES {_NEW_ROW}"
    " ON CONFLICT (session_id, block, type_id, has_cost) DO UPDATE SET packages = packages + 1;"
)
SQLITE_TRIGGERS = (
    f"""CREATE TRIGGER packages_block_insert AFTER INSERT ON packages
BEGIN
  {_SQLITE_UPSERT}
END""",
    f"""CREATE TRIGGER packages_block_update
AFTER UPDATE OF id, session_id, type_id, delivery_cost_rub ON packages
WHEN OLD.id IS NOT NEW.id OR OLD.session_id IS NOT NEW.session_id OR OLD.type_id IS NOT NEW.type_id
  OR (OLD.delivery_cost_rub IS NULL) IS NOT (NEW.delivery_cost_rub IS NULL)
BEGIN
  UPDATE package_blocks SET packages = packages - 1 WHERE {_OLD_KEY};
  {_SQLITE_UPSERT}
END""",
    f"""CREATE TRIGGER packages_block_delete AFTER DELETE ON packages
BEGIN
  UPDATE package_blocks SET packages = packages - 1 WHERE {_OLD_KEY};
END""",
)

_COUNT_EXISTING = (
    f"INSERT INTO package_blocks {_COLUMNS}"
    f" SELECT session_id, id >> {BLOCK_BITS}, type_id, has_cost, COUNT(*) FROM packages WHERE true"
    f" GROUP BY session_id, id >> {BLOCK_BITS}, type_id, has_cost"
)


def upgrade() -> None:
    op.create_table(
        "package_blocks",
        sa.Column("session_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("block", sa.BigInteger(), nullable=False),
        sa.Column("type_id", sa.Integer(), nullable=False),
        sa.Column("has_cost", sa.Boolean(), nullable=False),
        sa.Column("packages", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_package_blocks_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["type_id"],
            ["package_types.id"],
            name=op.f("fk_package_blocks_type_id_package_types"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", "block", "type_id", "has_cost", name=op.f("pk_package_blocks")),
    )
    # As for package_counts: a package written between a trigger and the count is counted by both, so the
    # count sets (not adds) the exact figure.
    if op.get_bind().dialect.name == "sqlite":
        for trigger in SQLITE_TRIGGERS:
            op.execute(trigger)
        op.execute(
            _COUNT_EXISTING
            + " ON CONFLICT (session_id, block, type_id, has_cost) DO UPDATE SET packages = excluded.packages"
        )
    else:
        for trigger in MYSQL_TRIGGERS:
            op.execute(trigger)
        op.execute(_COUNT_EXISTING + " ON DUPLICATE KEY UPDATE packages = VALUES(packages)")


def downgrade() -> None:
    for trigger in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.drop_table("package_blocks")
