"""utf8mb4: every table's text in utf8mb4, whatever the database's default character set

Revision ID: 2026_11_30_utf8mb4
Revises: 2026_11_29_package_counts
Create Date: 2026-11-30

The earlier migrations create their tables without a character set, so on MySQL/MariaDB they take the
database's default: on a database created as latin1 a Cyrillic name is refused and an emoji cannot be
stored even in utf8 (utf8mb3). This converts the tables still in another character set (a table already
in utf8mb4 is not rebuilt) and makes utf8mb4 the database's default, so the tables of later migrations
are created in it. Each collation is utf8mb4's default on the server. SQLite stores text as UTF-8 only:
nothing to do there.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_11_30_utf8mb4"
down_revision: str | None = "2026_11_29_package_counts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("package_types", "sessions", "packages", "package_counts", "cost_calculations", "daily_cost_totals")

_NOT_UTF8MB4 = sa.text(
    "SELECT DISTINCT t.TABLE_NAME FROM information_schema.TABLES t"
    " LEFT JOIN information_schema.COLUMNS c"
    "  ON c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME"
    " WHERE t.TABLE_SCHEMA = DATABASE() AND t.TABLE_NAME IN :tables"
    "  AND (t.TABLE_COLLATION NOT LIKE 'utf8mb4%' OR c.CHARACTER_SET_NAME != 'utf8mb4')"
).bindparams(sa.bindparam("tables", expanding=True))


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        return
    op.execute("ALTER DATABASE CHARACTER SET utf8mb4")
    for table in sorted(bind.execute(_NOT_UTF8MB4, {"tables": TABLES}).scalars()):
        op.execute(f"ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb4")


def downgrade() -> None:
    # Nothing to undo: utf8mb4 holds every text the earlier schema held, and converting back to the old
    # default could only lose characters stored since.
    pass
