"""The published OpenAPI document describes exactly the contract's endpoints, with their answers."""

from typing import Any

import httpx
import pytest

# The endpoints of the contract (API.md), with the answers each must document besides its success.
CONTRACT: dict[tuple[str, str], tuple[str, set[str]]] = {
    ("get", "/sessions/new/"): ("204", {"503"}),
    ("get", "/types/"): ("200", {"503"}),
    ("post", "/packages/"): ("202", {"401", "422", "503"}),
    ("get", "/packages/status/{status_id}/"): ("200", {"401", "404", "422", "503"}),
    ("get", "/packages/"): ("200", {"401", "422", "503"}),
    ("get", "/packages/{package_id}/"): ("200", {"401", "404", "422", "503"}),
    ("post", "/packages/{package_id}/transport-company/"): (
        "200",
        {"401", "403", "404", "409", "422", "503"},
    ),
    ("get", "/admin/stats/daily-costs/"): ("200", {"401", "403", "422", "503"}),
    ("get", "/admin/stats/backlog/"): ("200", {"401", "403", "503"}),
    ("post", "/admin/jobs/price-packages/"): ("202", {"401", "403", "503"}),
    ("get", "/admin/jobs/{task_id}/"): ("200", {"401", "403", "503"}),
    ("get", "/healthz"): ("200", set()),
    ("get", "/readyz"): ("200", {"503"}),
    ("get", "/metrics"): ("200", set()),
}


@pytest.fixture
async def spec(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def _operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method, path): op for path, ops in spec["paths"].items() for method, op in ops.items()}


async def test_exactly_the_contract_endpoints(spec: dict[str, Any]) -> None:
    assert set(_operations(spec)) == set(CONTRACT)


@pytest.mark.parametrize(("method", "path"), sorted(CONTRACT))
async def test_endpoint_is_documented(spec: dict[str, Any], method: str, path: str) -> None:
    op = _operations(spec)[(method, path)]
    success, errors = CONTRACT[(method, path)]
    assert op.get("tags"), "every endpoint has a tag"
    assert op.get("description") or op.get("summary"), "every endpoint has a one-line description"
    assert success in op["responses"]
    assert errors <= set(op["responses"]), f"missing error answers {errors - set(op['responses'])}"
    for code in errors - {"422"}:
        content = op["responses"][code].get("content", {}).get("application/json", {})
        if (code, path) == ("503", "/readyz"):
            continue  # documented by its description: the body names the services that did not answer
        assert "example" in content, f"{code} of {method.upper()} {path} has an example body"
        assert "schema" in content, f"{code} of {method.upper()} {path} has a body schema"


async def test_success_bodies_have_schemas(spec: dict[str, Any]) -> None:
    for (method, path), op in _operations(spec).items():
        success, _ = CONTRACT[(method, path)]
        if success == "204" or path in ("/healthz", "/metrics", "/readyz"):
            continue
        schema = op["responses"][success]["content"]["application/json"]["schema"]
        assert schema, f"{method.upper()} {path} documents its response model"


async def test_money_and_weight_are_strings_in_answers(spec: dict[str, Any]) -> None:
    package = spec["components"]["schemas"]["PackageRead"]["properties"]
    assert package["weight_kg"]["type"] == "string"
    assert package["content_value_usd"]["type"] == "string"
    cost_types = {option.get("type") for option in package["delivery_cost_rub"]["anyOf"]}
    assert cost_types == {"string", "null"}


async def test_docs_page_serves(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert "swagger" in response.text.lower()
