"""The published OpenAPI document describes exactly the contract's endpoints, with their answers."""

import re
import uuid
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from delivery.schemas import PackageCreate

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
    ("get", "/admin/dead-letters/"): ("200", {"401", "403", "503"}),
    ("post", "/admin/dead-letters/requeue/"): ("202", {"401", "403", "503"}),
    ("get", "/admin/audit/"): ("200", {"401", "403", "422", "503"}),
    ("get", "/admin/me/"): ("200", {"401", "403", "503"}),
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


def _string_pattern(spec: dict[str, Any], field: str) -> str:
    branches = spec["components"]["schemas"]["PackageCreate"]["properties"][field]["anyOf"]
    strings = [branch for branch in branches if branch["type"] == "string"]
    assert len(strings) == 1 and "pattern" in strings[0], f"{field}: a string with no pattern: {branches}"
    pattern: str = strings[0]["pattern"]
    return pattern


@pytest.mark.parametrize("field", ["weight_kg", "content_value_usd"])
async def test_decimal_strings_document_their_pattern(spec: dict[str, Any], field: str) -> None:
    """A string the schema allows is one the server takes; `""` was schema-valid and refused."""
    pattern = _string_pattern(spec, field)
    refused = ["", " 1", "1e2", "+1", "01", "1.", ".5", "1_0", "NaN", "\u0661", "1\n"]
    assert [value for value in refused if re.fullmatch(pattern, value)] == []

    @given(st.from_regex(pattern, fullmatch=True))
    def taken(value: str) -> None:
        PackageCreate.model_validate(
            {"name": "x", "type_id": 1, "weight_kg": "1", "content_value_usd": "1"} | {field: value}
        )

    taken()


async def test_the_name_is_documented_as_1_to_255_characters_after_trimming(spec: dict[str, Any]) -> None:
    """`"    "` was schema-valid (minLength 1) but refused; `" " + 255 letters` schema-invalid but taken."""
    name = spec["components"]["schemas"]["PackageCreate"]["properties"]["name"]
    assert "minLength" not in name and "maxLength" not in name, name
    pattern = name["pattern"]
    assert [value for value in ["", "    ", "\t\n", "x" * 256] if re.search(pattern, value)] == []

    @given(st.from_regex(pattern))
    def taken(value: str) -> None:
        PackageCreate.model_validate(
            {"name": value, "type_id": 1, "weight_kg": "1", "content_value_usd": "1"}
        )

    taken()
    assert re.search(pattern, "  " + "я" * 255 + "  ")


@pytest.mark.parametrize("value", ["", "1e2", "01.5", " 2", "1000.001", "0.000", "1.2345"])
def test_a_weight_string_off_the_pattern_is_refused(value: str) -> None:
    with pytest.raises(ValidationError):
        PackageCreate.model_validate(
            {"name": "x", "type_id": 1, "weight_kg": value, "content_value_usd": "1"}
        )


async def test_documented_integer_bounds_are_exact_in_every_json_tool(spec: dict[str, Any]) -> None:
    """A bound past 2**53 - 1 reads as a float that overshoots (2**63 - 1 becomes 2**63)."""
    bounds = [
        (name, field[key])
        for schema in spec["components"]["schemas"].values()
        for name, field in schema.get("properties", {}).items()
        for key in ("minimum", "maximum")
        if key in field
    ]
    assert ("company_id", 2**53 - 1) in bounds
    assert [(name, bound) for name, bound in bounds if abs(bound) > 2**53 - 1] == []


async def test_type_id_documents_the_existing_types(client: httpx.AsyncClient, spec: dict[str, Any]) -> None:
    """Any other integer is refused (422): the schema names the ids of GET /types/."""
    documented = spec["components"]["schemas"]["PackageCreate"]["properties"]["type_id"]["enum"]
    assert documented == [ptype["id"] for ptype in (await client.get("/types/")).json()]


async def test_allow_lists_every_method_of_the_path(client: httpx.AsyncClient, spec: dict[str, Any]) -> None:
    """A method a path does not take is 405, and `Allow` names exactly the methods the document gives it:
    no route shadows another (a task id is a UUID, so /admin/jobs/price-packages/ is no job's path)."""
    for path, operations in spec["paths"].items():
        url = path.format(package_id=1, status_id=uuid.uuid4(), task_id=uuid.uuid4())
        response = await client.options(url)
        assert response.status_code == 405, (path, response.text)
        allowed = {method.strip() for method in response.headers["Allow"].split(",")}
        assert allowed == {method.upper() for method in operations}, path
        assert response.json() == {"detail": "Method Not Allowed"}


