# The page speaks Russian: its Cyrillic texts are what the tests look for, not look-alikes of Latin letters.
# ruff: noqa: RUF001
"""The customer's page at `/`, end to end: headless Chromium on the app served over real HTTP, with a worker.

The browser talks only to the public API, as a customer's would. Screenshots go to `test-artifacts/`.
"""

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

import httpx
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    Request,
    Route,
    expect,
)
from sqlalchemy import delete, select

from delivery.models import ClientSession, PackageType
from delivery.service import hash_token
from tests.browser import (
    DESKTOP,
    PHONE,
    LiveServer,
    new_page,
    no_horizontal_scroll,
    screenshot,
    shown,
)
from tests.factories import COOKIE, Maker, add_package, add_packages
from tests.fakebank import FakeBank
from tests.helpers import expected_cost, fixture_rate
from tests.stack import Stack, WorkerProcess

#: A moment with a calm bank; without one, RATE_RETRY_WINDOW and the job's retries plus the polling backoff.
REGISTERED_TIMEOUT_MS = 40_000


@asynccontextmanager
async def open_page(browser: Browser, server: LiveServer, viewport: dict[str, int]) -> AsyncIterator[Page]:
    """A fresh customer on the page, once it has loaded; fails on any script error."""
    async with new_page(browser, server, viewport, "/") as page:
        await loaded(page)
        yield page


@pytest.fixture
async def page(browser: Browser, live_server: LiveServer) -> AsyncIterator[Page]:
    async with open_page(browser, live_server, DESKTOP) as desktop:
        yield desktop


async def loaded(page: Page) -> None:
    await expect(form(page).get_by_label("Тип").locator("option", has_text="Одежда")).to_have_count(1)
    await expect(page.locator("#list-status")).to_have_text(re.compile(r"Посылок пока нет|Всего|Найдено"))


def form(page: Page) -> Locator:
    return page.locator("#register-form")


def filters(page: Page) -> Locator:
    return page.get_by_role("group", name="Фильтры")


def rows(page: Page) -> Locator:
    return page.locator("#parcels tbody tr")


def registration(page: Page) -> Locator:
    """The newest registration the page follows, in the live region."""
    return page.locator("[aria-live=polite] li").first


async def fill_form(page: Page, *, name: str, weight: str, type_label: str, value: str) -> None:
    f = form(page)
    await f.get_by_label("Название").fill(name)
    await f.get_by_label("Вес, кг").fill(weight)
    await f.get_by_label("Тип").select_option(label=type_label)
    await f.get_by_label("Стоимость содержимого, $").fill(value)


async def register(page: Page, *, name: str, weight: str, type_label: str, value: str) -> Locator:
    """Fill the form, submit it from the keyboard, and return the registration's item in the live region."""
    await fill_form(page, name=name, weight=weight, type_label=type_label, value=value)
    await form(page).get_by_label("Стоимость содержимого, $").press("Enter")
    item = registration(page)
    await expect(item).to_contain_text(name)
    return item


async def session_id_of(context: BrowserContext, maker: Maker) -> int:
    """The session the page opened for itself, found by its cookie's hash (the page cannot read it)."""
    cookie = next(c for c in await context.cookies() if c.get("name") == COOKIE)
    assert cookie.get("httpOnly") is True
    async with maker() as db:
        session_id = await db.scalar(
            select(ClientSession.id).where(ClientSession.token_hash == hash_token(cookie.get("value", "")))
        )
    assert session_id is not None
    return session_id


async def record_shown_registrations(page: Page) -> None:
    """From now on, note each registration item as it first appears in the live region: its state and badge.
    The page polls its status within a third of a second, so a fast worker can move it on before a locator
    sees it; the note is taken when the item is added, before the page's first poll can run."""
    await page.evaluate(
        """() => {
            window.shownRegistrations = [];
            new MutationObserver((records) => {
                for (const record of records) {
                    for (const node of record.addedNodes) {
                        const badge = node.querySelector(".badge");
                        window.shownRegistrations.push([node.dataset.state, badge.textContent]);
                    }
                }
            }).observe(document.getElementById("registrations"), { childList: true });
        }"""
    )


