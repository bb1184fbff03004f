"""The USD/RUB rate: parsing the bank's daily JSON, fetching it, and the cache with its single flight."""

import asyncio
import copy
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from delivery import rates
from delivery.config import Settings
from delivery.errors import RateUnavailable
from delivery.rates import Rate, RateCache, RateFormatError, fetch_rate, new_http_client, parse_daily
from delivery.store import KeyValue, Store, create_store
from tests.fakebank import FIXTURES, FakeBank, Mode
from tests.stack import clear_store

JSON_FIXTURES = sorted(path.name for path in FIXTURES.glob("daily_json*.js"))
XML_FIXTURES = sorted(path.name for path in FIXTURES.glob("*.xml"))
CONCURRENT = 64


# --- Helpers: the fixtures read independently of the code under test ------------------------------


def load(name: str) -> dict[str, Any]:
    """A fixture as a document whose numbers are exact (Decimal for fractions, int for integers)."""
    document: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"), parse_float=Decimal)
    return document


def dump(value: Any) -> str:
    """JSON text for a document with Decimal numbers, written digit for digit (json.dumps refuses Decimal)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(key)}: {dump(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dump(item) for item in value) + "]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value)


def usd_entry(document: dict[str, Any]) -> dict[str, Any]:
    entries = [entry for entry in document["Valute"].values() if entry["CharCode"] == "USD"]
    assert len(entries) == 1
    entry: dict[str, Any] = entries[0]
    return entry


def expected_rate(document: dict[str, Any]) -> Decimal:
    entry = usd_entry(document)
    return Decimal(entry["Value"]) / Decimal(entry["Nominal"])


def expected_date(document: dict[str, Any]) -> date:
    return date.fromisoformat(document["Date"][:10])


def with_usd(name: str, **fields: Any) -> dict[str, Any]:
    """A fixture with fields of its USD entry replaced (a field set to `...` is removed)."""
    document = load(name)
    entry = usd_entry(document)
    for field, value in fields.items():
        if value is ...:
            del entry[field]
        else:
            entry[field] = value
    return document


def rename_valute(document: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """The same document with the Valute entry under key `old` moved to key `new` (order kept)."""
    result = copy.deepcopy(document)
    result["Valute"] = {(new if key == old else key): entry for key, entry in document["Valute"].items()}
    return result


def assert_exact(rate: Rate, usd_rub: Decimal, day: date) -> None:
    assert type(rate.usd_rub) is Decimal
    assert type(rate.date) is date
    assert rate.usd_rub == usd_rub
    assert rate.date == day


def warnings_from_rates(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "delivery.rates" and r.levelno == logging.WARNING]


# --- parse_daily ----------------------------------------------------------------------------------


def test_fixture_rates_are_known() -> None:
    """Guards the independent reading below: the recorded USD rates, by hand."""
    assert len(JSON_FIXTURES) == 3
    assert len(XML_FIXTURES) == 2
    assert {name: expected_rate(load(name)) for name in JSON_FIXTURES} == {
        "daily_json.2021-08-31.js": Decimal("73.5744"),
        "daily_json.2022-08-27.js": Decimal("60.0924"),
        "daily_json.js": Decimal("78.1959"),
    }


@pytest.mark.parametrize("name", JSON_FIXTURES)
def test_parse_fixture(name: str) -> None:
    document = load(name)
    raw = (FIXTURES / name).read_bytes()
    for body in (raw, raw.decode("utf-8")):
        assert_exact(parse_daily(body), expected_rate(document), expected_date(document))


@pytest.mark.parametrize("name", JSON_FIXTURES)
def test_parse_keeps_every_digit(name: str) -> None:
    """The rate is the decimal written in the answer, not the nearest binary float."""
    rate = parse_daily((FIXTURES / name).read_bytes())
    assert str(rate.usd_rub) == str(usd_entry(load(name))["Value"])


def test_parse_date_is_the_banks_local_date() -> None:
    """A rate dated just after midnight Moscow time is for that Moscow day, not the UTC day before."""
    document = load("daily_json.js")
    document["Date"] = "2025-06-26T00:30:00+03:00"
    assert parse_daily(dump(document)).date == date(2025, 6, 26)


def test_usd_found_by_char_code_under_another_key() -> None:
    document = rename_valute(load("daily_json.js"), "USD", "R01235")
    assert "USD" not in document["Valute"]
    assert_exact(parse_daily(dump(document)), Decimal("78.1959"), date(2025, 6, 26))


def test_key_usd_holding_another_currency_is_not_taken() -> None:
    """Key "USD" holds the euro, the dollar sits under another key: the dollar's rate is read."""
    original = load("daily_json.js")
    document = rename_valute(rename_valute(original, "USD", "DOLLAR"), "EUR", "USD")
    assert document["Valute"]["USD"]["CharCode"] == "EUR"
    euro = Decimal(document["Valute"]["USD"]["Value"])
    rate = parse_daily(dump(document))
    assert rate.usd_rub != euro
    assert rate.usd_rub == Decimal("78.1959")


