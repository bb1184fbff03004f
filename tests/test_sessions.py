"""GET /sessions/new/: the cookie, what the server keeps of it, and who gets a 401."""

import asyncio
import hashlib
import re
import secrets
import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from delivery.config import Settings
from delivery.db import utcnow
from delivery.models import ClientSession
from delivery.service import SESSION_CACHE_SECONDS, SessionCache
from tests.factories import COOKIE, add_package, add_session, app_client, open_session, use_session

URL_SAFE = re.compile(r"[A-Za-z0-9_-]+")
PACKAGE_BODY = {"name": "Winter jacket", "weight_kg": "1.25", "type_id": 1, "content_value_usd": "120"}


def session_cookie(response: httpx.Response) -> tuple[str, dict[str, str]]:
    """The `session_id` Set-Cookie of a response: its value and its attributes (names lower-cased)."""
    headers = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{COOKIE}=")]
    assert len(headers) == 1, response.headers.get_list("set-cookie")
    first, *rest = (part.strip() for part in headers[0].split(";"))
    value = first.removeprefix(f"{COOKIE}=")
    attributes: dict[str, str] = {}
    for part in rest:
        key, _, attr_value = part.partition("=")
        attributes[key.strip().lower()] = attr_value.strip()
    return value, attributes


async def session_endpoints(client: httpx.AsyncClient) -> list[httpx.Response]:
    """One request to each endpoint that needs a session."""
    return [
        await client.get("/packages/"),
        await client.get("/packages/1/"),
        await client.get(f"/packages/status/{uuid.uuid4()}/"),
        await client.post("/packages/", json=PACKAGE_BODY),
    ]


async def test_new_session_sets_the_cookie(client: httpx.AsyncClient, settings: Settings) -> None:
    response = await client.get("/sessions/new/")

    assert response.status_code == 204
    assert response.content == b""
    token, attributes = session_cookie(response)
    assert token
    assert client.cookies[COOKIE] == token
    assert "httponly" in attributes
    assert attributes["samesite"].lower() == "lax"
    assert attributes["path"] == "/"
    assert attributes["max-age"] == str(settings.SESSION_TTL) == "3600"
    assert "secure" not in attributes
    assert "domain" not in attributes


async def test_cookie_is_secure_when_configured(settings: Settings) -> None:
    async with app_client(settings.model_copy(update={"COOKIE_SECURE": True})) as http:
        response = await http.get("/sessions/new/")

    assert response.status_code == 204
    _, attributes = session_cookie(response)
    assert "secure" in attributes
    assert "httponly" in attributes
    assert attributes["samesite"].lower() == "lax"
    assert attributes["path"] == "/"
    assert attributes["max-age"] == "3600"


async def test_token_is_random_url_safe_and_at_least_128_bits(client: httpx.AsyncClient) -> None:
    tokens = [session_cookie(await client.get("/sessions/new/"))[0] for _ in range(5)]

    assert len(set(tokens)) == 5
    for token in tokens:
        assert URL_SAFE.fullmatch(token), token
        # Base64url carries 6 bits a character: 22 characters are the least that hold 128 bits.
        assert len(token) >= 22, token


async def test_server_stores_only_the_token_hash(
    client: httpx.AsyncClient, maker: async_sessionmaker[AsyncSession]
) -> None:
    response = await client.get("/sessions/new/")
    token, _ = session_cookie(response)

    async with maker() as db:
        rows = (await db.execute(select(ClientSession.__table__))).all()
    assert len(rows) == 1
    row = rows[0]._mapping
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert all(token not in str(value) for value in row.values())


async def test_session_lives_for_session_ttl(
    client: httpx.AsyncClient, maker: async_sessionmaker[AsyncSession]
) -> None:
    before = utcnow()
    session_id = await open_session(client)
    after = utcnow()

    async with maker() as db:
        expires_at = await db.scalar(select(ClientSession.expires_at).where(ClientSession.id == session_id))
    assert expires_at is not None
    assert before + timedelta(seconds=3600 - 1) <= expires_at <= after + timedelta(seconds=3600 + 1)


async def test_each_new_session_is_a_fresh_one(
    client: httpx.AsyncClient, maker: async_sessionmaker[AsyncSession]
) -> None:
    first = await open_session(client)
    await add_package(maker, session_id=first)
    assert (await client.get("/packages/")).json()["total"] == 1

    second = await open_session(client)

    assert second != first
    assert (await client.get("/packages/")).json()["total"] == 0