def count_posts(page: Page) -> list[str]:
    """The registrations the page sends from now on (their URLs)."""
    posts: list[str] = []

    def on_request(request: Request) -> None:
        if request.method == "POST":
            posts.append(request.url)

    page.on("request", on_request)
    return posts


async def test_register_and_follow_until_registered_with_cost(
    stack: Stack, worker: WorkerProcess, page: Page, maker: Maker
) -> None:
    assert await page.evaluate("document.cookie") == "", "the session cookie must be HttpOnly"
    await expect(page.locator("#list-status")).to_have_text("Посылок пока нет. Зарегистрируйте первую.")

    await record_shown_registrations(page)
    item = await register(page, name="Зимняя куртка", weight="1,25", type_label="Одежда", value="120")
    # Shown at once as accepted and waiting, then followed to its end.
    assert await page.evaluate("window.shownRegistrations") == [["pending", "Ожидает"]]
    await expect(item).to_have_attribute("data-state", "registered", timeout=REGISTERED_TIMEOUT_MS)
    cost = expected_cost("1.25", "120", fixture_rate()[0])
    await expect(item).to_contain_text(f"доставка: {shown(cost)} ₽")
    # The form is ready for the next parcel, the focus back at its first field.
    await expect(form(page).get_by_label("Название")).to_have_value("")
    await expect(form(page).get_by_label("Название")).to_be_focused()

    # The list refreshes itself, without a reload.
    await expect(rows(page)).to_have_count(1)
    row = rows(page).first
    await expect(row).to_contain_text("Зимняя куртка")
    await expect(row).to_contain_text("Одежда")
    await expect(row).to_contain_text(f"{shown(cost)} ₽")
    await expect(page.locator("#list-status")).to_have_text("Всего: 1 посылка")
    await screenshot(page, f"web-desktop-{stack.name}.png")

    # The detail, opened and closed by keyboard; the focus comes back to where it was.
    opener = row.get_by_role("button", name="Зимняя куртка")
    await opener.focus()
    await page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_role("heading")).to_have_text("Зимняя куртка")
    await expect(dialog).to_contain_text("1,250 кг")
    await expect(dialog).to_contain_text("120,00 $")
    await expect(dialog).to_contain_text(f"{shown(cost)} ₽")
    await expect(dialog).to_contain_text("Не назначена")
    await screenshot(page, f"web-desktop-detail-{stack.name}.png", full_page=False)
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(opener).to_be_focused()

    # A returning customer keeps the session, and so the parcels.
    session_before = await session_id_of(page.context, maker)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    await page.reload()
    await loaded(page)
    assert not [url for url in requested if "/sessions/new/" in url]
    await expect(rows(page)).to_have_count(1)
    assert await session_id_of(page.context, maker) == session_before


