# The page speaks Russian: its Cyrillic texts are what the tests look for, not look-alikes of Latin letters.
# ruff: noqa: RUF001
"""The operators' page at `/admin/`, end to end in headless Chromium, on both stacks.

It talks only to the operator endpoints, with the token the operator typed in. Screenshots go to
`test-artifacts/`.
"""

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Locator, Page, expect
from sqlalchemy import select

from delivery.jobs import price_pending
from delivery.models import AuditEntry, DeadLetter, Package
from delivery.rates import Rate
from delivery.registration import RegistrationJob
from tests.browser import DESKTOP, PHONE, LiveServer, new_page, no_horizontal_scroll, screenshot, shown
from tests.factories import Maker, add_operator, add_package, add_session, add_unpriced_packages
from tests.helpers import expected_cost, wait_until
from tests.stack import ADMIN_TOKEN, Stack, WorkerProcess, clear_store, purge_queues

JOB_TIMEOUT_MS = 40_000
RATE = Rate(usd_rub=Decimal("78.1959"), date=date(2025, 6, 26))
MAX_JSON_INT = 2**53 - 1


@asynccontextmanager
async def console(
    browser: Browser, server: LiveServer, viewport: dict[str, int] = DESKTOP
) -> AsyncIterator[Page]:
    """A fresh operator on the page, logged in with the right token from the keyboard."""
    async with new_page(browser, server, viewport, "/admin/") as page:
        await log_in(page, ADMIN_TOKEN)
        await expect(page.locator("#console")).to_be_visible()
        yield page


async def log_in(page: Page, token: str) -> None:
    field = page.get_by_label("Токен оператора")
    await expect(field).to_be_focused()  # the page starts there: nothing to click
    await field.fill(token)
    await field.press("Enter")


def today() -> date:
    return datetime.now(UTC).date()


