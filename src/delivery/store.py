"""The key-value store behind registration statuses, idempotency keys, the rate cache and its lock.

Redis when `REDIS_URL` is set; otherwise an embedded store on disk (diskcache, SQLite underneath),
which several processes on one machine share safely. Both offer the same few atomic operations.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from hashlib import sha1
from pathlib import Path
from typing import Any, Protocol, TypeVar

import diskcache
import redis.asyncio as aioredis
import redis.exceptions
from redis._parsers import (
    BaseParser,
    _AsyncHiredisParser,
    _AsyncRESP2Parser,
    _AsyncRESP3Parser,
    _HiredisParser,
    _RESP2Parser,
    _RESP3Parser,
)
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.utils import DEFAULT_RESP_VERSION, HIREDIS_AVAILABLE

from delivery.config import EMBEDDED_DIR, Settings
from delivery.errors import AnswerLost, ServiceUnavailable
from delivery.grouping import Grouped

T = TypeVar("T")
#: The two values of a registration's fate key: a worker (or a request answered 202) took it, or the request
#: that stored it withdrew it. Whichever is written first stands (see `Store.withdraw` and `Store.take`).
TAKEN = "taken"
WITHDRAWN = "withdrawn"


class PersistenceFailing(redis.exceptions.ResponseError):
    """MISCONF: the server stopped taking writes because it cannot persist them (a failed save, with
    `stop-writes-on-bgsave-error`)."""


class NotEnoughReplicas(redis.exceptions.ResponseError):
    """NOREPLICAS: fewer healthy replicas than `min-replicas-to-write`: writes wait for them."""


class ServerBusy(redis.exceptions.ResponseError):
    """BUSY: a script or function runs past its time limit and holds the server."""


#: The error codes redis-py answers with a plain ResponseError, given classes of their own: what is raised
#: says what the server meant, and nothing here reads an error's message.
_ERROR_CODES: dict[str, type[redis.exceptions.ResponseError]] = {
    "MISCONF": PersistenceFailing,
    "NOREPLICAS": NotEnoughReplicas,
    "BUSY": ServerBusy,
}


def _knowing_the_codes(parser: type[BaseParser]) -> type[BaseParser]:
    """`parser`, mapping those codes too: redis-py maps an error's first word to its class through the
    parser's `EXCEPTION_CLASSES`, and its own cluster client adds the cluster's codes there."""
    codes = {**parser.EXCEPTION_CLASSES, **_ERROR_CODES}
    return type(f"Store{parser.__name__}", (parser,), {"EXCEPTION_CLASSES": codes})


#: The parser redis-py would use for each protocol (hiredis speaks both, where installed).
_PARSERS: dict[int, type[BaseParser]] = (
    dict.fromkeys((2, 3), _knowing_the_codes(_AsyncHiredisParser))
    if HIREDIS_AVAILABLE
    else {2: _knowing_the_codes(_AsyncRESP2Parser), 3: _knowing_the_codes(_AsyncRESP3Parser)}
)


#: The same for redis-py's blocking client (Celery's result backend).
_SYNC_PARSERS: dict[int, type[BaseParser]] = (
    dict.fromkeys((2, 3), _knowing_the_codes(_HiredisParser))
    if HIREDIS_AVAILABLE
    else {2: _knowing_the_codes(_RESP2Parser), 3: _knowing_the_codes(_RESP3Parser)}
)


def _parser_for(url: str, *, blocking: bool = False) -> type[BaseParser]:
    """The parser of the protocol the URL names (`?protocol=2`), or of redis-py's default one; for the
    blocking client with `blocking`."""
    protocol = int(str(parse_url(url).get("protocol") or DEFAULT_RESP_VERSION))
    return (_SYNC_PARSERS if blocking else _PARSERS)[protocol]


def blocking_parser_for(url: str) -> type[BaseParser]:
    """The parser a blocking redis-py client of `url` needs to raise the store's error classes."""
    return _parser_for(url, blocking=True)


