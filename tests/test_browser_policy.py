"""What browsers are held to. The pages (`/`, `/admin/`, `/docs`) and their files: no inline script or style,
nothing loaded from elsewhere, never framed; every other answer loads and runs nothing, fast paths included.
In Chromium the three pages work under that policy, nothing refused; `/docs` with no other origin reachable.
"""

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, expect

from delivery.api import fastpath
from tests.browser import DESKTOP, LiveServer, new_page
from tests.factories import Maker, add_package, open_session
from tests.helpers import valid_body
from tests.stack import ADMIN_TOKEN

PAGES = ["/", "/admin/", "/docs"]
#: Where the pages' scripts import more: a module of each tree, beyond the files the pages name.
IMPORTED = ["/static/js/lib/api.js", "/static/js/customer/list.js", "/static/js/admin/chart.js"]
REFERRER_POLICIES = {"no-referrer", "same-origin"}


def directives(response: httpx.Response) -> dict[str, list[str]]:
    """The response's one Content-Security-Policy, by directive."""
    policies = response.headers.get_list("content-security-policy")
    assert len(policies) == 1, policies  # two would both apply: the stricter one wins
    parsed = {}
    for directive in policies[0].split(";"):
        name, *values = directive.split()
        parsed[name] = values
    return parsed


def effective(policy: dict[str, list[str]], *chain: str) -> list[str]:
    """The sources of the first directive of `chain` that the policy has, else those of default-src."""
    return next(policy[name] for name in (*chain, "default-src") if name in policy)


#: What loads scripts, styles, connections and fonts, each with its fallback chain.
FETCHES = [
    ("script-src-elem", "script-src"),
    ("script-src-attr", "script-src"),
    ("style-src-elem", "style-src"),
    ("style-src-attr", "style-src"),
    ("connect-src",),
    ("font-src",),
]


def assert_common_headers(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] in REFERRER_POLICIES


def assert_page_policy(response: httpx.Response, *, images: list[str] | None = None) -> None:
    """Scripts, styles and everything else from the app alone, nothing inline; no framing, no plugins, no
    other base or form target; images from the app, or from where `images` says."""
    assert response.status_code == 200, (response.url, response.status_code)
    assert_common_headers(response)
    policy = directives(response)
    assert "'unsafe-inline'" not in response.headers["content-security-policy"]
    assert "'unsafe-eval'" not in response.headers["content-security-policy"]
    assert policy["default-src"] == ["'self'"]
    for chain in FETCHES:
        assert effective(policy, *chain) == ["'self'"], (response.url, chain)
    assert effective(policy, "img-src") == (images or ["'self'"]), response.url
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["base-uri"] == ["'self'"]
    assert policy["form-action"] == ["'self'"]


def assert_api_policy(response: httpx.Response) -> None:
    """Were the answer opened as a document, nothing in it loads or runs, and no page can frame it."""
    assert_common_headers(response)
    assert directives(response) == {"default-src": ["'none'"], "frame-ancestors": ["'none'"]}


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        url = named.get("src") if tag == "script" else named.get("href") if tag == "link" else None
        if url:
            self.found.append(url)


def assets_of(page: httpx.Response) -> list[str]:
    """The scripts, stylesheets and icons the page names."""
    parser = _Assets()
    parser.feed(page.text)
    return parser.found


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the fast paths that answered, rather than handing over to FastAPI's handler."""
    answered: list[str] = []
    for endpoint, fast in list(fastpath.FAST_PATHS.items()):

        async def recording(request: Any, fast: Any = fast) -> Any:
            response = await fast(request)
            if response is not None:
                answered.append(fast.__name__)
            return response

        monkeypatch.setitem(fastpath.FAST_PATHS, endpoint, recording)
    yield answered


