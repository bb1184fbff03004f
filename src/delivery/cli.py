"""The `delivery` command: serve the API, apply migrations, the operators' jobs, and the operators."""

import argparse
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from delivery.config import get_settings
from delivery.errors import RateUnavailable
from delivery.logs import configure_logging

if TYPE_CHECKING:
    from datetime import datetime

    from fastapi import FastAPI
    from sqlalchemy.ext.asyncio import AsyncSession

    from delivery.audit import Action
    from delivery.worker import Runtime

T = TypeVar("T")


def api_process() -> "FastAPI":
    """The app of one API process. uvicorn calls this in each process it starts (`WEB_CONCURRENCY` of them,
    started afresh, not forked): each sets up its own logging and its metrics."""
    from delivery import metrics
    from delivery.api import create_app

    configure_logging()
    metrics.start_api_process()
    return create_app()


def serve() -> int:
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    settings = get_settings()
    config = uvicorn.Config(
        "delivery.cli:api_process",
        factory=True,
        workers=settings.WEB_CONCURRENCY,
        # A process that does not answer the supervisor's ping within this is killed and started again
        # (uvicorn's default is 5 s). A process starting on a busy or CPU-limited machine imports everything
        # afresh and can take longer: with 5 s it would be killed while starting, again and again.
        timeout_worker_healthcheck=30,
        # Longer than the idle timeout of the clients' and proxies' connection pools: a server that closes an
        # idle connection at the moment a client reuses it fails that request (uvicorn's 5 s equals httpx's).
        timeout_keep_alive=settings.KEEP_ALIVE_TIMEOUT,
        host=settings.HOST,
        port=settings.PORT,
        log_config=None,
        access_log=False,  # delivery.access logs each request, with its request id
        # The client address (which the rate limits count per) is the connection's, unless the connection
        # comes from a trusted proxy: then its X-Forwarded-For. uvicorn itself would trust 127.0.0.1 and ::1
        # when FORWARDED_ALLOW_IPS is unset, so any local process could name the address it liked.
        proxy_headers=settings.FORWARDED_ALLOW_IPS is not None,
        forwarded_allow_ips=settings.FORWARDED_ALLOW_IPS or "",
        timeout_graceful_shutdown=20,
    )
    if config.workers == 1:
        uvicorn.Server(config).run()
    else:
        from delivery.supervisor import Supervisor

        supervisor = Supervisor(config, sockets=[config.bind_socket()])
        supervisor.run()
        if supervisor.failed_to_start:
            return STARTUP_FAILURE
    return 0


def migrate() -> int:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "delivery:migrations")
    config.set_main_option("path_separator", "os")
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")
    return 0


def _in_worker_runtime(job: "Callable[[Runtime], Coroutine[Any, Any, T]]", failed: str) -> T | None:
    """Run a job on the worker's runtime (its loop and connections), in this process; None if no rate."""
    from delivery.worker import run, runtime

    rt = runtime()
    try:
        return run(job(rt))
    except RateUnavailable as exc:
        print(f"{failed}: {exc}", file=sys.stderr)
        return None
    finally:
        rt.close()


def price() -> int:
    """Price every package without a cost now, in this process."""
    from delivery import audit, jobs

    async def job(rt: "Runtime") -> int:
        try:
            priced = await jobs.price_now(rt.maker, rt.rates)
        except Exception as exc:
            await _record(rt, audit.Action.PRICING_RUN, None, audit.failed(exc))
            raise
        await _record(rt, audit.Action.PRICING_RUN, None, f"ok: priced {priced}")
        return priced

    priced = _in_worker_runtime(job, "no rate, nothing priced")
    if priced is None:
        return 1
    print(f"priced {priced} packages")
    return 0


async def _record(rt: "Runtime", action: "Action", target: str | None, outcome: str) -> None:
    """An audit entry for a command, by the shell's user."""
    from delivery import audit

    async with rt.maker() as db:
        await audit.record(db, operator=audit.shell_operator(), action=action, object=target, outcome=outcome)


def refresh_rate() -> int:
    """Fetch the bank's rate now and replace the cached one."""
    rate = _in_worker_runtime(lambda rt: rt.rates.refresh(), "rate not refreshed")
    if rate is None:
        return 1
    print(f"USD/RUB {rate.usd_rub} on {rate.date}, cached")
    return 0