def at_noon(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


async def price_on(maker: Maker, day: date, specs: list[tuple[int, str, str]]) -> None:
    """Packages priced on `day`, as the pricing job prices them."""
    session_id = (await add_session(maker))[0]
    await add_unpriced_packages(maker, session_id, specs)
    assert await price_pending(maker, RATE, clock=lambda: at_noon(day)) == len(specs)


async def endpoint(client: httpx.AsyncClient, start: date, end: date) -> dict[str, Any]:
    response = await client.get(
        "/admin/stats/daily-costs/",
        params={"from": start.isoformat(), "to": end.isoformat()},
        headers={"X-Admin-Token": ADMIN_TOKEN},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def cells(page: Page, day: str) -> Locator:
    return page.locator(f'#costs-body tr[data-date="{day}"] td')


async def test_a_wrong_token_is_refused_and_the_right_one_kept_for_the_tab(
    stack: Stack, browser: Browser, live_server: LiveServer
) -> None:
    async with new_page(browser, live_server, DESKTOP, "/admin/") as page:
        await expect(page.locator("#console")).to_be_hidden()
        await log_in(page, "not-the-token")
        error = page.locator("#token-error")
        await expect(error).to_have_text("Неверный токен.")
        await expect(page.get_by_label("Токен оператора")).to_have_attribute("aria-invalid", "true")
        await expect(page.locator("#console")).to_be_hidden()
        assert await page.evaluate("sessionStorage.getItem('delivery.admin.token')") is None
        await screenshot(page, f"admin-refused-{stack.name}.png")

        await page.get_by_label("Токен оператора").fill(ADMIN_TOKEN)
        await page.get_by_label("Токен оператора").press("Enter")
        await expect(page.locator("#console")).to_be_visible()
        assert await page.evaluate("sessionStorage.getItem('delivery.admin.token')") == ADMIN_TOKEN
        assert ADMIN_TOKEN not in page.url
        await expect(page.get_by_label("Токен оператора")).to_have_value("")

        # Kept for the tab: a reload goes straight to the console.
        await page.reload()
        await expect(page.locator("#console")).to_be_visible()
        await expect(page.locator("#backlog-unpriced")).to_have_text("0")

        # A token the server stops taking sends the operator back to the form, saying so.
        await page.evaluate("sessionStorage.setItem('delivery.admin.token', 'changed')")
        await page.reload()
        await expect(error).to_have_text("Неверный токен.")
        await expect(page.locator("#console")).to_be_hidden()

        await log_in(page, ADMIN_TOKEN)
        await page.get_by_role("button", name="Выйти").click()
        await expect(page.get_by_label("Токен оператора")).to_be_visible()
        assert await page.evaluate("sessionStorage.getItem('delivery.admin.token')") is None


async def test_chart_and_table_agree_with_the_endpoint(
    stack: Stack, browser: Browser, live_server: LiveServer, maker: Maker, client: httpx.AsyncClient
) -> None:
    now = today()
    await price_on(maker, now - timedelta(days=1), [(1, "1.25", "120"), (2, "999.999", "999999999.99")])
    await price_on(maker, now - timedelta(days=4), [(1, "0.001", "0"), (3, "3.333", "0.05")])
    await price_on(maker, now - timedelta(days=45), [(2, "12", "1499.5")])
    start, end = now - timedelta(days=29), now
    expected = await endpoint(client, start, end)

    async with console(browser, live_server) as page:
        status = page.locator("#costs-status")
        await expect(status).to_contain_text("30 дней")
        await expect(page.locator("#costs-body tr")).to_have_count(30)
        bars = page.locator("#chart svg g.day")
        await expect(bars).to_have_count(30)
        assert await page.get_by_label("С (UTC)").input_value() == start.isoformat()
        assert await page.get_by_label("По (UTC)").input_value() == end.isoformat()

        for day in expected["days"]:
            row = cells(page, day["date"])
            bar = page.locator(f'#chart g.day[data-date="{day["date"]}"]')
            day_total = sum((Decimal(t["total_cost_rub"]) for t in day["totals"]), Decimal("0.00"))
            for index, total in enumerate(day["totals"]):
                cell = row.nth(index)
                assert await cell.get_attribute("data-total") == total["total_cost_rub"]
                assert await cell.get_attribute("data-packages") == str(total["packages"])
                type_id = total["type"]["id"]
                segment = bar.locator(f'rect[data-type-id="{type_id}"]')
                assert await segment.get_attribute("data-total") == total["total_cost_rub"]
            assert await row.last.get_attribute("data-total") == f"{day_total:.2f}"
            assert await bar.get_attribute("data-total") == f"{day_total:.2f}"

        # What a person reads: the busiest day, to the kopeck, in the table and on the focused bar.
        busy = (now - timedelta(days=1)).isoformat()
        busy_total = next(d for d in expected["days"] if d["date"] == busy)["totals"][1]["total_cost_rub"]
        assert busy_total == expected_cost("999.999", "999999999.99", RATE.usd_rub)
        await expect(cells(page, busy).nth(1)).to_contain_text(f"{shown(busy_total)} ₽")
        last_bar = page.locator("#chart g.day").last
        await last_bar.focus()
        await page.keyboard.press("ArrowLeft")
        focused = page.locator(f'#chart g.day[data-date="{busy}"]')
        await expect(focused).to_be_focused()
        tooltip = page.locator("#chart .tooltip")
        await expect(tooltip).to_be_visible()
        await expect(tooltip).to_contain_text(f"Электроника: {shown(busy_total)} ₽, 1 посылка")
        await expect(focused).to_have_attribute("aria-label", re.compile(re.escape(shown(busy_total))))
        await expect(page.locator("#legend li")).to_have_text(["Одежда", "Электроника", "Разное"])
        await screenshot(page, f"admin-tooltip-{stack.name}.png", full_page=False)

        # Another range, typed in: 50 days reach the old calculation; the footer sums the whole range.
        wide_start = now - timedelta(days=49)
        await page.get_by_label("С (UTC)").fill(wide_start.isoformat())
        await page.get_by_role("button", name="Показать").click()
        await expect(page.locator("#costs-body tr")).to_have_count(50)
        wide = await endpoint(client, wide_start, now)
        grand = sum(
            (Decimal(t["total_cost_rub"]) for d in wide["days"] for t in d["totals"]), Decimal("0.00")
        )
        assert await page.locator("#costs-foot td").last.get_attribute("data-total") == f"{grand:.2f}"
        # The status line counts what the endpoint counts (the five priced above, and any package another
        # test's late job priced meanwhile).
        count = sum(t["packages"] for d in wide["days"] for t in d["totals"])
        assert count >= 5
        await expect(status).to_contain_text(f"{count} посылок" if 5 <= count % 100 <= 20 else str(count))

        # A range the API would refuse is refused at once, at its field.
        await page.get_by_label("С (UTC)").fill((now - timedelta(days=400)).isoformat())
        await page.get_by_role("button", name="Показать").click()
        await expect(page.locator("#range-error")).to_have_text("Период — не больше 366 дней")


async def test_the_pricing_job_is_followed_to_its_result(
    stack: Stack, browser: Browser, live_server: LiveServer, maker: Maker
) -> None:
    # A worker of the tests before may hold a job for later (a retry's countdown), which `clean` cannot
    # reach: stopped, it gives it back to the queue, which is purged, and no pricing run is recorded yet.
    stack.stop_shared_worker()
    await asyncio.to_thread(purge_queues, stack.settings)
    await clear_store(stack.settings)
    stack.shared_worker()
    session_id = (await add_session(maker))[0]
    await add_unpriced_packages(maker, session_id, [(1, "1", "10"), (2, "2", "20"), (3, "3", "30")])
    async with console(browser, live_server) as page:
        await expect(page.locator("#backlog-unpriced")).to_have_text("3")
        await expect(page.locator("#backlog-last")).to_have_text("ещё не было")

        await page.get_by_role("button", name="Рассчитать сейчас").click()
        status = page.locator("#job-status")
        await expect(status).to_have_attribute("data-state", "SUCCESS", timeout=JOB_TIMEOUT_MS)
        await expect(status).to_contain_text("Задача выполнена: рассчитана стоимость 3 посылок.")
        task_id = await status.locator("code").text_content()
        assert task_id and re.fullmatch(r"[0-9a-f-]{36}", task_id)
        # The backlog refreshes at once, and the chart shows today's calculations.
        await expect(page.locator("#backlog-unpriced")).to_have_text("0")
        await expect(page.locator("#backlog-last")).not_to_have_text("ещё не было")
        last_day = page.locator(f'#costs-body tr[data-date="{today().isoformat()}"] td').last
        await expect(last_day).to_have_attribute("data-packages", "3")


async def test_dead_letters_are_shown_and_sent_back(
    stack: Stack, worker: WorkerProcess, browser: Browser, live_server: LiveServer, maker: Maker
) -> None:
    """A registration job dead-lettered two hours ago: the backlog counts it with its age; "Отправить снова"
    sends it back, and it registers."""
    session_id = (await add_session(maker))[0]
    registration_id = str(uuid.uuid4())
    job = RegistrationJob(registration_id, session_id, "Parcel", "1.5", 1, "40", time.time())
    async with maker() as db, db.begin():
        db.add(
            DeadLetter(
                registration_id=registration_id,
                session_id=session_id,
                body=json.dumps(job.to_json()),
                reason="type 1 no longer exists",
                deliveries=1,
                dead_at=datetime.now(UTC) - timedelta(hours=2, minutes=5),
            )
        )
    async with console(browser, live_server) as page:
        await expect(page.locator("#backlog-dead")).to_have_text("1, самое старое — 2 ч назад")
        await page.get_by_role("button", name="Отправить снова").click()
        await expect(page.locator("#dead-status")).to_have_text("Отправлено снова: 1.")
        # At the latest, the next refresh says so.
        await expect(page.locator("#backlog-dead")).to_have_text("нет", timeout=10_000)

    async def registered() -> bool:
        async with maker() as db:
            return (
                await db.scalar(
                    select(Package.id).where(Package.registration_id == uuid.UUID(registration_id))
                )
                is not None
            )

    await wait_until(registered, 30, "the job sent back registered")


async def test_a_company_is_bound_and_a_409_names_the_holder(
    stack: Stack, browser: Browser, live_server: LiveServer, maker: Maker
) -> None:
    session_id = (await add_session(maker))[0]
    first = await add_package(maker, session_id=session_id)
    second = await add_package(maker, session_id=session_id)
    async with console(browser, live_server) as page:
        package_field = page.get_by_label("Номер посылки")
        company_field = page.get_by_label("Номер компании")
        result = page.locator("#bind-result .outcome")

        async def bind(package_id: int | str, company_id: int | str) -> None:
            await package_field.fill(str(package_id))
            await company_field.fill(str(company_id))
            await company_field.press("Enter")

        await bind(first, 7)
        await expect(result).to_have_attribute("data-outcome", "bound")
        await expect(result).to_have_text(f"Посылка № {first} закреплена за компанией № 7.")

        await bind(first, 9)
        await expect(result).to_have_attribute("data-outcome", "conflict")
        await expect(result.locator("[data-holder]")).to_have_text("7")
        await expect(result).to_contain_text(f"посылку № {first} уже доставляет компания № 7")
        await screenshot(page, f"admin-conflict-{stack.name}.png")

        # The largest company id goes through exactly, and so does its 409; one more is refused on the page.
        await bind(second, MAX_JSON_INT)
        await expect(result).to_have_attribute("data-outcome", "bound")
        await bind(second, 1)
        await expect(result.locator("[data-holder]")).to_have_text(str(MAX_JSON_INT))
        await bind(second, MAX_JSON_INT + 1)
        await expect(page.locator("#bind-company-error")).to_be_visible()

        await bind(second + 1000, 3)
        await expect(result).to_have_text(f"Посылка № {second + 1000} не найдена.")

        await bind("0", "x")
        await expect(page.locator("#bind-package-error")).to_have_text(
            "Введите номер посылки: целое число от 1"
        )
        await expect(page.locator("#bind-company-error")).to_be_visible()
        await expect(package_field).to_be_focused()


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
async def test_keyboard_alone_at_phone_and_desktop_width(
    stack: Stack, browser: Browser, live_server: LiveServer, maker: Maker, viewport: dict[str, int]
) -> None:
    now = today()
    for back, specs in enumerate([[(1, "2", "50")], [(2, "1.5", "300"), (3, "0.5", "5")], [(1, "10", "10")]]):
        await price_on(maker, now - timedelta(days=2 * back + 1), specs)
    await add_unpriced_packages(maker, (await add_session(maker))[0], [(1, "1", "1")])
    async with new_page(browser, live_server, viewport, "/admin/") as page:
        await page.keyboard.type(ADMIN_TOKEN)  # the focus is already in the token field
        await page.keyboard.press("Enter")
        await expect(page.locator("#costs-body tr")).to_have_count(30)
        await expect(page.locator("#backlog-unpriced")).to_have_text("1")
        await no_horizontal_scroll(page, viewport["width"])
        name = "phone" if viewport is PHONE else "desktop"
        await screenshot(page, f"admin-{name}-overview-{stack.name}.png")

        # Tab order reaches the range, the chart (one stop), the backlog, the job and the binding.
        reached: list[str] = []
        for _ in range(20):
            await page.keyboard.press("Tab")
            reached.append(
                await page.evaluate(
                    "document.activeElement.id || document.activeElement.getAttribute('data-date') || ''"
                )
            )
        expected_stops = ["range-from", "range-to", now.isoformat(), "job-run", "bind-package", "bind-submit"]
        for stop in expected_stops:
            assert stop in reached, (stop, reached)

        # The chart from the keyboard: its one stop is the newest day; the arrows go back in time.
        await page.locator("#chart g.day[tabindex='0']").focus()
        for _ in range(3):
            await page.keyboard.press("ArrowLeft")
        day = (now - timedelta(days=3)).isoformat()
        await expect(page.locator(f'#chart g.day[data-date="{day}"]')).to_be_focused()
        await expect(page.locator("#chart .tooltip")).to_contain_text(
            f"Электроника: {shown(expected_cost('1.5', '300', RATE.usd_rub))} ₽, 1 посылка"
        )
        await no_horizontal_scroll(page, viewport["width"])
        await screenshot(page, f"admin-{name}-{stack.name}.png", full_page=viewport is PHONE)


async def test_the_operator_is_named_and_the_journal_shows_what_was_done(
    stack: Stack, browser: Browser, live_server: LiveServer, maker: Maker
) -> None:
    """Signed in with a named operator's key, the page says whose it is; a binding appears at the top of the
    journal with that name; the journal pages, and filters by operator and by days."""
    key = await add_operator(maker, "alice")
    package_id = await add_package(maker, session_id=(await add_session(maker))[0])
    async with maker() as db, db.begin():
        db.add_all(
            AuditEntry(
                at=datetime(2025, 6, 10, 12, minute, tzinfo=UTC),
                operator="bob",
                action="pricing.start",
                object=f"task t-{minute}",
                outcome="ok",
                request_id=f"old-{minute}",
            )
            for minute in range(21)
        )
    async with new_page(browser, live_server, DESKTOP, "/admin/") as page:
        await log_in(page, key)
        await expect(page.locator("#whoami")).to_have_text("Оператор: alice")
        rows = page.locator("#audit-body tr")
        status = page.locator("#audit-status")
        await expect(status).to_have_text("Всего: 21 запись")
        await expect(rows).to_have_count(20)
        await expect(page.locator("#audit-page")).to_have_text("Страница 1 из 2")

        await page.get_by_label("Номер посылки").fill(str(package_id))
        await page.get_by_label("Номер компании").fill("7")
        await page.get_by_label("Номер компании").press("Enter")
        await expect(status).to_have_text("Всего: 22 записи")
        newest = rows.first
        await expect(newest).to_have_attribute("data-operator", "alice")
        await expect(newest).to_have_attribute("data-action", "company.bind")
        await expect(newest.locator("td")).to_have_text(
            [re.compile(r"\d"), "alice", "Закрепление транспортной компании",
             f"посылка № {package_id}, компания № 7", "выполнено", re.compile(r"\S")]
        )  # fmt: skip
        await screenshot(page, f"admin-journal-{stack.name}.png")

        await page.get_by_role("button", name="Вперёд →").click()
        await expect(page.locator("#audit-page")).to_have_text("Страница 2 из 2")
        await expect(rows).to_have_count(2)
        await expect(rows.last).to_contain_text("old-0")

        await page.get_by_label("Имя оператора").fill("alice")
        await page.get_by_role("button", name="Найти").click()
        await expect(status).to_have_text("Найдено: 1 запись")
        await expect(rows).to_have_count(1)
        await expect(page.locator("#audit-pager")).to_be_hidden()

        await page.get_by_role("button", name="Сбросить").click()
        await expect(status).to_have_text("Всего: 22 записи")
        await page.get_by_label("От (UTC)").fill("2025-06-10")
        await page.get_by_label("До (UTC)").fill("2025-06-10")
        await page.get_by_role("button", name="Найти").click()
        await expect(status).to_have_text("Найдено: 21 запись")
        await page.get_by_label("От (UTC)").fill("2025-06-11")
        await page.get_by_role("button", name="Найти").click()
        await expect(page.locator("#audit-error")).to_be_visible()
        await expect(status).to_have_text("Найдено: 21 запись")  # the refused filter was not sent

        await page.get_by_role("button", name="Выйти").click()
        await log_in(page, ADMIN_TOKEN)
        await expect(page.locator("#whoami")).to_have_text("Оператор: admin")
