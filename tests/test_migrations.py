"""The migrations, on a fresh database of each stack: up, no drift from the models, down, and up again."""

import gc
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic import op as alembic_op
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from delivery import jobs
from delivery.config import Settings
from delivery.db import create_engine, create_sessionmaker
from delivery.registration import RegistrationJob
from tests.factories import app_client, open_session
from tests.stack import ROOT, Stack, run_in_thread

TYPES = [(1, "clothes"), (2, "electronics"), (3, "misc")]
TABLES = {
    "sessions",
    "package_types",
    "packages",
    "cost_calculations",
    "daily_cost_totals",
    "dead_letters",
    "operators",
    "audit_entries",
}


@pytest.fixture
async def fresh_url(stack: Stack, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of this test's own on the stack's server; dropped afterwards."""
    if stack.settings.is_sqlite:
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.sqlite3'}"
        return
    url = make_url(stack.settings.DATABASE_URL)
    name = f"{url.database}_migrations"
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
            await connection.execute(text(f"CREATE DATABASE `{name}`"))
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        async with engine.begin() as connection:
            await connection.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        await engine.dispose()


@pytest.fixture
async def latin1_url(stack: Stack, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database whose default character set is latin1 (SQLite has none but UTF-8)."""
    if stack.settings.is_sqlite:
        yield f"sqlite+aiosqlite:///{tmp_path / 'latin1.sqlite3'}"
        return
    url = make_url(stack.settings.DATABASE_URL)
    name = f"{url.database}_latin1"
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
            await connection.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET latin1"))
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        async with engine.begin() as connection:
            await connection.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        await engine.dispose()


def alembic(func: Callable[..., None], config: Config, *args: str) -> None:
    """Run an alembic command off the event loop; a failure becomes an AssertionError with its message.

    A migration that fails leaves its connection behind, open in alembic's finished event loop: alembic
    keeps it in the `op` proxy, and the traceback's frames keep its engine. Both are let go here, so the
    connection is collected now, not during some later test (as a ResourceWarning turned error).
    """
    try:
        run_in_thread(func, config, *args)
        return
    except Exception as exc:
        failure = f"alembic {func.__name__} {' '.join(args)} failed: {type(exc).__name__}: {exc}"
    _let_go_of_failed_migration()
    raise AssertionError(failure)


def _let_go_of_failed_migration() -> None:
    proxy = getattr(alembic_op, "_proxy", None)
    if proxy is not None:
        proxy._remove_proxy()
    del proxy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


async def inspect_db(url: str, look: Any) -> Any:
    """Run `look(inspector, connection)` on a sync connection to the database at `url`."""
    engine = create_engine(Settings(DATABASE_URL=url))
    try:
        async with engine.connect() as connection:

            def run(sync: Connection) -> Any:
                return look(inspect(sync), sync)

            return await connection.run_sync(run)
    finally:
        await engine.dispose()


async def table_names(url: str) -> set[str]:
    names: set[str] = await inspect_db(url, lambda inspector, _: set(inspector.get_table_names()))
    return names


async def seeded_types(url: str) -> list[tuple[int, str]]:
    rows: list[tuple[int, str]] = await inspect_db(
        url,
        lambda _, sync: [
            (row.id, row.name) for row in sync.execute(text("SELECT id, name FROM package_types ORDER BY id"))
        ],
    )
    return rows


def test_one_head() -> None:
    script = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
    assert len(script.get_heads()) == 1


async def test_upgrade_seeds_the_types_and_matches_the_models(stack: Stack, fresh_url: str) -> None:
    config = stack.alembic_config(database_url=fresh_url)

    alembic(command.upgrade, config, "head")

    assert TABLES <= await table_names(fresh_url)
    assert await seeded_types(fresh_url) == TYPES
    # Raises AutoGenerateDiffsDetected when the models and the migrated schema differ.
    alembic(command.check, config)


async def test_downgrade_to_base_and_upgrade_again(stack: Stack, fresh_url: str) -> None:
    config = stack.alembic_config(database_url=fresh_url)
    alembic(command.upgrade, config, "head")

    alembic(command.downgrade, config, "base")
    assert not (await table_names(fresh_url)) & TABLES

    alembic(command.upgrade, config, "head")
    assert TABLES <= await table_names(fresh_url)
    assert await seeded_types(fresh_url) == TYPES
    alembic(command.check, config)


async def test_indexes_the_list_queries_need(stack: Stack, fresh_url: str) -> None:
    alembic(command.upgrade, stack.alembic_config(database_url=fresh_url), "head")

    indexes: list[dict[str, Any]] = await inspect_db(
        fresh_url, lambda inspector, _: inspector.get_indexes("packages")
    )

    columns = [list(index["column_names"]) for index in indexes]
    assert ["session_id", "type_id", "id"] in columns, columns
    assert ["session_id", "has_cost", "id"] in columns, columns


#: Cyrillic, an emoji outside the Basic Multilingual Plane (4 bytes in UTF-8), accents, CJK.
UNICODE_NAME = "Посылка 📦 для Zoë — 包裹"


async def test_unicode_names_round_trip_on_a_latin1_database(
    stack: Stack, latin1_url: str, tmp_path: Path
) -> None:
    """Whatever the server's or the database's default character set, a parcel's name is kept exactly."""
    alembic(command.upgrade, stack.alembic_config(database_url=latin1_url), "head")
    settings = stack.settings.model_copy(update={"DATABASE_URL": latin1_url})
    async with app_client(settings) as client:
        session_id = await open_session(client)
        engine = create_engine(settings)
        try:
            job = RegistrationJob(
                registration_id="5a0d6c1e-7a5e-4d55-9d6e-2f5a8d1c3b4a",
                session_id=session_id,
                name=UNICODE_NAME,
                weight_kg="1.250",
                type_id=1,
                content_value_usd="120.00",
                accepted_at=0.0,
            )
            package_id = await jobs.create_package(create_sessionmaker(engine), job, None)
        finally:
            await engine.dispose()
        response = await client.get(f"/packages/{package_id}/")
    assert response.status_code == 200, response.text
    assert response.json()["name"] == UNICODE_NAME


@pytest.mark.parametrize("stack", ["real"], indirect=True)  # SQLite stores text as UTF-8 only
async def test_tables_are_utf8mb4_on_a_latin1_database(stack: Stack, latin1_url: str) -> None:
    alembic(command.upgrade, stack.alembic_config(database_url=latin1_url), "head")

    def charsets(_: Any, sync: Connection) -> dict[str, set[str]]:
        rows = sync.execute(
            text(
                "SELECT TABLE_NAME, CHARACTER_SET_NAME FROM information_schema.COLUMNS"
                " WHERE TABLE_SCHEMA = DATABASE() AND CHARACTER_SET_NAME IS NOT NULL"
                " AND TABLE_NAME != 'alembic_version'"
            )
        )
        found: dict[str, set[str]] = {}
        for table, charset in rows:
            found.setdefault(table, set()).add(charset)
        return found

    found: dict[str, set[str]] = await inspect_db(latin1_url, charsets)
    assert {"sessions", "package_types", "packages"} <= set(found)
    assert all(names == {"utf8mb4"} for names in found.values()), found
    alembic(command.check, stack.alembic_config(database_url=latin1_url))


@pytest.mark.parametrize("stack", ["real"], indirect=True)  # SQLite has no connection character set
async def test_connections_are_utf8mb4_whatever_the_url_says(stack: Stack) -> None:
    url = make_url(stack.settings.DATABASE_URL).update_query_dict({"charset": "latin1"})
    engine = create_engine(Settings(DATABASE_URL=url.render_as_string(hide_password=False)))
    try:
        async with engine.connect() as connection:
            names = (
                await connection.execute(text("SELECT @@character_set_client, @@character_set_results"))
            ).one()
    finally:
        await engine.dispose()
    assert tuple(names) == ("utf8mb4", "utf8mb4")