def test_key_usd_holding_another_currency_without_a_dollar_is_rejected() -> None:
    document = load("daily_json.js")
    euro = document["Valute"]["EUR"]
    document["Valute"]["USD"] = copy.deepcopy(euro)
    assert all(entry["CharCode"] != "USD" for entry in document["Valute"].values())
    with pytest.raises(RateFormatError):
        parse_daily(dump(document))


@pytest.mark.parametrize("name", JSON_FIXTURES)
@pytest.mark.parametrize("nominal", [10, 100, 1000])
def test_nominal_divides(name: str, nominal: int) -> None:
    value = Decimal(usd_entry(load(name))["Value"])
    document = with_usd(name, Nominal=nominal, Value=value * nominal)
    assert_exact(parse_daily(dump(document)), value, expected_date(document))


def test_nominal_with_an_inexact_quotient() -> None:
    document = with_usd("daily_json.js", Nominal=3, Value=Decimal("100.0000"))
    rate = parse_daily(dump(document))
    assert type(rate.usd_rub) is Decimal
    # Rounded half-up to the 8 places the rate columns hold: the rate stored is the rate the cost used.
    assert rate.usd_rub == Decimal("33.33333333")
    assert int(rate.usd_rub.as_tuple().exponent) == -rates.RATE_PLACES


def test_value_written_as_an_integer_or_with_an_exponent() -> None:
    """Both are JSON numbers; they are read exactly too."""
    assert parse_daily(dump(with_usd("daily_json.js", Value=Decimal(78)))).usd_rub == Decimal(78)
    exponent = dump(load("daily_json.js")).replace("78.1959", "7.81959E1", 1)
    assert_exact(parse_daily(exponent), Decimal("78.1959"), date(2025, 6, 26))


@pytest.mark.parametrize("name", XML_FIXTURES)
def test_xml_is_rejected(name: str) -> None:
    raw = (FIXTURES / name).read_bytes()
    with pytest.raises(RateFormatError):
        parse_daily(raw)
    with pytest.raises(RateFormatError):
        parse_daily(raw.decode("windows-1251"))


def _truncations() -> list[bytes]:
    raw = (FIXTURES / "daily_json.js").read_bytes().rstrip()
    usd_end = raw.index(b"}", raw.index(b'"CharCode": "USD"')) + 1
    return [raw[:1], raw[: len(raw) // 2], raw[:usd_end], raw[:-1]]


@pytest.mark.parametrize("body", _truncations(), ids=["1-byte", "half", "after-usd", "last-brace-missing"])
def test_truncated_body_is_rejected(body: bytes) -> None:
    with pytest.raises(RateFormatError):
        parse_daily(body)


# --- Properties: whatever the bank sends, a rate we can use or a RateFormatError, nothing else ----------


def parsed_or_refused(body: bytes | str) -> Rate | None:
    """The rate, or None when refused; any other exception fails the test."""
    try:
        rate = parse_daily(body)
    except RateFormatError:
        return None
    assert type(rate.usd_rub) is Decimal and 0 < rate.usd_rub <= rates.MAX_RATE
    assert int(rate.usd_rub.as_tuple().exponent) >= -rates.RATE_PLACES
    return rate


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=256) | JSON_VALUES.map(json.dumps))
def test_any_body_is_a_rate_or_refused(body: bytes | str) -> None:
    parsed_or_refused(body)


