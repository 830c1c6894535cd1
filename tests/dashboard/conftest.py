"""A page of a real headless Chromium for the dashboard's browser tests."""

import os

import pytest

CHROMIUM = "/usr/bin/chromium"   # Debian's (scripts/system-deps.sh); Playwright's own download does not work here
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture()
def chromium_page():
    """`chromium_page(**new_page_kwargs) -> (page, problems)`: a new page of one headless Chromium for the
    test, with every console error or warning, page error, failed request and HTTP status >= 400 written to
    `problems` (one list for the test); the browser closes after the test. Skips when Chromium is missing."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (scripts/system-deps.sh installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

        def new_page(**kwargs):
            page = browser.new_page(**kwargs)
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
            return page, problems

        yield new_page
        browser.close()
