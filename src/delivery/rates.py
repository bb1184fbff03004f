"""The Central Bank of Russia's USD/RUB rate: fetch, validate, and cache with single flight."""

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import httpx

from delivery import metrics
from delivery.errors import RateUnavailable
from delivery.store import KeyValue

logger = logging.getLogger(__name__)

#: The mirror refuses some clients without a browser's User-Agent.
USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
)
FETCH_TIMEOUT = httpx.Timeout(5.0, connect=3.0)
#: One fetch, connect to last byte, ends by then: a bank that trickles its answer resets the read timeout
#: with every byte, and a fetch outliving the rate lock would let a second one start beside it.
FETCH_DEADLINE = 8.0
#: The daily JSON is about 15 KB; an answer past this is no rate, and is not read into memory.
MAX_BODY_BYTES = 1024 * 1024
#: Decimal places of the rate column (`packages.usd_rub_rate`, `cost_calculations.usd_rub_rate`).
RATE_PLACES = 8
#: A rate above this is not believed: it is no USD/RUB rate, and the costs of the largest parcels priced
#: with it would not fit their column.
MAX_RATE = Decimal(1_000_000)

CACHE_KEY = "rate:usd_rub"
LOCK_KEY = "rate:usd_rub:lock"
FAILED_KEY = "rate:usd_rub:failed"
#: Longer than one fetch may take (FETCH_DEADLINE, plus the store's round trips around it), so the lock
#: outlives its holder's fetch.
LOCK_TTL = 15.0
#: How long a failed fetch is remembered, so waiting jobs give up together instead of each asking the bank.
FAILURE_TTL = 2.0
POLL_INTERVAL = 0.05


class RateFormatError(ValueError):
    """The bank's answer is not the daily-rates JSON with a positive USD rate."""


@dataclass(frozen=True, slots=True)
class Rate:
    usd_rub: Decimal
    date: date

    def dumps(self) -> str:
        return json.dumps({"usd_rub": str(self.usd_rub), "date": self.date.isoformat()})

    @classmethod
    def loads(cls, raw: str) -> "Rate":
        data = json.loads(raw)
        return cls(usd_rub=Decimal(data["usd_rub"]), date=date.fromisoformat(data["date"]))


def parse_daily(body: bytes | str) -> Rate:
    """Read USD/RUB (`Value / Nominal` of the entry whose `CharCode` is USD) from the daily JSON."""
    try:
        data = json.loads(body, parse_float=Decimal, parse_int=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RateFormatError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("Valute"), dict):
        raise RateFormatError("no Valute object")
    usd = next(
        (v for v in data["Valute"].values() if isinstance(v, dict) and v.get("CharCode") == "USD"),
        None,
    )
    if usd is None:
        raise RateFormatError("no USD entry")
    value, nominal = _positive(usd.get("Value"), "Value"), _positive(usd.get("Nominal"), "Nominal")
    raw_date = data.get("Date")
    if not isinstance(raw_date, str):
        raise RateFormatError(f"Date is not a string: {raw_date!r}")
    try:
        day = datetime.fromisoformat(raw_date).date()
    except ValueError as exc:
        raise RateFormatError(f"bad Date: {exc}") from None
    try:
        usd_rub = value / nominal
        if int(usd_rub.as_tuple().exponent) < -RATE_PLACES:
            # Only a nominal that is not a power of ten gets here: keep what the rate column can hold exactly.
            usd_rub = usd_rub.quantize(Decimal(1).scaleb(-RATE_PLACES), rounding=ROUND_HALF_UP)
    except ArithmeticError:  # an exponent past what Decimal computes
        raise RateFormatError(f"USD rate out of range: {value} / {nominal}") from None
    if not 0 < usd_rub <= MAX_RATE:
        raise RateFormatError(f"USD rate out of range: {usd_rub}")
    return Rate(usd_rub=usd_rub, date=day)


def _positive(raw: Any, field: str) -> Decimal:
    if not isinstance(raw, Decimal):
        raise RateFormatError(f"USD {field} is not a number: {raw!r}")
    try:
        if not raw.is_finite() or raw <= 0:
            raise RateFormatError(f"USD {field} is not positive: {raw}")
    except InvalidOperation:
        raise RateFormatError(f"USD {field} is not a number: {raw!r}") from None
    return raw


def new_http_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=FETCH_TIMEOUT, headers={"User-Agent": USER_AGENT})


