"""Rate limits: how many requests a session, or a client address, may make in a window of time, counted in
the store, so that every API process and container shares one count.

A rule (`Rule`) is a setting in the notation of `limits` (`200/minute`, or several windows at once,
`10/minute;100/day`), parsed by it into its rate limit items. The counters are `limits` storages: on Redis
the library's own, whose increment script (increment, and give a new key its expiry) the increments of
concurrent requests send together, as one pipeline (`delivery.grouping`); on the embedded stack a storage on
the disk (diskcache, SQLite underneath) that the API processes of the machine share.

Each window is a fixed window of the clock, shifted by a fixed offset per counted subject, so that not
every client's window ends at the same moment. Its end is known without asking the store: one increment per
request tells whether the request is within the limit, what remains and when the window resets, so the
limiter costs one store round trip per request at most. A request refused is counted like any other.

The limiter fails open: a store that does not answer within `DEADLINE` lets the request through unchecked
(a warning in the log, `delivery_rate_limit_unchecked_total`), and is left alone for `PAUSE` seconds, so that
the requests meanwhile go through at once instead of each waiting out the deadline. Counting needs the API
hosts' clocks in step (NTP), as the windows are read from them.
"""

import asyncio
import logging
import math
import sqlite3
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import diskcache
import redis.asyncio as aioredis
from limits import RateLimitItem, parse_many
from limits.aio.storage import RedisStorage, Storage
from limits.aio.storage.redis.bridge import RedisBridge
from limits.aio.storage.redis.redispy import RedispyBridge
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from delivery import metrics
from delivery.config import EMBEDDED_DIR, Settings
from delivery.errors import DeliveryError
from delivery.grouping import Grouped

logger = logging.getLogger(__name__)

#: Seconds the limiter waits for the store before it lets a request through unchecked.
DEADLINE = 0.5
#: Seconds a store that failed is left alone: the requests meanwhile go through unchecked at once.
PAUSE = 1.0
#: Where the embedded stack keeps its counters (apart from the store's file: no lock shared with it).
EMBEDDED_COUNTERS = EMBEDDED_DIR / "ratelimits"
#: Each rule and the setting that holds it.
RULE_SETTINGS = {
    "registrations": "RATE_LIMIT_REGISTRATIONS",
    "reads": "RATE_LIMIT_READS",
    "sessions": "RATE_LIMIT_SESSIONS",
    "operator-keys": "RATE_LIMIT_OPERATOR_KEYS",
}

#: `limits`' script for Redis: increment a counter, and give it its expiry when the increment made it.
INCR_EXPIRE = RedisBridge.SCRIPT_INCR_EXPIRE.decode()
#: One increment: the counter's key, its expiry in seconds if the increment makes it, the amount.
Increment = tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    items: tuple[RateLimitItem, ...]

    @classmethod
    def parse(cls, name: str, notation: str) -> "Rule":
        return cls(name, tuple(parse_many(notation)))

    def policy_name(self, item: RateLimitItem) -> str:
        """A window's name in the fields: the rule's, and its length when the rule has several."""
        return self.name if len(self.items) == 1 else f"{self.name}-{item.get_expiry()}s"


@dataclass(frozen=True, slots=True)
class Window:
    item: RateLimitItem
    #: Requests counted in it so far.
    count: int
    #: Seconds until it ends.
    reset: int
    #: Whether it refuses the request.
    over: bool


@dataclass(frozen=True, slots=True)
class Verdict:
    rule: Rule
    windows: tuple[Window, ...]

    @property
    def allowed(self) -> bool:
        return not any(window.over for window in self.windows)

    @property
    def retry_after(self) -> int:
        """Seconds until every window that refuses the request has ended."""
        return max((window.reset for window in self.windows if window.over), default=0)

    def headers(self) -> dict[str, str]:
        """`Retry-After`, and the `RateLimit-Policy` and `RateLimit` fields of the IETF draft
        (draft-ietf-httpapi-ratelimit-headers): each window's quota and length, what remains, when it ends."""
        policies, limits = [], []
        for window in self.windows:
            name = self.rule.policy_name(window.item)
            policies.append(f'"{name}";q={window.item.amount};w={window.item.get_expiry()}')
            limits.append(f'"{name}";r={max(window.item.amount - window.count, 0)};t={window.reset}')
        return {
            "Retry-After": str(self.retry_after),
            "RateLimit-Policy": ", ".join(policies),
            "RateLimit": ", ".join(limits),
        }