async def test_a_task_id_is_a_uuid(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    """`GET /admin/jobs/price-packages/` is no job's state but a method the path does not take; an id that
    is not a UUID names no job."""
    shadowed = await client.get("/admin/jobs/price-packages/", headers=admin_headers)
    assert shadowed.status_code == 405, shadowed.text
    assert shadowed.headers["Allow"] == "POST"
    for task_id in ("some-task", "1", uuid.uuid4().hex[:-1]):
        response = await client.get(f"/admin/jobs/{task_id}/", headers=admin_headers)
        assert response.status_code == 404, (task_id, response.text)
    known = uuid.uuid4()
    response = await client.get(f"/admin/jobs/{str(known).upper()}/", headers=admin_headers)
    assert response.status_code == 200 and response.json()["task_id"] == str(known), response.text


async def test_documented_error_bodies_are_the_ones_sent(
    customer: httpx.AsyncClient, spec: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    """What a client reads in the document's examples is what it gets, error by error and route by route."""
    sent = [
        (
            "get",
            "/packages/status/{status_id}/",
            404,
            await customer.get(f"/packages/status/{uuid.uuid4()}/"),
        ),
        ("get", "/packages/{package_id}/", 404, await customer.get("/packages/0/")),
        (
            "post",
            "/packages/{package_id}/transport-company/",
            404,
            await customer.post(
                "/packages/0/transport-company/", json={"company_id": 7}, headers=admin_headers
            ),
        ),
        ("post", "/admin/jobs/price-packages/", 401, await customer.post("/admin/jobs/price-packages/")),
        (
            "post",
            "/admin/jobs/price-packages/",
            403,
            await customer.post("/admin/jobs/price-packages/", headers={"X-Admin-Token": "wrong"}),
        ),
    ]
    customer.cookies.clear()
    sent.append(("get", "/packages/", 401, await customer.get("/packages/")))
    operations = _operations(spec)
    for method, path, status, response in sent:
        documented = operations[(method, path)]["responses"][str(status)]["content"]["application/json"]
        assert response.status_code == status, response.text
        assert response.json() == documented["example"], (method, path, status)


async def test_docs_page_serves(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert "swagger" in response.text.lower()


#: Queries of GET /admin/stats/daily-costs/: whether the server takes each one's shape.
DAILY_COSTS_QUERIES = [
    ({"date": "2026-01-05"}, True),
    ({"from": "2026-01-01", "to": "2026-01-31"}, True),
    ({}, False),
    ({"to": "2026-01-31"}, False),
    ({"from": "2026-01-01"}, False),
    ({"date": "2026-01-05", "from": "2026-01-01", "to": "2026-01-31"}, False),
]


def _documented_shapes(operation: dict[str, Any]) -> list[tuple[set[str], set[str]]]:
    """The query's documented shapes, each (required names, allowed names): one per `oneOf` branch of an
    exploded object parameter, or the query parameters themselves."""
    query = [parameter for parameter in operation["parameters"] if parameter["in"] == "query"]
    if len(query) == 1 and query[0].get("explode") and "oneOf" in query[0]["schema"]:
        return [
            (set(branch["required"]), set(branch["properties"]))
            for branch in query[0]["schema"]["oneOf"]
            if branch.get("additionalProperties") is False
        ]
    names = {parameter["name"] for parameter in query}
    return [({parameter["name"] for parameter in query if parameter.get("required")}, names)]


async def test_the_daily_costs_query_is_documented_as_the_server_takes_it(
    client: httpx.AsyncClient, spec: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    """`date`, or `from` with `to`: a query of another shape (`?to=` alone, none at all) is 422, and the
    document says so rather than offering it as valid."""
    shapes = _documented_shapes(spec["paths"]["/admin/stats/daily-costs/"]["get"])
    for query, taken in DAILY_COSTS_QUERIES:
        documented = any(required <= query.keys() <= allowed for required, allowed in shapes)
        response = await client.get("/admin/stats/daily-costs/", params=query, headers=admin_headers)
        assert (documented, response.status_code) == (taken, 200 if taken else 422), (query, response.text)