async def test_filters_and_pages(stack: Stack, page: Page, maker: Maker) -> None:
    session_id = await session_id_of(page.context, maker)
    await add_packages(
        maker, session_id=session_id, count=13, type_id=1, name="Куртка", delivery_cost_rub=Decimal("1234.50")
    )
    await add_packages(maker, session_id=session_id, count=12, type_id=2, name="Телефон")
    status = page.locator("#list-status")
    info = page.locator("#page-info")
    previous = page.get_by_role("button", name="← Назад")
    following = page.get_by_role("button", name="Вперёд →")

    await page.get_by_role("button", name="Обновить").click()
    await expect(status).to_have_text("Всего: 25 посылок")
    await expect(rows(page)).to_have_count(10)
    await expect(rows(page).first).to_contain_text("Телефон 11")
    await expect(info).to_have_text("Страница 1 из 3")
    await expect(previous).to_be_disabled()

    await following.click()
    await expect(info).to_have_text("Страница 2 из 3")
    await expect(rows(page).first).to_contain_text("Телефон 1")
    await expect(rows(page).nth(2)).to_contain_text("Куртка 12")
    await following.click()
    await expect(info).to_have_text("Страница 3 из 3")
    await expect(rows(page)).to_have_count(5)
    await expect(rows(page).last).to_contain_text("Куртка 0")
    await expect(following).to_be_disabled()
    await expect(previous).to_be_focused()  # the keyboard is not dropped on a disabled button

    # A filter starts again at page 1; the type and "cost known" filters combine.
    await filters(page).get_by_label("Тип").select_option(label="Электроника")
    await expect(status).to_have_text("Найдено: 12 посылок")
    await expect(info).to_have_text("Страница 1 из 2")
    await expect(rows(page)).to_have_count(10)
    await expect(rows(page).filter(has_text="Не рассчитано")).to_have_count(10)

    cost = filters(page).get_by_label("Стоимость доставки")
    await cost.select_option(label="Рассчитана")
    await expect(status).to_have_text("Нет посылок с такими фильтрами.")
    await expect(page.locator("#parcels")).to_be_hidden()
    await expect(page.get_by_role("navigation", name="Страницы списка")).to_be_hidden()

    await filters(page).get_by_label("Тип").select_option(label="Все типы")
    await expect(status).to_have_text("Найдено: 13 посылок")
    await expect(rows(page).filter(has_text=f"{shown('1234.50')} ₽")).to_have_count(10)
    await expect(page.get_by_text("Не рассчитано")).to_have_count(0)
    await following.click()
    await expect(info).to_have_text("Страница 2 из 2")
    await expect(rows(page)).to_have_count(3)

    await cost.select_option(label="Не рассчитана")
    await expect(status).to_have_text("Найдено: 12 посылок")
    await expect(info).to_have_text("Страница 1 из 2")
    await expect(rows(page).filter(has_text="Не рассчитано")).to_have_count(10)


async def test_bank_outage_shows_not_calculated(
    stack: Stack, worker: WorkerProcess, bank: FakeBank, page: Page
) -> None:
    bank.mode = "error"
    item = await register(page, name="Ноутбук", weight="2.5", type_label="Электроника", value="999.99")
    await expect(item).to_have_attribute("data-state", "registered", timeout=REGISTERED_TIMEOUT_MS)
    await expect(item).to_contain_text("доставка: Не рассчитано")
    await expect(rows(page)).to_have_count(1)
    await expect(rows(page).first.locator("td").last).to_have_text("Не рассчитано")

    await item.get_by_role("button", name=re.compile("Подробнее")).click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text("Стоимость доставки")
    await expect(dialog).to_contain_text("Не рассчитано")
    await expect(dialog).to_contain_text("999,99 $")


async def test_bad_weight_is_shown_at_the_field(stack: Stack, page: Page) -> None:
    posts = count_posts(page)
    weight = form(page).get_by_label("Вес, кг")
    error = page.locator("#weight_kg-error")
    cases = [
        ("0", "Должно быть больше 0"),
        ("-1", "Должно быть больше 0"),
        ("тяжёлая", "Введите число, например 1,25"),
        ("1,2345", "Не больше 3 знаков после запятой"),
        ("1000,001", "Должно быть не больше 1000"),
    ]
    for bad, message in cases:
        await fill_form(page, name="Книги", weight=bad, type_label="Разное", value="10")
        await form(page).get_by_role("button", name="Зарегистрировать").click()
        await expect(error).to_have_text(message)
        await expect(weight).to_have_attribute("aria-invalid", "true")
        await expect(weight).to_have_attribute("aria-describedby", re.compile(r"\bweight_kg-error\b"))
        await expect(weight).to_be_focused()
        await expect(weight).to_have_accessible_description(re.compile(re.escape(message)))
    assert posts == [], "nothing invalid is sent"

    # Typing clears the error; the other fields are checked too.
    await weight.fill("1,5")
    await expect(error).to_be_hidden()
    await expect(weight).not_to_have_attribute("aria-invalid", "true")
    await form(page).get_by_label("Название").fill("   ")
    await form(page).get_by_label("Стоимость содержимого, $").fill("10,555")
    await form(page).get_by_role("button", name="Зарегистрировать").click()
    await expect(page.locator("#name-error")).to_have_text("Укажите название")
    await expect(page.locator("#content_value_usd-error")).to_have_text("Не больше 2 знаков после запятой")
    await expect(form(page).get_by_label("Название")).to_be_focused()
    assert posts == []
    await screenshot(page, f"web-desktop-errors-{stack.name}.png")