def as_json_number(value: Any) -> Any:
    """What a JSON reader makes of a Python value written as JSON: ints and finite floats are numbers."""
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, float) and math.isfinite(value):
        return Decimal(repr(value))
    return value


NUMBERS = st.decimals(allow_nan=False, allow_infinity=False) | st.integers(-(10**30), 10**30).map(Decimal)


def expected_from(value: Any, nominal: Any, date_field: Any) -> Rate | None:
    """What the contract says the bank's answer is: `Value / Nominal` (8 places, half-up) for positive numbers
    up to MAX_RATE and a Date in ISO 8601; else no rate."""
    value, nominal = as_json_number(value), as_json_number(nominal)
    if not all(isinstance(n, Decimal) and n.is_finite() and n > 0 for n in (value, nominal)):
        return None
    try:
        day = datetime.fromisoformat(date_field).date()
        usd_rub = (value / nominal).quantize(Decimal("1E-8"), rounding=ROUND_HALF_UP)
    except (TypeError, ValueError, ArithmeticError):
        return None
    return Rate(usd_rub=usd_rub, date=day) if 0 < usd_rub <= rates.MAX_RATE else None


@settings(max_examples=500, deadline=None)
@given(value=NUMBERS | JSON_VALUES, nominal=NUMBERS | JSON_VALUES, day=st.dates() | st.text(max_size=12))
def test_a_usd_entry_is_its_exact_quotient_or_refused(value: Any, nominal: Any, day: Any) -> None:
    """Whatever USD's Value, Nominal and the Date are: `Value / Nominal`, exact (8 places), or refused —
    refused exactly when it is not a rate."""
    document = load("daily_json.js")
    document["Date"] = day.isoformat() + "T11:30:00+03:00" if isinstance(day, date) else day
    usd_entry(document).update(Value=value, Nominal=nominal)
    assert parsed_or_refused(dump(document)) == expected_from(value, nominal, document["Date"])


@pytest.mark.parametrize(
    ("value", "nominal"),
    [
        pytest.param("1E+999999", "1E-999999", id="overflow"),
        pytest.param("1000000.01", "1", id="above-the-bound"),
        pytest.param("0.000000001", "1", id="rounds-to-zero"),
        pytest.param("1E-999999", "1E+999999", id="underflow"),
    ],
)
def test_a_rate_out_of_range_is_refused(value: str, nominal: str) -> None:
    document = with_usd("daily_json.js", Value=Decimal(value), Nominal=Decimal(nominal))
    with pytest.raises(RateFormatError, match="out of range"):
        parse_daily(dump(document))


