"""What a run makes of its own on the machine's services, and removes: a database, a vhost."""

import asyncio
import subprocess
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from realstack.machine import rabbitmqctl

T = TypeVar("T")


def run_in_thread(func: Callable[..., T], *args: Any) -> T:
    """`func(*args)` in a thread of its own, off any event loop of the caller's; its result, or its error."""
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(func(*args))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even where an event loop is already running."""
    return run_in_thread(lambda: asyncio.run(coro))


async def _server_sql(server: URL | str, *statements: str) -> None:
    engine = create_async_engine(server)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


def recreate_database(server: URL | str, name: str) -> None:
    """An empty database `name` on the server (dropped first if a run that was killed left it)."""
    run_sync(_server_sql(server, f"DROP DATABASE IF EXISTS `{name}`", f"CREATE DATABASE `{name}`"))


def drop_database(server: URL | str, name: str) -> None:
    run_sync(_server_sql(server, f"DROP DATABASE IF EXISTS `{name}`"))


def add_vhost(name: str, user: str = "guest") -> bool:
    """A vhost of one's own on this machine's node, `user` allowed everything in it; False where
    rabbitmqctl cannot make one (not installed, not allowed)."""
    try:
        rabbitmqctl("add_vhost", name, check=False, timeout=60)
        rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*", timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def delete_vhost(name: str) -> None:
    rabbitmqctl("delete_vhost", name)


def purge_queue(vhost: str, queue: str) -> None:
    rabbitmqctl("purge_queue", "-p", vhost, queue, check=False)