def requeue_dead_letters() -> int:
    """Send every dead letter back to the registration queue, in this process."""
    from delivery import audit, deadletters
    from delivery.broker import publish_job_body
    from delivery.worker import app, run, runtime, settings

    rt = runtime()
    published = 0

    async def publish(body: Any) -> None:
        nonlocal published
        publish_job_body(app, body)
        published += 1

    async def requeue() -> int:
        action = audit.Action.DEAD_LETTERS_REQUEUE
        try:
            sent = await deadletters.requeue(rt.maker, rt.store, publish, status_ttl=settings.STATUS_TTL)
        except Exception as exc:
            await _record(rt, action, "dead letters", f"failed: sent back {published}, then {exc!r}")
            raise
        await _record(rt, action, "dead letters", f"ok: sent back {sent}")
        return sent

    try:
        sent = run(requeue())
    finally:
        rt.close()
    print(f"sent back {sent} dead letter{'' if sent == 1 else 's'}")
    return 0


def _with_database(work: "Callable[[AsyncSession], Coroutine[Any, Any, int]]") -> int:
    """Run `work` on a database session of its own, in this process; its exit code."""
    import asyncio

    from delivery.db import create_engine, create_sessionmaker

    async def session_work() -> int:
        engine = create_engine(get_settings())
        try:
            async with create_sessionmaker(engine)() as db:
                return await work(db)
        finally:
            await engine.dispose()

    return asyncio.run(session_work())


def add_operator(name: str) -> int:
    """Add a named operator and print their key, this once: only its hash is kept."""
    from delivery import audit, operators

    async def add(db: "AsyncSession") -> int:
        try:
            operator, key = await operators.add(db, name)
        except (operators.InvalidName, operators.OperatorExists) as exc:
            print(f"operator not added: {exc}", file=sys.stderr)
            return 1
        await audit.record(
            db,
            operator=audit.shell_operator(),
            action=audit.Action.OPERATOR_ADD,
            object=f"operator {operator.name}",
            outcome="ok",
        )
        print(f"operator {operator.name} added; their key, shown this once:", file=sys.stderr)
        print(key)
        return 0

    return _with_database(add)


def list_operators() -> int:
    """List the operators: name, when added, when revoked (`-`: not revoked)."""
    from delivery import operators

    async def listing(db: "AsyncSession") -> int:
        rows = [("NAME", "CREATED", "REVOKED")]
        for operator in await operators.listed(db):
            revoked = "-" if operator.revoked_at is None else _when(operator.revoked_at)
            rows.append((operator.name, _when(operator.created_at), revoked))
        width = max(len(row[0]) for row in rows)
        for name, created, revoked in rows:
            print(f"{name:<{width}}  {created:<25}  {revoked}")
        return 0

    return _with_database(listing)


def _when(moment: "datetime") -> str:
    return moment.isoformat(timespec="seconds")


def revoke_operator(name: str) -> int:
    """Revoke an operator's key: from now on it is refused (403)."""
    from delivery import audit, operators

    async def revoke(db: "AsyncSession") -> int:
        try:
            operator, revoked_now = await operators.revoke(db, name)
        except operators.UnknownOperator as exc:
            print(f"nothing revoked: {exc}", file=sys.stderr)
            return 1
        if not revoked_now:
            assert operator.revoked_at is not None
            print(f"operator {name} was revoked already, at {_when(operator.revoked_at)}")
            return 0
        await audit.record(
            db,
            operator=audit.shell_operator(),
            action=audit.Action.OPERATOR_REVOKE,
            object=f"operator {name}",
            outcome="ok",
        )
        print(f"operator {name} revoked")
        return 0

    return _with_database(revoke)


COMMANDS = {"serve": serve, "migrate": migrate, "price": price, "refresh-rate": refresh_rate}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="delivery", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, command in COMMANDS.items():
        commands.add_parser(name, help=command.__doc__).set_defaults(run=lambda _, c=command: c())
    letters = commands.add_parser("dead-letters", help="the registration jobs that could not succeed")
    letters_actions = letters.add_subparsers(dest="action", required=True, metavar="action")
    requeue = letters_actions.add_parser("requeue", help=requeue_dead_letters.__doc__)
    requeue.set_defaults(run=lambda _: requeue_dead_letters())
    staff = commands.add_parser("operators", help="named operators and their keys (X-Admin-Token)")
    staff_actions = staff.add_subparsers(dest="action", required=True, metavar="action")
    add = staff_actions.add_parser("add", help=add_operator.__doc__)
    add.add_argument("name")
    add.set_defaults(run=lambda args: add_operator(args.name))
    listing = staff_actions.add_parser("list", help=list_operators.__doc__)
    listing.set_defaults(run=lambda _: list_operators())
    revoke = staff_actions.add_parser("revoke", help=revoke_operator.__doc__)
    revoke.add_argument("name")
    revoke.set_defaults(run=lambda args: revoke_operator(args.name))
    args = parser.parse_args(argv)
    configure_logging()
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