def _mutations() -> dict[str, Callable[[], str | bytes]]:
    def without(field: str) -> Callable[[], str]:
        def build() -> str:
            document = load("daily_json.js")
            del document[field]
            return dump(document)

        return build

    def usd(**fields: Any) -> Callable[[], str]:
        return lambda: dump(with_usd("daily_json.js", **fields))

    def date_(value: Any) -> Callable[[], str]:
        def build() -> str:
            document = load("daily_json.js")
            document["Date"] = value
            return dump(document)

        return build

    def valute(value: Any) -> Callable[[], str]:
        def build() -> str:
            document = load("daily_json.js")
            document["Valute"] = value
            return dump(document)

        return build

    def without_usd() -> str:
        document = load("daily_json.js")
        del document["Valute"]["USD"]
        return dump(document)

    def raw_value(text: str) -> Callable[[], str]:
        return lambda: dump(load("daily_json.js")).replace("78.1959", text, 1)

    return {
        "html": lambda: b"<!DOCTYPE html><html><body><h1>403 Forbidden</h1></body></html>",
        "empty-bytes": lambda: b"",
        "empty-str": lambda: "",
        "whitespace": lambda: b" \n ",
        "binary": lambda: b"\x00\xff garbage \xfe",
        "json-null": lambda: "null",
        "json-number": lambda: "78.1959",
        "json-string": lambda: '"78.1959"',
        "json-empty-list": lambda: "[]",
        "json-list": lambda: "[" + (FIXTURES / "daily_json.js").read_text(encoding="utf-8") + "]",
        "missing-valute": without("Valute"),
        "valute-null": valute(None),
        "valute-list": valute(list(load("daily_json.js")["Valute"].values())),
        "valute-empty": valute({}),
        "missing-usd": without_usd,
        "usd-not-an-object": valute({"USD": "78.1959"}),
        "value-zero": usd(Value=Decimal(0)),
        "value-zero-decimal": usd(Value=Decimal("0.0000")),
        "value-negative": usd(Value=Decimal("-78.1959")),
        "value-string": usd(Value="78.1959"),
        "value-comma-string": usd(Value="78,1959"),
        "value-null": usd(Value=None),
        "value-true": usd(Value=True),
        "value-missing": usd(Value=...),
        "value-nan": raw_value("NaN"),
        "value-infinity": raw_value("Infinity"),
        "value-minus-infinity": raw_value("-Infinity"),
        "nominal-zero": usd(Nominal=0),
        "nominal-negative": usd(Nominal=-1),
        "nominal-string": usd(Nominal="1"),
        "nominal-missing": usd(Nominal=...),
        "date-missing": without("Date"),
        "date-garbled": date_("26.06.2025"),
        "date-words": date_("yesterday"),
        "date-impossible": date_("2025-13-45T11:30:00+03:00"),
        "date-empty": date_(""),
        "date-null": date_(None),
        "date-not-a-string": date_(20250626),
    }


MUTATIONS = _mutations()


@pytest.mark.parametrize("case", MUTATIONS)
def test_malformed_answer_is_rejected(case: str) -> None:
    body = MUTATIONS[case]()
    with pytest.raises(RateFormatError):
        parse_daily(body)


def test_rate_format_error_is_a_value_error() -> None:
    """Callers that catch ValueError for bad input catch this too."""
    assert issubclass(RateFormatError, ValueError)


# --- fetch_rate against the loopback bank ---------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with new_http_client() as client:
        yield client


@pytest.mark.parametrize("name", JSON_FIXTURES)
async def test_fetch_ok(bank: FakeBank, http: httpx.AsyncClient, name: str) -> None:
    bank.fixture = name
    document = load(name)
    assert_exact(await fetch_rate(http, bank.url), expected_rate(document), expected_date(document))
    assert bank.requests == 1