class RateLimited(DeliveryError):
    """A request over a rate limit (429)."""

    def __init__(self, verdict: Verdict) -> None:
        over = [window.item for window in verdict.windows if window.over]
        super().__init__(
            f"too many requests: the limit of {verdict.rule.name} is {', '.join(str(item) for item in over)};"
            f" try again in {verdict.retry_after} s"
        )
        self.verdict = verdict


class Limiter:
    """The rules, and the storage their counters are kept in."""

    def __init__(self, storage: "CounterStorage", rules: Mapping[str, Rule]) -> None:
        self.storage = storage
        self.rules = dict(rules)
        # Each rule's counts exported from the start, at 0: a dashboard shows none refused, not no data.
        for name in self.rules:
            metrics.RATE_LIMITED.labels(name)
            metrics.RATE_LIMIT_UNCHECKED.labels(name)
        #: Until when (the monotonic clock) the store is left alone after a failure.
        self._paused_until = -math.inf

    async def hit(self, rule_name: str, subject: str) -> Verdict | None:
        """Count one request of `subject` (a session, an address) against the rule; its verdict, or None when
        the store did not answer (the request goes through unchecked)."""
        return await self._count(rule_name, subject, 1)

    async def check(self, rule_name: str, subject: str) -> Verdict | None:
        """Whether one more request of `subject` would be within the rule, counting nothing."""
        return await self._count(rule_name, subject, 0)

    async def _count(self, rule_name: str, subject: str, amount: int) -> Verdict | None:
        rule = self.rules[rule_name]
        if time.monotonic() < self._paused_until:
            metrics.RATE_LIMIT_UNCHECKED.labels(rule_name).inc()
            return None
        now = time.time()
        plans = [_plan(rule, item, subject, now) for item in rule.items]
        try:
            async with asyncio.timeout(DEADLINE):
                if len(plans) == 1:
                    key, reset = plans[0]
                    counts = [await self.storage.incr(key, reset + 1, amount)]
                else:
                    counts = await asyncio.gather(
                        *(self.storage.incr(key, reset + 1, amount) for key, reset in plans)
                    )
        except Exception as exc:  # whatever the store's failure: the request goes on
            self._paused_until = time.monotonic() + PAUSE
            metrics.RATE_LIMIT_UNCHECKED.labels(rule_name).inc()
            logger.warning(
                "rate limits not checked for %s s, the store did not answer rule=%s error=%r",
                PAUSE,
                rule_name,
                exc,
            )
            return None
        # Counted (amount 1): over when the count passed the quota. Checked only (0): when it reached it.
        windows = tuple(
            Window(item, count, reset, count + (1 - amount) > item.amount)
            for item, (_, reset), count in zip(rule.items, plans, counts, strict=True)
        )
        verdict = Verdict(rule, windows)
        if not verdict.allowed:
            metrics.RATE_LIMITED.labels(rule_name).inc()
        return verdict

    async def close(self) -> None:
        await self.storage.close()