#: What Redis raises when it cannot serve now but may soon: away or silent, or up and refusing — loading its
#: data after a restart (LOADING, a ConnectionError in redis-py), out of memory with `noeviction` (OOM), a
#: replica refusing writes after a failover (READONLY) or serving nothing without its master
#: (MASTERDOWN), unable to persist (MISCONF), short of replicas (NOREPLICAS), held by a script (BUSY). The
#: store answers these as unavailable: a 503 with Retry-After in the API, a transient failure in the worker.
REDIS_UNAVAILABLE: tuple[type[redis.exceptions.RedisError], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.MasterDownError,
    *_ERROR_CODES.values(),
)


class KeyValue(Protocol):
    """What a cache needs of the store (the rate cache, its lock and failure memory)."""

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, *, ttl: float) -> None: ...

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        """Set `key` only if it does not exist; True when this call set it."""
        ...

    async def delete(self, key: str, *, if_value: str | None = None) -> None:
        """Delete `key`; with `if_value`, only while it still holds that value."""
        ...


class Store(KeyValue, Protocol):
    """The key-value store with the registrations' compound writes, each one round trip on Redis."""

    async def index_add(self, index: str, member: str, score: float) -> None:
        """Put `member` in the sorted `index` with `score` (or move it there)."""
        ...

    async def index_touch(self, index: str, members: Sequence[str], score: float) -> None:
        """Move those of `members` still in `index` to `score`; the others stay out."""
        ...

    async def index_remove(self, index: str, member: str) -> None: ...

    async def index_below(self, index: str, score: float, limit: int) -> list[str]:
        """Up to `limit` members of `index` whose score is below `score`, lowest first."""
        ...

    async def put_pending(
        self,
        key: str,
        value: str,
        *,
        ttl: float,
        index: str,
        member: str,
        score: float,
        fate: str,
        claim: str | None = None,
    ) -> tuple[str, str] | None:
        """Set `key` and put `member` in `index`, at once, clearing a withdrawal left in `fate` by an
        earlier attempt of the same registration. With `claim` (a key naming the registration, e.g. an
        Idempotency-Key's), first look it up: if it names a key that still exists, answer (that key, its
        value) without changing anything; otherwise claim it for `key` and go on."""
        ...

    async def withdraw(
        self,
        key: str,
        value: str,
        *,
        fate: str,
        ttl: float,
        index: str,
        member: str,
        claim: str | None = None,
    ) -> bool:
        """Undo `put_pending` of `value` for good, unless `fate` says the registration was taken or `key`
        holds another value (a later attempt's, or an outcome): mark `fate` withdrawn for `ttl`, delete `key`,
        take `member` out of `index` and release `claim` if it names `key`. False (and nothing changed)
        otherwise."""
        ...

    async def take(self, fates: Sequence[str], *, ttl: float) -> list[bool]:
        """For each fate key, at once: False if it says withdrawn; otherwise mark it taken (for `ttl`, if
        not already) and True."""
        ...

    async def finish_pending(
        self, records: Sequence[tuple[str, str]], *, index: str, members: Sequence[str]
    ) -> list[bool]:
        """Overwrite each existing key with its value (keeping its expiry) and take `members` out of
        `index`, at once; for each record, whether its key still existed."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


_DELETE_IF_VALUE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: key, index, fate[, claim]; ARGV: value, ttl ms, member, score. The claim holds the key it names.
_PUT_PENDING = """
if KEYS[4] then
  local held = redis.call('GET', KEYS[4])
  if held then
    local value = redis.call('GET', held)
    if value then return {held, value} end
  end
  redis.call('SET', KEYS[4], KEYS[1], 'PX', ARGV[2])
