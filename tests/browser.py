"""Pages in headless Chromium, on the app served over real HTTP: what the browser tests share."""

import asyncio
import re
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from playwright.async_api import Browser, Page, Route, async_playwright

from delivery.api import create_app
from delivery.config import Settings
from tests.stack import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 812}
GROUP = "\u202f"
#: Each refusal of the page's Content-Security-Policy, told to the test (Chromium also logs most of them).
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.reportViolation(`${event.effectiveDirective} refused ${event.blockedURI} at ${event.sourceFile}`);
}, true);
"""


def shown(amount: str) -> str:
    """An API decimal as the page shows it: thousands grouped, a decimal comma."""
    whole, _, fraction = amount.partition(".")
    grouped = f"{int(whole):,}".replace(",", GROUP)
    return f"{grouped},{fraction}" if fraction else grouped


class LiveServer:
    """The app served by uvicorn on a loopback port, on an event loop of its own in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        # A fresh app per test: nothing it caches (such as the known type ids) leaks between tests.
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning", ws="none", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name="live-server", daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.socket]))

    def start(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the live server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.socket.close()


@asynccontextmanager
async def new_page(
    browser: Browser, server: LiveServer, viewport: dict[str, int], path: str
) -> AsyncIterator[Page]:
    """A fresh visitor (a new browser context) at `path`; fails on any script error, on anything the page's
    Content-Security-Policy refuses, and on any request to an origin other than the app's (each aborted)."""
    context = await browser.new_context(
        base_url=server.url,
        viewport={"width": viewport["width"], "height": viewport["height"]},
        locale="ru-RU",
        timezone_id="Europe/Moscow",
    )
    errors: list[str] = []
    elsewhere: list[str] = []

    async def refuse(route: Route) -> None:
        elsewhere.append(route.request.url)
        await route.abort()

    await context.route(re.compile(rf"^(?!{re.escape(server.url)}/)"), refuse)
    await context.expose_function("reportViolation", lambda text: errors.append(f"CSP: {text}"))
    await context.add_init_script(REPORT_VIOLATIONS)
    page = await context.new_page()
    page.set_default_timeout(10_000)
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    # Failed requests (a 401 before the session, a 422, a 503) are logged by the browser itself; ignore them.
    page.on(
        "console",
        lambda message: (
            errors.append(message.text)
            if message.type == "error" and not message.text.startswith("Failed to load resource")
            else None
        ),
    )
    try:
        await page.goto(path)
        yield page
    finally:
        await context.close()
    assert not errors, errors
    assert not elsewhere, elsewhere


async def screenshot(page: Page, name: str, *, full_page: bool = True) -> None:
    """Saved under test-artifacts/ (git-ignored); a modal dialog is shot as the screen shows it."""
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / name, full_page=full_page)


async def no_horizontal_scroll(page: Page, width: int) -> None:
    scroll_width = await page.evaluate("document.documentElement.scrollWidth")
    assert scroll_width <= width, f"the page scrolls sideways: {scroll_width}px > {width}px"


@asynccontextmanager
async def launch_chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()