async def test_server_422_is_shown_at_the_field(stack: Stack, page: Page, maker: Maker) -> None:
    """A check only the server can make (the type went away after the page loaded) lands at its field."""
    posts = count_posts(page)
    async with maker() as db:
        await db.execute(delete(PackageType).where(PackageType.id == 3))
        await db.commit()
    await fill_form(page, name="Книги", weight="1", type_label="Разное", value="10")
    async with page.expect_response(lambda r: r.request.method == "POST") as answer:
        await form(page).get_by_role("button", name="Зарегистрировать").click()
    assert (await answer.value).status == 422
    type_select = form(page).get_by_label("Тип")
    await expect(page.locator("#type_id-error")).to_have_text(
        "Такого типа больше нет. Обновите страницу и выберите тип из списка."
    )
    await expect(type_select).to_have_attribute("aria-invalid", "true")
    await expect(type_select).to_be_focused()
    await expect(page.locator("[aria-live=polite] li")).to_have_count(0)
    assert len(posts) == 1


async def test_service_unavailable_and_network_failure(
    stack: Stack, page: Page, live_server: LiveServer
) -> None:
    banner = page.get_by_role("alert")
    refresh = page.get_by_role("button", name="Обновить")

    async def unavailable(route: Route) -> None:
        await route.fulfill(
            status=503,
            headers={"Retry-After": "5"},
            json={"detail": "database is unavailable, try again later"},
        )

    # A 503 is injected at the browser's network layer: the real one needs a backing service taken down.
    def is_list(url: str) -> bool:
        return "/packages/?" in url

    await page.route(is_list, unavailable)
    await refresh.click()
    await expect(banner).to_have_text(
        "Сервис временно недоступен, попробуйте позже. Повторите попытку через 5 с."
    )
    await expect(page.locator("#list-status")).to_have_text("Список не загрузился.")
    await page.unroute(is_list, unavailable)
    await refresh.click()
    await expect(banner).to_have_text("")  # the service answers again: the banner goes
    await expect(page.locator("#list-status")).to_have_text("Посылок пока нет. Зарегистрируйте первую.")

    # The server goes away for real.
    live_server.stop()
    await refresh.click()
    await expect(banner).to_contain_text("Нет связи с сервером")
    await fill_form(page, name="Книги", weight="1", type_label="Разное", value="10")
    await form(page).get_by_role("button", name="Зарегистрировать").click()
    await expect(page.locator("#form-error")).to_have_text(
        "Посылка не отправлена: повторите, когда связь восстановится."
    )
    await expect(form(page).get_by_label("Название")).to_have_value("Книги")  # nothing typed is lost