end
if redis.call('GET', KEYS[3]) == 'withdrawn' then redis.call('DEL', KEYS[3]) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
return false
"""

# KEYS: key, index, fate[, claim]; ARGV: member, ttl ms, value.
_WITHDRAW = """
if redis.call('GET', KEYS[3]) == 'taken' then return 0 end
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[3], 'withdrawn', 'PX', ARGV[2])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if KEYS[4] and redis.call('GET', KEYS[4]) == KEYS[1] then redis.call('DEL', KEYS[4]) end
return 1
"""

# KEYS: fate; ARGV: ttl ms.
_TAKE = """
local fate = redis.call('GET', KEYS[1])
if fate == 'withdrawn' then return 0 end
if not fate then redis.call('SET', KEYS[1], 'taken', 'PX', ARGV[1]) end
return 1
"""


#: One call of a script: its keys and its arguments.
ScriptCall = tuple[list[str], list[Any]]


class _Script:
    """A Lua script whose calls are sent as one pipeline (each call its own script run, atomic as ever; a
    call's error is its caller's alone)."""

    def __init__(self, client: aioredis.Redis, script: str) -> None:
        self._redis = client
        self._script = script
        self._sha = sha1(script.encode()).hexdigest()

    async def run(self, calls: list[ScriptCall], _deadline: float | None = None) -> list[Any]:
        results = await self._pipeline(calls)
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in results):
            # The server does not know the script (its first use, or the server restarted): loaded, and the
            # calls it refused (which did not run) sent again.
            await self._redis.script_load(self._script)
            refused = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
            for i, outcome in zip(refused, await self._pipeline([calls[i] for i in refused]), strict=True):
                results[i] = outcome
        return results

    async def _pipeline(self, calls: list[ScriptCall]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(self._sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))


class RedisStore:
    def __init__(self, url: str) -> None:
        self._redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=30,
            # A pooled connection that died with a Redis restart fails its first command: tried again, on a
            # new connection, before it becomes a 503. Every command here may run twice (SET, ZADD, the
            # scripts: a second put_pending finds its own claim and answers as a duplicate would).
            retry=Retry(ExponentialBackoff(cap=0.25, base=0.05), 2),
            retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
            parser_class=_parser_for(url),
        )
        self._delete_if_value = self._redis.register_script(_DELETE_IF_VALUE)
        # Called by every registration the API accepts: the calls of concurrent requests share round trips.
        self._put_pending: Grouped[ScriptCall, Any] = Grouped(
            _Script(self._redis, _PUT_PENDING).run,
            closed=lambda: redis.exceptions.ConnectionError("the store is closed"),
        )
        self._withdraw = self._redis.register_script(_WITHDRAW)
        self._take = _Script(self._redis, _TAKE)

    async def get(self, key: str) -> str | None:
        async with _unavailable_on_error():
            value = await self._redis.get(key)
            return None if value is None else str(value)

    async def set(self, key: str, value: str, *, ttl: float) -> None:
        async with _unavailable_on_error():
            await self._redis.set(key, value, px=_ms(ttl))

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        async with _unavailable_on_error():
            return bool(await self._redis.set(key, value, px=_ms(ttl), nx=True))

    async def delete(self, key: str, *, if_value: str | None = None) -> None:
        async with _unavailable_on_error():
            if if_value is None:
                await self._redis.delete(key)
            else:
                await self._delete_if_value(keys=[key], args=[if_value])

    async def index_add(self, index: str, member: str, score: float) -> None:
        async with _unavailable_on_error():
            await self._redis.zadd(index, {member: score})

    async def index_touch(self, index: str, members: Sequence[str], score: float) -> None:
        if not members:
            return
        async with _unavailable_on_error():
            await self._redis.zadd(index, dict.fromkeys(members, score), xx=True)

    async def index_remove(self, index: str, member: str) -> None:
        async with _unavailable_on_error():
            await self._redis.zrem(index, member)

    async def index_below(self, index: str, score: float, limit: int) -> list[str]:
        async with _unavailable_on_error():
            members = await self._redis.zrangebyscore(index, "-inf", f"({score}", start=0, num=limit)
            return [str(member) for member in members]

    async def put_pending(
        self,
        key: str,
        value: str,
        *,
        ttl: float,
        index: str,
        member: str,
        score: float,
        fate: str,
        claim: str | None = None,
    ) -> tuple[str, str] | None:
        keys = [key, index, fate] if claim is None else [key, index, fate, claim]
        async with _unavailable_on_error():
            held = await self._put_pending.submit((keys, [value, _ms(ttl), member, score]))
        return None if not held else (str(held[0]), str(held[1]))

    async def withdraw(
        self,
        key: str,
        value: str,
        *,
        fate: str,
        ttl: float,
        index: str,
        member: str,
        claim: str | None = None,
    ) -> bool:
        keys = [key, index, fate] if claim is None else [key, index, fate, claim]
        async with _unavailable_on_error():
            return bool(await self._withdraw(keys=keys, args=[member, _ms(ttl), value]))

    async def take(self, fates: Sequence[str], *, ttl: float) -> list[bool]:
        if not fates:
            return []
        async with _unavailable_on_error():
            results = await self._take.run([([fate], [_ms(ttl)]) for fate in fates])
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return [bool(result) for result in results]

    async def finish_pending(
        self, records: Sequence[tuple[str, str]], *, index: str, members: Sequence[str]
    ) -> list[bool]:
        async with _unavailable_on_error(), self._redis.pipeline(transaction=True) as pipe:
            for key, value in records:
                pipe.set(key, value, xx=True, keepttl=True)
            if members:
                pipe.zrem(index, *members)
            results = await pipe.execute()
            return [bool(done) for done in results[: len(records)]]

    async def ping(self) -> None:
        async with _unavailable_on_error():
            await self._redis.ping()

    async def close(self) -> None:
        await self._put_pending.close()
        await self._redis.aclose()


class EmbeddedStore:
    """diskcache runs each operation in an SQLite transaction; the compound ones run in one `transact`.

    An index is kept as one key per member, `<index>\0<member>` -> score: a dev-sized index, read by
    scanning the keys. A lock held too long by another process (diskcache's Timeout) is the store being
    unavailable, as a Redis timeout is.
    """

    def __init__(self, directory: Path) -> None:
        self._cache = diskcache.Cache(str(directory), timeout=30)

    async def _run(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(func, *args, **kwargs)
        except diskcache.Timeout as exc:
            raise ServiceUnavailable("store") from exc

    async def get(self, key: str) -> str | None:
        value = await self._run(self._cache.get, key)
        return None if value is None else str(value)

    async def set(self, key: str, value: str, *, ttl: float) -> None:
        await self._run(self._cache.set, key, value, expire=ttl)

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        return bool(await self._run(self._cache.add, key, value, expire=ttl))

    async def delete(self, key: str, *, if_value: str | None = None) -> None:
        await self._run(self._delete, key, if_value)

    def _delete(self, key: str, if_value: str | None) -> None:
        with self._cache.transact():
            if if_value is None or self._cache.get(key) == if_value:
                self._cache.delete(key)

    async def index_add(self, index: str, member: str, score: float) -> None:
        await self._run(self._cache.set, f"{index}\0{member}", score)

    async def index_touch(self, index: str, members: Sequence[str], score: float) -> None:
        await self._run(self._index_touch, index, members, score)

    def _index_touch(self, index: str, members: Sequence[str], score: float) -> None:
        with self._cache.transact():
            for member in members:
                if f"{index}\0{member}" in self._cache:
                    self._cache.set(f"{index}\0{member}", score)

    async def index_remove(self, index: str, member: str) -> None:
        await self._run(self._cache.delete, f"{index}\0{member}")

    async def index_below(self, index: str, score: float, limit: int) -> list[str]:
        return await self._run(self._index_below, index, score, limit)

    def _index_below(self, index: str, score: float, limit: int) -> list[str]:
        prefix = f"{index}\0"
        found = []
        for key in self._cache.iterkeys():
            if isinstance(key, str) and key.startswith(prefix):
                member_score = self._cache.get(key)  # a timestamp
                if member_score is not None and member_score < score:
                    found.append((member_score, key.removeprefix(prefix)))
        return [member for _, member in sorted(found)[:limit]]

    async def put_pending(
        self,
        key: str,
        value: str,
        *,
        ttl: float,
        index: str,
        member: str,
        score: float,
        fate: str,
        claim: str | None = None,
    ) -> tuple[str, str] | None:
        return await self._run(self._put_pending, key, value, ttl, index, member, score, fate, claim)

    def _put_pending(
        self,
        key: str,
        value: str,
        ttl: float,
        index: str,
        member: str,
        score: float,
        fate: str,
        claim: str | None,
    ) -> tuple[str, str] | None:
        with self._cache.transact():
            if claim is not None:
                held = self._cache.get(claim)
                if held is not None and (held_value := self._cache.get(held)) is not None:
                    return str(held), str(held_value)
                self._cache.set(claim, key, expire=ttl)
            if self._cache.get(fate) == WITHDRAWN:
                self._cache.delete(fate)
            self._cache.set(key, value, expire=ttl)
            self._cache.set(f"{index}\0{member}", score)
            return None

    async def withdraw(
        self,
        key: str,
        value: str,
        *,
        fate: str,
        ttl: float,
        index: str,
        member: str,
        claim: str | None = None,
    ) -> bool:
        return await self._run(self._withdraw, key, value, fate, ttl, index, member, claim)

    def _withdraw(
        self, key: str, value: str, fate: str, ttl: float, index: str, member: str, claim: str | None
    ) -> bool:
        with self._cache.transact():
            if self._cache.get(fate) == TAKEN:
                return False
            if (current := self._cache.get(key)) is not None and current != value:
                return False
            self._cache.set(fate, WITHDRAWN, expire=ttl)
            self._cache.delete(key)
            self._cache.delete(f"{index}\0{member}")
            if claim is not None and self._cache.get(claim) == key:
                self._cache.delete(claim)
            return True

    async def take(self, fates: Sequence[str], *, ttl: float) -> list[bool]:
        return await self._run(self._take, fates, ttl)

    def _take(self, fates: Sequence[str], ttl: float) -> list[bool]:
        taken = []
        with self._cache.transact():
            for fate in fates:
                value = self._cache.get(fate)
                if value is None:
                    self._cache.set(fate, TAKEN, expire=ttl)
                taken.append(value != WITHDRAWN)
        return taken

    async def finish_pending(
        self, records: Sequence[tuple[str, str]], *, index: str, members: Sequence[str]
    ) -> list[bool]:
        return await self._run(self._finish_pending, records, index, members)

    def _finish_pending(
        self, records: Sequence[tuple[str, str]], index: str, members: Sequence[str]
    ) -> list[bool]:
        done = []
        with self._cache.transact():
            for key, value in records:
                if self._cache.get(key) is None:
                    done.append(False)
                    continue
                done.append(bool(self._cache.set(key, value, expire=self._ttl_left(key))))
            for member in members:
                self._cache.delete(f"{index}\0{member}")
        return done

    def _ttl_left(self, key: str) -> float | None:
        _, expire_time = self._cache.get(key, expire_time=True)
        return None if expire_time is None else max(float(expire_time) - time.time(), 0.001)

    async def ping(self) -> None:
        await self._run(self._cache.get, "ping")

    async def close(self) -> None:
        self._cache.close()


def create_store(settings: Settings) -> Store:
    if settings.REDIS_URL is None:
        return EmbeddedStore((EMBEDDED_DIR / "store").resolve())
    return RedisStore(str(settings.REDIS_URL))


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


@asynccontextmanager
async def _unavailable_on_error() -> AsyncIterator[None]:
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise AnswerLost("redis") from exc
    except REDIS_UNAVAILABLE as exc:
        raise ServiceUnavailable("redis") from exc