async def test_fetch_sends_a_browser_user_agent(bank: FakeBank, http: httpx.AsyncClient) -> None:
    await fetch_rate(http, bank.url)
    assert len(bank.user_agents) == 1
    assert "Mozilla/5.0" in bank.user_agents[0]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_fetch_server_error(
    bank: FakeBank, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    bank.mode = "error"
    bank.error_status = status
    with pytest.raises(RateUnavailable):
        await fetch_rate(http, bank.url)
    assert bank.requests == 1
    assert len(warnings_from_rates(caplog)) == 1


@pytest.mark.parametrize("status", [403, 404])
async def test_fetch_client_error(bank: FakeBank, http: httpx.AsyncClient, status: int) -> None:
    """The mirror answers 403 to clients it dislikes: not a rate either."""
    bank.mode = "error"
    bank.error_status = status
    with pytest.raises(RateUnavailable):
        await fetch_rate(http, bank.url)


@pytest.mark.parametrize("mode", ["html", "truncated", "zero_rate", "no_usd", "not_json"])
async def test_fetch_malformed_answer(
    bank: FakeBank, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, mode: Mode
) -> None:
    bank.mode = mode
    with pytest.raises(RateUnavailable):
        await fetch_rate(http, bank.url)
    assert bank.requests == 1
    warnings = warnings_from_rates(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("name", XML_FIXTURES)
async def test_fetch_xml_answer(
    bank: FakeBank, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    bank.fixture = name
    with pytest.raises(RateUnavailable):
        await fetch_rate(http, bank.url)
    assert len(warnings_from_rates(caplog)) == 1


async def test_fetch_connection_refused(http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    url = "http://127.0.0.1:9/daily_json.js"  # the discard port: nothing listens on loopback
    with pytest.raises(RateUnavailable):
        await fetch_rate(http, url)
    assert len(warnings_from_rates(caplog)) == 1


async def test_fetch_hanging_bank_gives_up(
    bank: FakeBank, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rates, "FETCH_TIMEOUT", httpx.Timeout(0.5, connect=0.5))
    monkeypatch.setattr(bank, "hang_seconds", 3.0)
    bank.mode = "hang"
    async with new_http_client() as client:
        started = time.monotonic()
        with pytest.raises(RateUnavailable):
            await fetch_rate(client, bank.url)
        elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 2.0
    assert bank.requests == 1
    assert len(warnings_from_rates(caplog)) == 1


async def test_fetch_hanging_bank_gives_up_at_the_real_timeout(
    bank: FakeBank, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "Slow (over a few seconds)" is a failure: the shipped client timeout ends the wait in time."""
    monkeypatch.setattr(bank, "hang_seconds", 12.0)
    bank.mode = "hang"
    started = time.monotonic()
    with pytest.raises(RateUnavailable):
        await fetch_rate(http, bank.url)
    assert time.monotonic() - started < 10.0


async def test_fetch_slow_but_in_time(bank: FakeBank, http: httpx.AsyncClient) -> None:
    bank.delay = 0.5
    assert (await fetch_rate(http, bank.url)).usd_rub == Decimal("78.1959")


async def test_dripping_bank_fails_within_the_deadline(
    bank: FakeBank, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Headers at once, then a byte every 2 s: each read is in time, so only a deadline on the whole
    fetch ends it — before the rate lock (LOCK_TTL) can expire under it."""
    bank.mode = "drip"
    with pytest.raises(RateUnavailable, match="deadline"):
        # The bound the single flight needs; a fetch without a deadline would drip on for hours.
        await asyncio.wait_for(fetch_rate(http, bank.url), timeout=rates.LOCK_TTL)
    assert bank.requests == 1
    assert len(warnings_from_rates(caplog)) == 1


def test_fetch_deadline_is_below_the_lock_lifetime() -> None:
    """The single flight holds only while the lock outlives its holder's fetch, store round trips included."""
    assert rates.FETCH_DEADLINE + 5 <= rates.LOCK_TTL


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "until-close"])
async def test_oversized_body_is_refused_unread(
    bank: FakeBank, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, declared: bool
) -> None:
    """256 MiB that would parse as the daily JSON: refused on its size, not read whole into memory."""
    bank.mode = "huge"
    bank.huge_declared = declared
    with pytest.raises(RateUnavailable, match="bytes"):
        await fetch_rate(http, bank.url)
    # What the bank got written before the client hung up: the cap plus the sockets' buffers at most.
    assert bank.bytes_sent < bank.huge_size // 4
    warnings = warnings_from_rates(caplog)
    assert len(warnings) == 1
    assert f"{rates.MAX_BODY_BYTES}" in warnings[0].getMessage()


async def test_body_at_the_cap_is_read(bank: FakeBank, http: httpx.AsyncClient) -> None:
    bank.mode = "huge"
    bank.huge_size = rates.MAX_BODY_BYTES
    assert (await fetch_rate(http, bank.url)).usd_rub == Decimal("78.1959")


# --- RateCache, on each stack's store -------------------------------------------------------------


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    result = create_store(settings)
    yield result
    await result.close()


def new_cache(
    store: KeyValue, client: httpx.AsyncClient, settings: Settings, *, ttl: int = 86400
) -> RateCache:
    return RateCache(store, client, url=str(settings.CBR_DAILY_URL), ttl=ttl)


@pytest.fixture
def cache(store: Store, http: httpx.AsyncClient, settings: Settings) -> RateCache:
    return new_cache(store, http, settings)


async def separate_caches(stack: AsyncExitStack, settings: Settings, count: int) -> list[RateCache]:
    """Caches as separate processes have them: each with its own store connection and HTTP client."""
    caches = []
    for _ in range(count):
        own_store = create_store(settings)
        stack.push_async_callback(own_store.close)
        client = await stack.enter_async_context(new_http_client())
        caches.append(new_cache(own_store, client, settings))
    return caches


async def until(condition: Callable[[], bool]) -> None:
    """Poll a condition set by another thread (the bank's), for up to 5 s."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def gather_outcomes(calls: list[Any]) -> tuple[list[Rate], list[BaseException]]:
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    got = [o for o in outcomes if isinstance(o, Rate)]
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(got) + len(failed) == len(calls)
    return got, failed


async def test_bank_url_is_the_fake(settings: Settings, bank: FakeBank) -> None:
    """Guards every test below: the stack's settings point at the loopback bank."""
    assert str(settings.CBR_DAILY_URL) == bank.url


async def test_cold_cache_asks_once_then_hits(cache: RateCache, bank: FakeBank) -> None:
    first = await cache.get()
    assert bank.requests == 1
    assert_exact(first, Decimal("78.1959"), date(2025, 6, 26))
    for _ in range(5):
        assert await cache.get() == first
    assert bank.requests == 1


async def test_cached_rate_keeps_its_date_and_digits(
    cache: RateCache, bank: FakeBank, settings: Settings
) -> None:
    """A rate read back from the store, by another process, is the bank's: same digits, same date."""
    bank.fixture = "daily_json.2021-08-31.js"
    await cache.get()
    async with AsyncExitStack() as stack:
        (other,) = await separate_caches(stack, settings, 1)
        assert_exact(await other.get(), Decimal("73.5744"), date(2021, 8, 31))
    assert_exact(await cache.get(), Decimal("73.5744"), date(2021, 8, 31))
    assert bank.requests == 1


async def test_cached_inexact_rate_round_trips(cache: RateCache, bank: FakeBank, settings: Settings) -> None:
    document = with_usd("daily_json.js", Nominal=3, Value=Decimal("100.0000"))
    bank.custom_body = dump(document).encode()
    fetched = await cache.get()
    async with AsyncExitStack() as stack:
        (other,) = await separate_caches(stack, settings, 1)
        assert_exact(await other.get(), Decimal("33.33333333"), date(2025, 6, 26))
    assert fetched.usd_rub == Decimal("33.33333333")
    assert bank.requests == 1


async def test_ttl_is_honoured(
    store: Store, http: httpx.AsyncClient, settings: Settings, bank: FakeBank
) -> None:
    cache = new_cache(store, http, settings, ttl=1)
    await cache.get()
    await cache.get()
    assert bank.requests == 1
    await asyncio.sleep(1.3)
    bank.fixture = "daily_json.2022-08-27.js"
    assert_exact(await cache.get(), Decimal("60.0924"), date(2022, 8, 27))
    assert bank.requests == 2


async def test_single_flight(cache: RateCache, bank: FakeBank) -> None:
    bank.delay = 0.5
    got, failed = await gather_outcomes([cache.get() for _ in range(CONCURRENT)])
    assert failed == []
    assert bank.requests == 1
    assert len(got) == CONCURRENT
    assert {(r.usd_rub, r.date) for r in got} == {(Decimal("78.1959"), date(2025, 6, 26))}


async def test_single_flight_across_processes(settings: Settings, bank: FakeBank) -> None:
    bank.delay = 0.5
    async with AsyncExitStack() as stack:
        caches = await separate_caches(stack, settings, 8)
        got, failed = await gather_outcomes([caches[i % len(caches)].get() for i in range(CONCURRENT)])
    assert failed == []
    assert bank.requests == 1
    assert {(r.usd_rub, r.date) for r in got} == {(Decimal("78.1959"), date(2025, 6, 26))}


#: Rounds of the concurrent-failure tests: each round is a fresh race, so a race lost now and then shows.
FAILURE_ROUNDS = 3


@pytest.mark.parametrize("processes", [1, 8], ids=["one-process", "eight-processes"])
async def test_failure_is_shared_not_repeated(settings: Settings, bank: FakeBank, processes: int) -> None:
    """64 callers on a cold cache and a failing bank: one request, and every caller gets RateUnavailable."""
    bank.mode = "error"
    bank.delay = 0.5
    for round_ in range(FAILURE_ROUNDS):
        await clear_store(settings)
        before = bank.requests
        async with AsyncExitStack() as stack:
            caches = await separate_caches(stack, settings, processes)
            started = time.monotonic()
            got, failed = await gather_outcomes([caches[i % processes].get() for i in range(CONCURRENT)])
            elapsed = time.monotonic() - started
        assert got == []
        assert all(isinstance(exc, RateUnavailable) for exc in failed), failed
        asked = bank.requests - before
        assert asked == 1, f"round {round_}: the bank was asked {asked} times"
        assert elapsed < 5.0


class PausingStore:
    """A store whose first attempt to take the rate lock waits for `go`: the caller was descheduled
    (a slow round trip, a busy process) between its look at the failure memory and its try for the lock."""

    def __init__(self, inner: Store, go: asyncio.Event) -> None:
        self.inner = inner
        self.go = go
        self.failure_seen: list[str | None] = []
        self.paused = asyncio.Event()

    async def get(self, key: str) -> str | None:
        value = await self.inner.get(key)
        if key == rates.FAILED_KEY:
            self.failure_seen.append(value)
        return value

    async def set(self, key: str, value: str, *, ttl: float) -> None:
        await self.inner.set(key, value, ttl=ttl)

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        if key == rates.LOCK_KEY and not self.paused.is_set():
            self.paused.set()
            await self.go.wait()
        return await self.inner.add(key, value, ttl=ttl)

    async def delete(self, key: str, *, if_value: str | None = None) -> None:
        await self.inner.delete(key, if_value=if_value)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()


async def test_failure_is_seen_by_a_late_lock_taker(settings: Settings, bank: FakeBank) -> None:
    """The interleaving behind a second request to a failing bank, pinned down: a waiter finds no failure
    recorded, the fetch fails and frees the lock, then the waiter takes the lock. It must not ask the bank."""
    bank.mode = "error"
    bank.delay = 1.0
    go = asyncio.Event()
    async with AsyncExitStack() as stack:
        (holder,) = await separate_caches(stack, settings, 1)
        paused = PausingStore(create_store(settings), go)
        stack.push_async_callback(paused.close)
        client = await stack.enter_async_context(new_http_client())
        waiter = new_cache(paused, client, settings)
        holding = asyncio.create_task(holder.get())
        await until(lambda: bank.requests == 1)  # the holder has the lock and its request is at the bank
        waiting = asyncio.create_task(waiter.get())
        await asyncio.wait_for(paused.paused.wait(), timeout=5)
        assert paused.failure_seen == [None]
        with pytest.raises(RateUnavailable):
            await holding
        go.set()
        with pytest.raises(RateUnavailable):
            await waiting
    assert bank.requests == 1


async def test_hanging_bank_fails_every_waiter_in_time(
    settings: Settings, bank: FakeBank, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rates, "FETCH_TIMEOUT", httpx.Timeout(0.5, connect=0.5))
    monkeypatch.setattr(bank, "hang_seconds", 3.0)
    bank.mode = "hang"
    async with new_http_client() as client:
        cache = new_cache(store, client, settings)
        started = time.monotonic()
        got, failed = await gather_outcomes([cache.get() for _ in range(16)])
        elapsed = time.monotonic() - started
    assert got == []
    assert all(isinstance(exc, RateUnavailable) for exc in failed), failed
    assert bank.requests == 1
    assert elapsed < 3.0


async def test_dripping_bank_keeps_the_single_flight(settings: Settings, bank: FakeBank) -> None:
    """Callers in four processes on a cold cache and a bank that drips its answer: one request to the bank,
    and every caller fails before the lock could expire and let a second fetch start."""
    bank.mode = "drip"
    async with AsyncExitStack() as stack:
        caches = await separate_caches(stack, settings, 4)
        calls = asyncio.ensure_future(gather_outcomes([caches[i % 4].get() for i in range(16)]))
        # Past the waiters' own limit (twice the lock's lifetime): a fetch that outlives its lock shows here.
        done, _ = await asyncio.wait([calls], timeout=rates.LOCK_TTL * 2 + 5)
        assert bank.requests == 1
        assert done, "callers still waiting for the bank"
        got, failed = calls.result()
    assert got == []
    assert all(isinstance(exc, RateUnavailable) for exc in failed), failed


async def test_recovers_after_the_failure_memory(cache: RateCache, bank: FakeBank) -> None:
    bank.mode = "error"
    with pytest.raises(RateUnavailable):
        await cache.get()
    assert bank.requests == 1
    bank.mode = "ok"
    # Within FAILURE_TTL the failure is remembered: callers give up without asking the bank again.
    with pytest.raises(RateUnavailable):
        await cache.get()
    assert bank.requests == 1
    await asyncio.sleep(rates.FAILURE_TTL + 0.3)
    assert_exact(await cache.get(), Decimal("78.1959"), date(2025, 6, 26))
    assert bank.requests == 2
    await cache.get()
    assert bank.requests == 2


async def test_malformed_answer_is_not_cached(cache: RateCache, bank: FakeBank) -> None:
    bank.mode = "zero_rate"
    with pytest.raises(RateUnavailable):
        await cache.get()
    bank.mode = "ok"
    await asyncio.sleep(rates.FAILURE_TTL + 0.3)
    assert (await cache.get()).usd_rub == Decimal("78.1959")
    assert bank.requests == 2


async def test_refresh_always_asks_the_bank(cache: RateCache, bank: FakeBank) -> None:
    await cache.get()
    assert bank.requests == 1
    await cache.refresh()
    assert bank.requests == 2
    bank.fixture = "daily_json.2022-08-27.js"
    assert_exact(await cache.refresh(), Decimal("60.0924"), date(2022, 8, 27))
    assert bank.requests == 3
    # The refreshed rate is what the cache now serves, without another request.
    assert_exact(await cache.get(), Decimal("60.0924"), date(2022, 8, 27))
    assert bank.requests == 3


async def test_refresh_on_a_cold_cache(cache: RateCache, bank: FakeBank) -> None:
    assert_exact(await cache.refresh(), Decimal("78.1959"), date(2025, 6, 26))
    assert bank.requests == 1
    await cache.get()
    assert bank.requests == 1


async def test_failed_refresh_keeps_the_cached_rate(cache: RateCache, bank: FakeBank) -> None:
    await cache.get()
    bank.mode = "error"
    with pytest.raises(RateUnavailable):
        await cache.refresh()
    assert bank.requests == 2
    assert_exact(await cache.get(), Decimal("78.1959"), date(2025, 6, 26))
    assert bank.requests == 2
