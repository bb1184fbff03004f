"""No one let in: others' ids stay private, bodies are bounded, no cross-origin grant, no SQL from strings."""

import ast
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from tests.factories import Maker, add_package, add_session, use_session
from tests.helpers import register, status_id_of, valid_body

SRC = Path(__file__).resolve().parent.parent / "src" / "delivery"
LIMIT = 64 * 1024


async def test_another_sessions_ids_are_404_on_every_id_bearing_endpoint(
    customer: httpx.AsyncClient, maker: Maker
) -> None:
    location = await register(customer)
    owner_id, owner_token = await add_session(maker)
    package_id = await add_package(maker, session_id=owner_id)

    use_session(customer, (await add_session(maker))[1])
    not_found = [
        await customer.get(f"/packages/{package_id}/"),
        await customer.get(location),
        await customer.get(f"/packages/status/{status_id_of(location)}/"),
    ]
    assert [response.status_code for response in not_found] == [404, 404, 404]
    listed = await customer.get("/packages/")
    assert listed.json()["total"] == 0

    use_session(customer, owner_token)
    assert (await customer.get(f"/packages/{package_id}/")).status_code == 200
    unknown = await customer.get(f"/packages/{package_id + 1000}/")
    other = await customer.get(f"/packages/{package_id}/")
    assert unknown.status_code == 404 and other.status_code == 200


def _refused_as_too_large(response: httpx.Response) -> None:
    """413 like every other error: JSON `{"detail": ...}` and the request id."""
    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/json"
    assert "64 KiB" in response.json()["detail"]
    assert response.headers.get("X-Request-ID")


async def test_a_body_over_64_kib_is_refused_before_it_is_parsed(customer: httpx.AsyncClient) -> None:
    big = valid_body(name="x" * LIMIT)
    _refused_as_too_large(await customer.post("/packages/", json=big))
    kept = await customer.post("/packages/", json=big, headers={"X-Request-ID": "big-one"})
    assert kept.headers["X-Request-ID"] == "big-one"
    at_limit = b'{"name": "' + b"x" * (LIMIT - 100) + b'"}'
    assert (
        await customer.post("/packages/", content=at_limit, headers={"content-type": "application/json"})
    ).status_code == 422


async def test_a_body_over_64_kib_is_refused_even_without_a_session(client: httpx.AsyncClient) -> None:
    _refused_as_too_large(await client.post("/packages/", json=valid_body(name="x" * LIMIT)))


async def test_a_chunked_body_over_the_limit_is_refused_too(customer: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * 8192

    response = await customer.post(
        "/packages/", content=chunks(), headers={"content-type": "application/json"}
    )
    _refused_as_too_large(response)


async def test_cross_origin_requests_get_no_cors_grant(customer: httpx.AsyncClient) -> None:
    origin = {"Origin": "https://evil.example"}
    preflight = await customer.options(
        "/packages/", headers=origin | {"Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers
    simple = await customer.get("/packages/", headers=origin)
    assert "access-control-allow-origin" not in simple.headers
    assert "access-control-allow-credentials" not in simple.headers


def test_no_sql_is_assembled_from_strings() -> None:
    """Every textual SQL in the package is a constant: values travel as bound parameters."""
    offenders = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name in ("text", "exec_driver_sql") and node.args:
                argument = node.args[0]
                if not (isinstance(argument, ast.Constant) and isinstance(argument.value, str)):
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []
