"""The live page in a real browser (Debian's Chromium driven by Playwright) against a real server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright
from serverproc import ServerProcess
from services import unavailable

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        unavailable("Chromium")
        raise AssertionError("unreachable")
    with sync_playwright() as p:
        # --no-sandbox: CI runs the tests as root, where Chromium's sandbox cannot start.
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


class Watched:
    """A page whose console errors and request hosts are recorded."""

    def __init__(self, browser: Browser, width: int = 1400) -> None:
        self.page: Page = browser.new_page(viewport={"width": width, "height": 1000})
        self.errors: list[str] = []
        self.hosts: set[str] = set()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("request", self._request)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":  # CSP violations are reported here too
            self.errors.append(message.text)

    def _request(self, request: Request) -> None:
        self.hosts.add(urlparse(request.url).hostname or request.url)

    def number(self, selector: str, attribute: str) -> int:
        return int(self.page.get_attribute(selector, attribute) or "0")

    def wait_for(self, selector: str, attribute: str, above: int, timeout_ms: int = 15_000) -> int:
        self.page.wait_for_function(
            "([s, a, n]) => Number(document.querySelector(s).getAttribute(a)) > n",
            arg=[selector, attribute, above],
            timeout=timeout_ms,
        )
        return self.number(selector, attribute)


def test_live_page_streams_and_stays_local(server: ServerProcess, browser: Browser, tmp_path: Path) -> None:
    w = Watched(browser)
    w.page.goto(server.url + "/")
    points = w.wait_for("#price-chart", "data-points", 10)
    seq = w.wait_for("#quotes-table tr[data-symbol=NOVA]", "data-seq", 0)
    assert w.wait_for("#price-chart", "data-points", points) > points  # the chart gains points
    assert w.wait_for("#quotes-table tr[data-symbol=NOVA]", "data-seq", seq) > seq  # the table changes
    assert w.page.get_attribute("#status", "data-state") == "live"
    assert w.number("body", "data-gaps") == 0
    w.page.screenshot(path=str(tmp_path / "page.png"))
    if target := os.environ.get("MARKETFEED_SCREENSHOT_DIR"):
        w.page.screenshot(path=str(Path(target) / "screenshot.png"))
    phone = Watched(browser, width=390)
    phone.page.goto(server.url + "/")
    phone.wait_for("#price-chart", "data-points", 0)
    assert phone.page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # no sideways scroll
    assert w.errors == []
    assert phone.errors == []
    assert w.hosts | phone.hosts == {"127.0.0.1"}  # no request leaves this machine


def test_switching_symbol_and_interval_loads_candles(server: ServerProcess, browser: Browser) -> None:
    w = Watched(browser)
    w.page.goto(server.url + "/")
    w.wait_for("#candle-chart", "data-candles", 0)
    with w.page.expect_response(lambda r: "/history/candles?symbol=OILX&interval=1s" in r.url) as first:
        w.page.select_option("#focus", "OILX")
    assert first.value.status == 200
    with w.page.expect_response(lambda r: "symbol=OILX&interval=1m" in r.url) as second:
        w.page.click("#intervals button[data-interval='1m']")
    assert second.value.status == 200
    assert w.page.get_attribute("#intervals button[data-interval='1m']", "aria-pressed") == "true"
    assert w.wait_for("#candle-chart", "data-candles", 0) >= 1
    assert w.errors == []


def test_page_reconnects_after_a_restart_without_a_gap(server: ServerProcess, browser: Browser) -> None:
    w = Watched(browser)
    w.page.goto(server.url + "/")
    before = w.wait_for("body", "data-last-gseq", 200)
    server.stop()
    w.page.wait_for_function("document.getElementById('status').dataset.state !== 'live'", timeout=10_000)
    server.start()
    w.wait_for("body", "data-last-gseq", before + 400, timeout_ms=30_000)
    assert w.page.get_attribute("#status", "data-state") == "live"
    assert w.number("body", "data-gaps") == 0  # every symbol's seq continued by exactly one
    # The connection refused while the server was down is the only error the browser may log.
    assert all("ERR_CONNECTION_REFUSED" in e or "Failed to load resource" in e for e in w.errors), w.errors


def test_analytics_panel_runs_a_strategy_and_the_filter(server: ServerProcess, browser: Browser) -> None:
    w = Watched(browser)
    w.page.goto(server.url + "/")
    w.wait_for("body", "data-last-gseq", 20 * 20 * 4)  # four seconds of market: enough 1 s candles
    with w.page.expect_response(lambda r: "/analytics/volatility" in r.url) as vol:
        w.page.click("#run-analytics")
    assert vol.value.status == 200
    w.page.wait_for_selector("#filter-stats:not([data-rmse-filter=''])")
    assert float(w.page.get_attribute("#filter-stats", "data-rmse-filter") or "nan") > 0
    assert "Sharpe" in (w.page.text_content("#strategy-stats") or "")
    assert w.errors == []


def test_models_page_renders_equations_and_live_parameters(server: ServerProcess, browser: Browser) -> None:
    w = Watched(browser)
    w.page.goto(server.url + "/models.html")
    w.page.wait_for_selector("mjx-container", timeout=15_000)
    w.page.wait_for_function("document.querySelectorAll('#params-table tbody tr').length === 20")
    assert w.page.locator("mjx-container").count() > 10
    assert "scheme qe" in (w.page.text_content("#model-summary") or "")
    assert w.errors == []
    assert w.hosts == {"127.0.0.1"}
