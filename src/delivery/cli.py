"""The `delivery` command: serve the API, apply migrations, and the operators' jobs."""

import argparse
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from delivery.config import get_settings
from delivery.errors import RateUnavailable
from delivery.logs import configure_logging

if TYPE_CHECKING:
    from fastapi import FastAPI

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
    from delivery import jobs

    priced = _in_worker_runtime(lambda rt: jobs.price_now(rt.maker, rt.rates), "no rate, nothing priced")
    if priced is None:
        return 1
    print(f"priced {priced} packages")
    return 0


def refresh_rate() -> int:
    """Fetch the bank's rate now and replace the cached one."""
    rate = _in_worker_runtime(lambda rt: rt.rates.refresh(), "rate not refreshed")
    if rate is None:
        return 1
    print(f"USD/RUB {rate.usd_rub} on {rate.date}, cached")
    return 0


def requeue_dead_letters() -> int:
    """Send every dead letter back to the registration queue, in this process."""
    from delivery import deadletters
    from delivery.broker import publish_job_body
    from delivery.worker import app, run, runtime, settings

    rt = runtime()

    async def publish(body: Any) -> None:
        publish_job_body(app, body)

    try:
        sent = run(deadletters.requeue(rt.maker, rt.store, publish, status_ttl=settings.STATUS_TTL))
    finally:
        rt.close()
    print(f"sent back {sent} dead letter{'' if sent == 1 else 's'}")
    return 0


COMMANDS = {"serve": serve, "migrate": migrate, "price": price, "refresh-rate": refresh_rate}
#: Commands of two words: `delivery dead-letters requeue`.
SUBCOMMANDS = {"dead-letters": {"requeue": requeue_dead_letters}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="delivery", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name in COMMANDS:
        commands.add_parser(name)
    for name, actions in SUBCOMMANDS.items():
        sub = commands.add_parser(name).add_subparsers(dest="action", required=True, metavar="action")
        for action in actions:
            sub.add_parser(action)
    args = parser.parse_args(argv)
    configure_logging()
    if args.command in SUBCOMMANDS:
        return SUBCOMMANDS[args.command][args.action]()
    return COMMANDS[args.command]()


if __name__ == "__main__":
    sys.exit(main())
