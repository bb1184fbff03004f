"""package changes: a kept block map is checked against one number, not the blocks above the page

Revision ID: 2026_12_01_package_changes
Revises: 2026_12_01_package_blocks
Create Date: 2026-12-01

An API process keeps the block maps of the lists it reads deep, and each deep page checked its map by
summing, in its own snapshot, the `package_blocks` rows above the page's start (a hundred rows and more for
a page deep in a big session, about a third of the page's database time). `sessions.package_changes` counts
the changes to a session's packages: triggers add one in the transaction that inserts, deletes, prices or
moves a package (one per row, to each session involved), as they keep `package_blocks`. It only grows, so a
page that reads the same figure the map was read with sees the blocks the map holds.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_01_package_changes"
down_revision: str | None = "2026_12_01_package_blocks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIGGERS = ("packages_changes_insert", "packages_changes_update", "packages_changes_delete")


def _bump(*sessions: str) -> str:
    """Add one to the changes of the sessions named (NEW.session_id, OLD.session_id)."""
    return f"UPDATE sessions SET package_changes = package_changes + 1 WHERE id IN ({', '.join(sessions)})"


# What moves a package in a block map: its id, session, type, or whether its cost is known (as the
# package_blocks triggers); a change to its name or weight leaves the maps as they are.
# On MariaDB these run before the count and block triggers (PRECEDES): a writer locks the session's row
# before its count and block rows, so two transactions writing packages of one session wait for each other
# instead of deadlocking (each holding a count row the other needs, then waiting for the session's row), and
# a batch written in session order takes the sessions' rows in one order.
MYSQL_TRIGGERS = (
    f"""CREATE TRIGGER packages_changes_insert AFTER INSERT ON packages FOR EACH ROW
PRECEDES packages_count_insert
{_bump("NEW.session_id")}""",
    f"""CREATE TRIGGER packages_changes_update AFTER UPDATE ON packages FOR EACH ROW
PRECEDES packages_count_update
BEGIN
  IF NOT (OLD.id <=> NEW.id AND OLD.session_id <=> NEW.session_id AND OLD.type_id <=> NEW.type_id
      AND (OLD.delivery_cost_rub IS NULL) = (NEW.delivery_cost_rub IS NULL)) THEN
    {_bump("OLD.session_id", "NEW.session_id")};
  END IF;
END""",
    f"""CREATE TRIGGER packages_changes_delete AFTER DELETE ON packages FOR EACH ROW
PRECEDES packages_count_delete
{_bump("OLD.session_id")}""",
)

SQLITE_TRIGGERS = (
    f"""CREATE TRIGGER packages_changes_insert AFTER INSERT ON packages
BEGIN
  {_bump("NEW.session_id")};
END""",
    f"""CREATE TRIGGER packages_changes_update
AFTER UPDATE OF id, session_id, type_id, delivery_cost_rub ON packages
WHEN OLD.id IS NOT NEW.id OR OLD.session_id IS NOT NEW.session_id OR OLD.type_id IS NOT NEW.type_id
  OR (OLD.delivery_cost_rub IS NULL) IS NOT (NEW.delivery_cost_rub IS NULL)
BEGIN
  {_bump("OLD.session_id", "NEW.session_id")};
END""",
    f"""CREATE TRIGGER packages_changes_delete AFTER DELETE ON packages
BEGIN
  {_bump("OLD.session_id")};
END""",
)


def upgrade() -> None:
    # Every session starts at 0: no map read before the triggers exist outlives the processes that read it
    # (maps live in the API's memory, and an API that reads this column starts after the migration).
    op.add_column(
        "sessions", sa.Column("package_changes", sa.BigInteger(), server_default="0", nullable=False)
    )
    triggers = SQLITE_TRIGGERS if op.get_bind().dialect.name == "sqlite" else MYSQL_TRIGGERS
    for trigger in triggers:
        op.execute(trigger)


def downgrade() -> None:
    for trigger in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.drop_column("sessions", "package_changes")
