"""The `delivery` command: serve the API, apply migrations, and the operators' jobs."""

import argparse
import sys
from collections.abc import Sequence

from delivery.config import get_settings
from delivery.logs import configure_logging


def serve() -> int:
    import uvicorn

    settings = get_settings()
    uvicorn.run(
        "delivery.api:create_app",
        factory=True,
        host=settings.HOST,
        port=settings.PORT,
        log_config=None,
        access_log=False,  # delivery.access logs each request, with its request id
        proxy_headers=True,
        timeout_graceful_shutdown=20,
    )
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


def price() -> int:
    """Price every package without a cost now, in this process."""
    from delivery import jobs
    from delivery.errors import RateUnavailable
    from delivery.worker import run, runtime

    rt = runtime()
    try:
        priced = run(jobs.price_now(rt.maker, rt.rates))
    except RateUnavailable as exc:
        print(f"no rate, nothing priced: {exc}", file=sys.stderr)
        return 1
    finally:
        rt.close()
    print(f"priced {priced} packages")
    return 0


def refresh_rate() -> int:
    """Fetch the bank's rate now and replace the cached one."""
    from delivery.errors import RateUnavailable
    from delivery.worker import run, runtime

    rt = runtime()
    try:
        rate = run(rt.rates.refresh())
    except RateUnavailable as exc:
        print(f"rate not refreshed: {exc}", file=sys.stderr)
        return 1
    finally:
        rt.close()
    print(f"USD/RUB {rate.usd_rub} on {rate.date}, cached")
    return 0


COMMANDS = {"serve": serve, "migrate": migrate, "price": price, "refresh-rate": refresh_rate}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="delivery", description=__doc__)
    parser.add_argument("command", choices=COMMANDS, help="what to do")
    args = parser.parse_args(argv)
    configure_logging()
    return COMMANDS[args.command]()


if __name__ == "__main__":
    sys.exit(main())