class TestHeaders:
    async def test_each_page_and_each_of_its_files_carry_the_page_policy(
        self, client: httpx.AsyncClient
    ) -> None:
        for path in PAGES:
            page = await client.get(path)
            # Swagger UI's stylesheet draws icons as data: images: allowed on /docs, and nowhere else.
            assert_page_policy(page, images=["'self'", "data:"] if path == "/docs" else None)
            assets = assets_of(page)
            assert assets and all(url.startswith("/static/") for url in assets), (path, assets)
            for url in assets:
                assert_page_policy(await client.get(url))
        for url in IMPORTED:
            assert_page_policy(await client.get(url))

    async def test_docs_are_served_by_the_app(self, client: httpx.AsyncClient) -> None:
        """Swagger UI's script and stylesheet, as the page names them, from the app: no CDN."""
        named = assets_of(await client.get("/docs"))
        bundle = next(url for url in named if url.endswith("/swagger-ui-bundle.js"))
        stylesheet = next(url for url in named if url.endswith("/swagger-ui.css"))
        script = await client.get(bundle)
        assert script.headers["content-type"].startswith("text/javascript"), script.headers
        assert b"SwaggerUIBundle" in script.content
        assert (await client.get(stylesheet)).headers["content-type"].startswith("text/css")

    async def test_json_answers_carry_the_api_policy_on_the_fast_paths(
        self, client: httpx.AsyncClient, maker: Maker, taken: list[str]
    ) -> None:
        package_id = await add_package(maker, session_id=await open_session(client))
        for _ in range(2):  # the first of each may fill the caches the fast paths read
            for response in [
                await client.get("/types/"),
                await client.get("/packages/"),
                await client.get(f"/packages/{package_id}/"),
                await client.post("/packages/", json=valid_body()),
            ]:
                assert response.status_code in (200, 202), response.text
                assert_api_policy(response)
        assert set(taken) == {"_fast_types", "_fast_list", "_fast_package", "_fast_register"}

    async def test_every_other_answer_carries_the_api_policy(
        self, client: httpx.AsyncClient, admin_headers: dict[str, str]
    ) -> None:
        answers = [
            await client.get("/sessions/new/"),
            await client.get("/openapi.json"),
            await client.get("/web/package-rules.json"),
            await client.get("/admin/stats/backlog/", headers=admin_headers),
            await client.get("/healthz"),
            await client.get("/metrics"),
            await client.post("/packages/", json={"name": ""}),
            await client.post("/packages/", content=b"x" * (65 * 1024)),
            await client.get("/no-such-page"),
        ]
        client.cookies.clear()
        answers.append(await client.get("/packages/"))
        assert [response.status_code for response in answers] == [
            204,
            200,
            200,
            200,
            200,
            200,
            422,
            413,
            404,
            401,
        ]
        for response in answers:
            assert_api_policy(response)

    async def test_redoc_is_not_served(self, client: httpx.AsyncClient) -> None:
        """ReDoc injects its styles inline, which the pages' policy refuses: not offered half-working."""
        assert (await client.get("/redoc")).status_code == 404


class TestInChromium:
    async def test_the_customer_page_works_under_its_policy(
        self, browser: Browser, live_server: LiveServer
    ) -> None:
        async with new_page(browser, live_server, DESKTOP, "/") as page:
            await expect(page.locator('#type_id option[value="1"]')).to_have_count(1)
            await expect(page.locator("#list-status")).to_have_text(re.compile(r"\S"))

    async def test_the_operators_page_works_under_its_policy(
        self, browser: Browser, live_server: LiveServer
    ) -> None:
        async with new_page(browser, live_server, DESKTOP, "/admin/") as page:
            await page.locator("#token").fill(ADMIN_TOKEN)
            await page.locator("#token").press("Enter")
            await expect(page.locator("#console")).to_be_visible()
            await expect(page.locator("#costs-status")).to_have_text(re.compile(r"\S"))
            await expect(page.locator("#backlog-unpriced")).to_have_text(re.compile(r"\d"))

    async def test_docs_work_offline_under_their_policy(
        self, browser: Browser, live_server: LiveServer
    ) -> None:
        """Every other origin is unreachable (`new_page` aborts and fails on any request to one): Swagger UI
        lists the operations from the app's files, and "Try it out" calls the API."""
        async with new_page(browser, live_server, DESKTOP, "/docs") as page:
            operations = page.locator(".opblock-summary-path")
            await expect(operations.filter(has_text=re.compile(r"^/packages/$"))).to_have_count(2)
            await expect(operations.filter(has_text=re.compile(r"^/types/$"))).to_be_visible()

            await operations.filter(has_text=re.compile(r"^/types/$")).click()
            await page.get_by_role("button", name="Try it out").click()
            await page.get_by_role("button", name="Execute").click()
            await expect(page.locator(".live-responses-table tbody .response-col_status")).to_have_text("200")
            await expect(page.locator(".live-responses-table")).to_contain_text('"clothes"')

            loaded = await page.evaluate(
                "performance.getEntriesByType('resource').map((entry) => entry.name)"
            )
            fetched = [url for url in loaded if not url.startswith("data:")]  # drawn, not fetched
            assert all(url.startswith(f"{live_server.url}/") for url in fetched), fetched
            assert f"{live_server.url}/static/swagger-ui/swagger-ui-bundle.js" in fetched, fetched