async def fetch_rate(client: httpx.AsyncClient, url: str) -> Rate:
    """One request to the bank, over by FETCH_DEADLINE, its body at most MAX_BODY_BYTES.
    Any failure becomes `RateUnavailable`, logged once."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(FETCH_DEADLINE):
            body = await _read_body(client, url)
        rate = parse_daily(body)
    except TimeoutError:
        metrics.BANK_FETCHES.labels("failed").inc()
        logger.warning("bank fetch failed url=%s error=deadline_exceeded deadline_s=%s", url, FETCH_DEADLINE)
        raise RateUnavailable(
            f"bank request failed: no full answer within the {FETCH_DEADLINE}s deadline"
        ) from None
    except httpx.HTTPError as exc:
        metrics.BANK_FETCHES.labels("failed").inc()
        logger.warning("bank fetch failed url=%s error=%r", url, exc)
        raise RateUnavailable(f"bank request failed: {exc!r}") from None
    except RateFormatError as exc:
        metrics.BANK_FETCHES.labels("failed").inc()
        logger.warning("bank answer rejected url=%s reason=%s", url, exc)
        raise RateUnavailable(f"bank answer rejected: {exc}") from None
    finally:
        metrics.BANK_LATENCY.observe(time.perf_counter() - started)
    metrics.BANK_FETCHES.labels("ok").inc()
    logger.info(
        "bank rate fetched usd_rub=%s date=%s elapsed_ms=%.0f",
        rate.usd_rub,
        rate.date,
        (time.perf_counter() - started) * 1000,
    )
    return rate


async def _read_body(client: httpx.AsyncClient, url: str) -> bytes:
    """The answer's body, streamed so that one over MAX_BODY_BYTES is refused before it is all read."""
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise RateFormatError(f"body of {declared} bytes, over the cap of {MAX_BODY_BYTES} bytes")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise RateFormatError(f"body over the cap of {MAX_BODY_BYTES} bytes")
        return bytes(body)


class RateCache:
    """The rate for `ttl` seconds from its fetch. Concurrent callers on a cold cache share one fetch:
    the caller that takes the lock asks the bank, the others wait for its result."""

    def __init__(self, store: KeyValue, client: httpx.AsyncClient, *, url: str, ttl: int) -> None:
        self._store = store
        self._client = client
        self._url = url
        self._ttl = ttl

    async def get(self) -> Rate:
        cached = await self._store.get(CACHE_KEY)
        if cached is not None:
            metrics.RATE_CACHE.labels("hit").inc()
            return Rate.loads(cached)
        metrics.RATE_CACHE.labels("miss").inc()
        return await self._fetch_once()

    async def refresh(self) -> Rate:
        """Ask the bank now, whatever is cached (for operators)."""
        rate = await fetch_rate(self._client, self._url)
        await self._store.set(CACHE_KEY, rate.dumps(), ttl=self._ttl)
        return rate

    async def _fetch_once(self) -> Rate:
        token = secrets.token_hex(8)
        deadline = time.monotonic() + LOCK_TTL * 2
        while time.monotonic() < deadline:
            # A fetch failed a moment ago: give up at once rather than ask the bank again.
            failure = await self._store.get(FAILED_KEY)
            if failure is not None:
                raise RateUnavailable(failure)
            if await self._store.add(LOCK_KEY, token, ttl=LOCK_TTL):
                try:
                    return await self._fetch_holding_lock()
                finally:
                    await self._store.delete(LOCK_KEY, if_value=token)
            # Another caller is fetching: wait for its rate, or for its failure.
            await asyncio.sleep(POLL_INTERVAL)
            cached = await self._store.get(CACHE_KEY)
            if cached is not None:
                return Rate.loads(cached)
        raise RateUnavailable("timed out waiting for another fetch of the rate")

    async def _fetch_holding_lock(self) -> Rate:
        cached = await self._store.get(CACHE_KEY)
        if cached is not None:
            return Rate.loads(cached)
        # The previous holder may have failed between our look and our taking the lock.
        failure = await self._store.get(FAILED_KEY)
        if failure is not None:
            raise RateUnavailable(failure)
        try:
            rate = await fetch_rate(self._client, self._url)
        except RateUnavailable as exc:
            await self._store.set(FAILED_KEY, str(exc), ttl=FAILURE_TTL)
            raise
        await self._store.set(CACHE_KEY, rate.dumps(), ttl=self._ttl)
        await self._store.delete(FAILED_KEY)
        return rate