async def test_opened_session_is_accepted(customer: httpx.AsyncClient) -> None:
    response = await customer.get("/packages/")

    assert response.status_code == 200
    assert response.json()["total"] == 0


async def test_no_cookie_is_401(client: httpx.AsyncClient) -> None:
    for response in await session_endpoints(client):
        assert response.status_code == 401, (response.request.url, response.text)
        assert "detail" in response.json()


async def test_unknown_token_is_401(client: httpx.AsyncClient) -> None:
    use_session(client, secrets.token_urlsafe(32))

    for response in await session_endpoints(client):
        assert response.status_code == 401, (response.request.url, response.text)
        assert "detail" in response.json()


async def test_empty_token_is_401(client: httpx.AsyncClient) -> None:
    use_session(client, "")

    response = await client.get("/packages/")

    assert response.status_code == 401


async def test_token_hash_instead_of_token_is_401(
    client: httpx.AsyncClient, maker: async_sessionmaker[AsyncSession]
) -> None:
    """The stored hash is not a credential: whoever reads the table cannot use it as a cookie."""
    _, token = await add_session(maker)
    use_session(client, hashlib.sha256(token.encode()).hexdigest())

    assert (await client.get("/packages/")).status_code == 401
    use_session(client, token)
    assert (await client.get("/packages/")).status_code == 200


async def test_expired_session_is_401(
    client: httpx.AsyncClient, maker: async_sessionmaker[AsyncSession]
) -> None:
    """A session is refused from its expiry on, also right after it was accepted (and so remembered)."""
    session_id, token = await add_session(maker, expires_at=utcnow() + timedelta(seconds=1.5))
    await add_package(maker, session_id=session_id)
    use_session(client, token)
    assert (await client.get("/packages/")).status_code == 200

    async with maker() as db:
        expires_at = await db.scalar(select(ClientSession.expires_at).where(ClientSession.id == session_id))
    assert expires_at is not None
    await asyncio.sleep(max((expires_at - utcnow()).total_seconds(), 0) + 0.05)

    for response in await session_endpoints(client):
        assert response.status_code == 401, (response.request.url, response.text)


async def test_session_cut_short_in_the_database_is_401_within_the_cache_period(
    client: httpx.AsyncClient, maker: async_sessionmaker[AsyncSession]
) -> None:
    """An operator who expires a session in the database: the API remembers a live session for at most
    SESSION_CACHE_SECONDS, then refuses it."""
    session_id = await open_session(client)
    assert (await client.get("/packages/")).status_code == 200

    async with maker() as db:
        await db.execute(
            update(ClientSession)
            .where(ClientSession.id == session_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await db.commit()
    # The API remembers the session it just saw (one query fewer per request) ...
    assert (await client.get("/packages/")).status_code == 200
    await asyncio.sleep(SESSION_CACHE_SECONDS + 0.1)

    # ... for SESSION_CACHE_SECONDS at most.
    for response in await session_endpoints(client):
        assert response.status_code == 401, (response.request.url, response.text)


async def test_session_made_expired_is_401(
    client: httpx.AsyncClient, maker: async_sessionmaker[AsyncSession]
) -> None:
    _, live = await add_session(maker)
    _, expired = await add_session(maker, expires_at=utcnow() - timedelta(minutes=5))

    use_session(client, live)
    assert (await client.get("/packages/")).status_code == 200
    use_session(client, expired)
    assert (await client.get("/packages/")).status_code == 401


@pytest.mark.parametrize("path", ["/sessions/new", "/sessions/new/"])
async def test_new_session_with_or_without_trailing_slash(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path, follow_redirects=True)

    assert response.status_code == 204
    token, attributes = session_cookie(response)
    assert "httponly" in attributes
    use_session(client, token)
    assert (await client.get("/packages/")).status_code == 200


def test_session_cache_is_bounded_and_forgets_expired_sessions() -> None:
    cache = SessionCache(ttl=60, size=2)
    now = utcnow()
    cache.put("a", 1, now + timedelta(hours=1))
    cache.put("b", 2, now + timedelta(seconds=1))
    cache.put("c", 3, now + timedelta(hours=1))

    assert cache.get("a", now) is None  # the oldest went to make room
    assert cache.get("c", now) == 3
    assert cache.get("b", now) == 2
    assert cache.get("b", now + timedelta(seconds=1)) is None  # expired: refused, and forgotten
    assert cache.get("b", now) is None
