"""Settings: exactly the variables of the API contract, read from the environment and `.env`."""

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

from limits import parse_many
from pydantic import (
    AfterValidator,
    AnyUrl,
    Field,
    HttpUrl,
    PositiveInt,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Where the embedded defaults keep their files (SQLite database, broker, store), relative to
#: the working directory: `make run` and the worker must start in the same folder.
EMBEDDED_DIR = Path("var")

_URL = TypeAdapter(AnyUrl)


def _each_a_url(value: str) -> str:
    """The nodes of a broker cluster as kombu's failover list, `amqp://a;amqp://b`: each part a URL."""
    parts = value.split(";")
    for index, part in enumerate(parts, start=1):
        try:
            _URL.validate_python(part)
        except ValidationError as exc:
            message = exc.errors()[0]["msg"]
            where = f"URL {index} of the ';'-separated list: " if len(parts) > 1 else ""
            raise ValueError(f"{where}{message}") from None
    return value


#: One broker URL, or several nodes of a cluster separated by `;`, tried in turn.
BrokerUrls = Annotated[str, AfterValidator(_each_a_url)]


def _rate_limits(value: str) -> str:
    """A rate limit in `limits`' notation: `200/minute`, or several windows, `10/minute;100/day`."""
    parse_many(value)  # its ValueError names the part it could not read
    return value


#: A limit per window, in `limits`' notation (`200/minute`, `10/minute;100/day`).
RateLimits = Annotated[str, AfterValidator(_rate_limits)]


def _trusted_proxies(value: str) -> str:
    """`FORWARDED_ALLOW_IPS`: addresses or networks, separated by commas (or `*`, any)."""
    for part in value.split(","):
        if part.strip() != "*":
            try:
                ipaddress.ip_network(part.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{part.strip()!r} is not an IP address or network") from None
    return value


def _cpu_count() -> int:
    """The CPUs this process may run on (a container's cpuset, say), not all of the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Settings(BaseSettings):
    # A variable set to an empty value (`ADMIN_TOKEN=` in an .env or a compose default) counts as unset, in
    # the environment and in `.env` alike: its default applies.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True, env_ignore_empty=True)

    DATABASE_URL: str = f"sqlite+aiosqlite:///./{EMBEDDED_DIR}/delivery.sqlite3"
    REDIS_URL: AnyUrl | None = None
    CELERY_BROKER_URL: BrokerUrls | None = None
    #: `quorum` declares the queues as RabbitMQ quorum queues (replicated across a cluster of 3+ nodes).
    BROKER_QUEUE_TYPE: Literal["classic", "quorum"] = "classic"
    CBR_DAILY_URL: HttpUrl = HttpUrl("https://www.cbr-xml-daily.ru/daily_json.js")
    RATE_CACHE_TTL: PositiveInt = 86400
    STATUS_TTL: PositiveInt = 86400
    RATE_RETRY_WINDOW: PositiveInt = 60
    COST_RECALC_INTERVAL: PositiveInt = 300
    SESSION_TTL: PositiveInt = 2592000
    COOKIE_SECURE: bool = False
    ADMIN_TOKEN: SecretStr | None = None
    HOST: str = "127.0.0.1"
    PORT: int = Field(default=8000, ge=1, le=65535)
    WEB_CONCURRENCY: PositiveInt = Field(default_factory=_cpu_count)
    #: Seconds the API keeps an idle client connection open.
    KEEP_ALIVE_TIMEOUT: PositiveInt = 75
    #: The proxies whose `X-Forwarded-For` gives the client address; unset: the connection's address, always.
    FORWARDED_ALLOW_IPS: Annotated[str, AfterValidator(_trusted_proxies)] | None = None
    #: The rate limits (`delivery.ratelimit`), counted in the store; off only to measure what they cost.
    RATE_LIMIT_ENABLED: bool = True
    RATE_LIMIT_REGISTRATIONS: RateLimits = "200/minute"  # per session
    RATE_LIMIT_READS: RateLimits = "1200/minute"  # per session: its packages, one package, a status
    RATE_LIMIT_SESSIONS: RateLimits = "60/minute"  # sessions opened per client address
    RATE_LIMIT_OPERATOR_KEYS: RateLimits = "10/minute;100/day"  # wrong operator keys per client address
    #: Deliveries of a failing registration job (each after a growing delay) before it is dead-lettered.
    DEAD_LETTER_AFTER: PositiveInt = 5

    @field_validator("ADMIN_TOKEN")
    @classmethod
    def _blank_token_is_none(cls, token: SecretStr | None) -> SecretStr | None:
        """A token of spaces would open the operator endpoints to a header of spaces: it means none."""
        return token if token is not None and token.get_secret_value().strip() else None

    @field_validator("FORWARDED_ALLOW_IPS", mode="before")
    @classmethod
    def _blank_is_no_proxy(cls, value: object) -> object:
        """Blank, as an .env template leaves it: no proxy trusted."""
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def is_sqlite(self) -> bool:
        return self.DATABASE_URL.startswith("sqlite")


def get_settings() -> Settings:
    return Settings()
