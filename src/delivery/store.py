"""The key-value store behind registration statuses, idempotency keys, the rate cache and its lock.

Redis when `REDIS_URL` is set; otherwise an embedded store on disk (diskcache, SQLite underneath),
which several processes on one machine share safely. Both offer the same few atomic operations.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

import diskcache
import redis.asyncio as aioredis
import redis.exceptions

from delivery.config import EMBEDDED_DIR, Settings
from delivery.errors import ServiceUnavailable


class Store(Protocol):
    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, *, ttl: float) -> None: ...

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        """Set `key` only if it does not exist; True when this call set it."""
        ...

    async def replace(self, key: str, value: str) -> bool:
        """Overwrite an existing key, keeping its expiry; False when it is gone."""
        ...

    async def delete(self, key: str, *, if_value: str | None = None) -> None:
        """Delete `key`; with `if_value`, only while it still holds that value."""
        ...

    async def index_add(self, index: str, member: str, score: float) -> None:
        """Put `member` in the sorted `index` with `score` (or move it there)."""
        ...

    async def index_remove(self, index: str, member: str) -> None: ...

    async def index_below(self, index: str, score: float, limit: int) -> list[str]:
        """Up to `limit` members of `index` whose score is below `score`, lowest first."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


_DELETE_IF_VALUE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisStore:
    def __init__(self, url: str) -> None:
        self._redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=30,
        )
        self._delete_if_value = self._redis.register_script(_DELETE_IF_VALUE)

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

    async def replace(self, key: str, value: str) -> bool:
        async with _unavailable_on_error():
            return bool(await self._redis.set(key, value, xx=True, keepttl=True))

    async def delete(self, key: str, *, if_value: str | None = None) -> None:
        async with _unavailable_on_error():
            if if_value is None:
                await self._redis.delete(key)
            else:
                await self._delete_if_value(keys=[key], args=[if_value])

    async def index_add(self, index: str, member: str, score: float) -> None:
        async with _unavailable_on_error():
            await self._redis.zadd(index, {member: score})

    async def index_remove(self, index: str, member: str) -> None:
        async with _unavailable_on_error():
            await self._redis.zrem(index, member)

    async def index_below(self, index: str, score: float, limit: int) -> list[str]:
        async with _unavailable_on_error():
            members = await self._redis.zrangebyscore(index, "-inf", f"({score}", start=0, num=limit)
            return [str(member) for member in members]

    async def set_indexed(
        self, key: str, value: str, *, ttl: float, index: str, member: str, score: float
    ) -> None:
        async with _unavailable_on_error(), self._redis.pipeline(transaction=True) as pipe:
            pipe.set(key, value, px=_ms(ttl))
            pipe.zadd(index, {member: score})
            await pipe.execute()

    async def replace_unindexed(self, key: str, value: str, *, index: str, member: str) -> bool:
        async with _unavailable_on_error(), self._redis.pipeline(transaction=True) as pipe:
            pipe.set(key, value, xx=True, keepttl=True)
            pipe.zrem(index, member)
            replaced, _ = await pipe.execute()
            return bool(replaced)

    async def delete_unindexed(self, key: str, *, index: str, member: str) -> None:
        async with _unavailable_on_error(), self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.zrem(index, member)
            await pipe.execute()

    async def ping(self) -> None:
        async with _unavailable_on_error():
            await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()


class EmbeddedStore:
    """diskcache runs each operation in an SQLite transaction, so `add` and `replace` are atomic."""

    def __init__(self, directory: Path) -> None:
        self._cache = diskcache.Cache(str(directory), timeout=30)

    async def get(self, key: str) -> str | None:
        value = await asyncio.to_thread(self._cache.get, key)
        return None if value is None else str(value)

    async def set(self, key: str, value: str, *, ttl: float) -> None:
        await asyncio.to_thread(self._cache.set, key, value, expire=ttl)

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        return bool(await asyncio.to_thread(self._cache.add, key, value, expire=ttl))

    async def replace(self, key: str, value: str) -> bool:
        return await asyncio.to_thread(self._replace, key, value)

    def _replace(self, key: str, value: str) -> bool:
        with self._cache.transact():
            old, expire_time = self._cache.get(key, expire_time=True)
            if old is None:
                return False
            ttl = None if expire_time is None else max(float(expire_time) - time.time(), 0.001)
            return bool(self._cache.set(key, value, expire=ttl))

    async def delete(self, key: str, *, if_value: str | None = None) -> None:
        await asyncio.to_thread(self._delete, key, if_value)

    def _delete(self, key: str, if_value: str | None) -> None:
        with self._cache.transact():
            if if_value is None or self._cache.get(key) == if_value:
                self._cache.delete(key)

    # The embedded store keeps an index as one key per member, `<index>\0<member>` -> score: a dev-sized
    # index, read by scanning the keys.

    async def index_add(self, index: str, member: str, score: float) -> None:
        await asyncio.to_thread(self._cache.set, f"{index}\0{member}", score)

    async def index_remove(self, index: str, member: str) -> None:
        await asyncio.to_thread(self._cache.delete, f"{index}\0{member}")

    async def index_below(self, index: str, score: float, limit: int) -> list[str]:
        return await asyncio.to_thread(self._index_below, index, score, limit)

    def _index_below(self, index: str, score: float, limit: int) -> list[str]:
        prefix = f"{index}\0"
        found = []
        for key in self._cache.iterkeys():
            if isinstance(key, str) and key.startswith(prefix):
                member_score = self._cache.get(key)  # a timestamp
                if member_score is not None and member_score < score:
                    found.append((member_score, key.removeprefix(prefix)))
        return [member for _, member in sorted(found)[:limit]]

    async def ping(self) -> None:
        await asyncio.to_thread(self._cache.get, "ping")

    async def close(self) -> None:
        self._cache.close()


# A key and its member of an index, written together: one round trip and one transaction on Redis (MULTI),
# the protocol's two calls on any other store (the embedded one is dev-sized; a wrapper keeps its protocol).


async def set_indexed(
    store: Store, key: str, value: str, *, ttl: float, index: str, member: str, score: float
) -> None:
    """Set `key` and put `member` in `index` with `score`."""
    if isinstance(store, RedisStore):
        await store.set_indexed(key, value, ttl=ttl, index=index, member=member, score=score)
    else:
        await store.set(key, value, ttl=ttl)
        await store.index_add(index, member, score)


async def replace_unindexed(store: Store, key: str, value: str, *, index: str, member: str) -> bool:
    """Overwrite an existing `key` (keeping its expiry) and take `member` out of `index`; False when `key`
    was gone."""
    if isinstance(store, RedisStore):
        return await store.replace_unindexed(key, value, index=index, member=member)
    replaced = await store.replace(key, value)
    await store.index_remove(index, member)
    return replaced


async def delete_unindexed(store: Store, key: str, *, index: str, member: str) -> None:
    """Delete `key` and take `member` out of `index`."""
    if isinstance(store, RedisStore):
        await store.delete_unindexed(key, index=index, member=member)
    else:
        await store.delete(key)
        await store.index_remove(index, member)


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
        raise ServiceUnavailable("redis") from exc