async def test_phone_layout(
    stack: Stack, worker: WorkerProcess, browser: Browser, live_server: LiveServer, maker: Maker
) -> None:
    async with open_page(browser, live_server, PHONE) as phone:
        session_id = await session_id_of(phone.context, maker)
        await add_package(
            maker,
            session_id=session_id,
            type_id=3,
            name="Очень длинное название посылки, которое не помещается в одну строку телефона",
            weight_kg=Decimal("999.999"),
            content_value_usd=Decimal("999999999.99"),
            delivery_cost_rub=Decimal("47619047.62"),
        )
        await add_package(maker, session_id=session_id, type_id=2, name="Наушники")
        item = await register(phone, name="Зимняя куртка", weight="1.25", type_label="Одежда", value="120")
        await expect(item).to_have_attribute("data-state", "registered", timeout=REGISTERED_TIMEOUT_MS)
        await expect(rows(phone)).to_have_count(3)
        await expect(rows(phone).nth(1)).to_contain_text("Не рассчитано")
        await expect(rows(phone).nth(2)).to_contain_text(f"{shown('47619047.62')} ₽")
        await no_horizontal_scroll(phone, PHONE["width"])
        await screenshot(phone, f"web-phone-{stack.name}.png")

        await rows(phone).nth(2).get_by_role("button").click()
        await expect(phone.get_by_role("dialog")).to_contain_text(f"{shown('999999999.99')} $")
        await no_horizontal_scroll(phone, PHONE["width"])
        await screenshot(phone, f"web-phone-detail-{stack.name}.png", full_page=False)


async def test_the_forms_rules_are_the_apis(stack: Stack, customer: httpx.AsyncClient) -> None:
    """The page checks with the bounds the app serves: each is exactly where the API starts refusing."""
    response = await customer.get("/web/package-rules.json")
    assert response.status_code == 200
    rules = response.json()
    weight, value, name = rules["weight_kg"], rules["content_value_usd"], rules["name"]
    assert (weight["gt"], weight["le"], weight["decimal_places"]) == ("0", "1000", 3)
    assert (value["ge"], value["le"], value["decimal_places"]) == ("0", "1000000000", 2)

    def unit(places: int) -> Decimal:
        return Decimal(1).scaleb(-places)

    w_unit, v_unit = unit(weight["decimal_places"]), unit(value["decimal_places"])
    accepted = [
        {"weight_kg": weight["le"], "content_value_usd": value["le"], "name": "я" * name["max_length"]},
        {"weight_kg": str(Decimal(weight["gt"]) + w_unit), "content_value_usd": value["ge"]},
    ]
    refused = [
        ({"weight_kg": weight["gt"]}, "weight_kg"),
        ({"weight_kg": str(Decimal(weight["le"]) + w_unit)}, "weight_kg"),
        ({"weight_kg": str(Decimal("1") + w_unit / 10)}, "weight_kg"),
        ({"content_value_usd": str(Decimal(value["ge"]) - v_unit)}, "content_value_usd"),
        ({"content_value_usd": str(Decimal(value["le"]) + v_unit)}, "content_value_usd"),
        ({"content_value_usd": str(Decimal("1") + v_unit / 10)}, "content_value_usd"),
        ({"name": "я" * (name["max_length"] + 1)}, "name"),
        ({"name": " " * name["min_length"]}, "name"),
    ]
    base = {"name": "Книги", "weight_kg": "1", "type_id": 1, "content_value_usd": "10"}
    for change in accepted:
        answer = await customer.post("/packages/", json=base | change)
        assert answer.status_code == 202, (change, answer.text)
    for change, field in refused:
        answer = await customer.post("/packages/", json=base | change)
        assert answer.status_code == 422, (change, answer.text)
        assert [error["loc"] for error in answer.json()["detail"]] == [["body", field]], change


async def test_pages_are_served(client: httpx.AsyncClient) -> None:
    for path, title in (("/", "Доставка посылок"), ("/admin/", "Консоль оператора")):
        response = await client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        assert f"<title>{title}" in response.text
    response = await client.get("/admin", follow_redirects=True)
    assert response.status_code == 200
    module = await client.get("/static/js/lib/decimal.js")
    assert module.status_code == 200
    assert module.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript")