def _plan(rule: Rule, item: RateLimitItem, subject: str, now: float) -> tuple[str, int]:
    """The key of the window `now` falls in, for this rule, item and subject, and the seconds until it ends.

    The offset is the same in every process (crc32, not Python's per-process `hash`)."""
    length = item.get_expiry()
    shifted = now + zlib.crc32(subject.encode()) % length
    index = int(shifted // length)
    reset = max(math.ceil((index + 1) * length - shifted), 1)
    return item.key_for(rule.name, subject, str(index)), reset


class CounterStorage(Protocol):
    """What the limiter needs of a `limits` storage: its increment, and closing it with the app."""

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int: ...

    async def close(self) -> None: ...


class PipelinedRedisStorage(RedisStorage):
    """`limits`' Redis storage, on redis-py, whose increments of concurrent callers share a round trip: while
    one pipeline is on its way, the increments made meanwhile go out together as the next. Each is the
    library's own script, sent whole (EVAL): nothing to load first, whatever the server forgot."""

    def __init__(self, url: str) -> None:
        super().__init__(
            f"async+{url}",
            implementation="redispy",
            socket_connect_timeout=DEADLINE,
            socket_timeout=2 * DEADLINE,
            # Not tried again (redis-py's default is thrice, with backoff): the request goes on unchecked.
            retry=cast(str, Retry(NoBackoff(), 0)),  # limits types its pass-through options as scalars
        )
        assert isinstance(self.bridge, RedispyBridge)  # implementation="redispy"
        self._client = cast(aioredis.Redis, self.bridge.get_connection())
        self._increments: Grouped[Increment, int] = Grouped(
            self._send, closed=lambda: ConnectionError("the rate limiter is closed")
        )

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return await self._increments.submit((self.bridge.prefixed_key(key), expiry, amount))

    async def _send(self, group: list[Increment], _deadline: float | None) -> Sequence[int | BaseException]:
        async with self._client.pipeline(transaction=False) as pipe:
            for key, expiry, amount in group:
                pipe.eval(INCR_EXPIRE, 1, key, expiry, amount)
            return [
                outcome if isinstance(outcome, BaseException) else int(outcome)
                for outcome in await pipe.execute(raise_on_error=False)
            ]

    async def close(self) -> None:
        await self._increments.close()
        await self._client.aclose()


class EmbeddedStorage(Storage):
    """A `limits` storage on the disk, shared by the API processes of one machine: each group of concurrent
    increments is one SQLite transaction."""

    PREFIX = "LIMITS:"

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self._cache = diskcache.Cache(str(directory), timeout=DEADLINE)
        self._increments: Grouped[Increment, int] = Grouped(
            self._send, closed=lambda: ConnectionError("the rate limiter is closed")
        )

    @property
    def base_exceptions(self) -> tuple[type[Exception], ...]:
        return (diskcache.Timeout, sqlite3.Error)

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return await self._increments.submit((self.PREFIX + key, expiry, amount))

    async def _send(self, group: list[Increment], _deadline: float | None) -> Sequence[int]:
        return await asyncio.to_thread(self._increment, group)

    def _increment(self, group: list[Increment]) -> list[int]:
        counts = []
        with self._cache.transact():
            for key, expiry, amount in group:
                count = int(self._cache.incr(key, amount))
                if count == amount:  # made by this increment (as the Redis script decides it)
                    self._cache.touch(key, expire=expiry)
                counts.append(count)
        return counts

    async def get(self, key: str) -> int:
        return int(await asyncio.to_thread(self._cache.get, self.PREFIX + key, 0))

    async def get_expiry(self, key: str) -> float:
        # diskcache answers (value, the epoch second it expires at, or None).
        found: tuple[object, float | None] = await asyncio.to_thread(
            self._cache.get, self.PREFIX + key, expire_time=True
        )
        return time.time() if found[1] is None else found[1]

    async def check(self) -> bool:
        try:
            await asyncio.to_thread(self._cache.get, self.PREFIX)
        except self.base_exceptions:
            return False
        return True

    async def reset(self) -> int | None:
        return await asyncio.to_thread(self._reset)

    def _reset(self) -> int:
        keys = [key for key in self._cache.iterkeys() if str(key).startswith(self.PREFIX)]
        for key in keys:
            self._cache.delete(key)
        return len(keys)

    async def clear(self, key: str) -> None:
        await asyncio.to_thread(self._cache.delete, self.PREFIX + key)

    async def close(self) -> None:
        await self._increments.close()
        self._cache.close()


def create_limiter(settings: Settings) -> Limiter | None:
    """The limiter of the settings' rules, counting in Redis or on the disk; None when limits are off."""
    if not settings.RATE_LIMIT_ENABLED:
        return None
    storage: CounterStorage
    if settings.REDIS_URL is None:
        storage = EmbeddedStorage(EMBEDDED_COUNTERS.resolve())
    else:
        storage = PipelinedRedisStorage(str(settings.REDIS_URL))
    rules = {name: Rule.parse(name, getattr(settings, variable)) for name, variable in RULE_SETTINGS.items()}
    return Limiter(storage, rules)
