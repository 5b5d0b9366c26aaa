"""The /playground page: served self-contained, and driven end to end in headless Chromium
(Debian's `chromium` + Playwright, never Playwright's own browser download)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ops_helpers import USER_KEY, keyed_api
from tests.stack import ROOT, Stack

CHROMIUM = os.environ.get("GENQ_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = ROOT / "docs" / "playground.png"


def test_page_is_self_contained(sim_stack: Stack) -> None:
    r = httpx.get(sim_stack.url + "/playground")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    # No CDN, no external asset: every script and style is inline.
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", html)
    assert "<script src" not in html and not re.search(r"<link(?![^>]*data:)", html)
    # It streams with fetch() (EventSource cannot send the API key) and keeps the key locally.
    assert "application/x-ndjson" in html and "localStorage" in html
    assert "Authorization" in html and "EventSource(" not in html


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.skip(f"playwright for Python is not installed: {exc}")
    profile = tempfile.mkdtemp(prefix="genq-chromium-")  # a fresh --user-data-dir
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1200, "height": 760},
            bypass_csp=True,  # wait_for_function evaluates strings; the page itself needs no eval
        )
        try:
            yield ctx
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


def assistant_text(page: Any) -> str:
    return str(page.locator(".msg.assistant .text").last.inner_text())


def test_streams_in_browser_with_api_key(sim_stack: Stack, browser: Any) -> None:
    with keyed_api(sim_stack) as url:
        page = browser.new_page()
        page.goto(url + "/playground")
        page.wait_for_function("document.querySelector('#model option').value !== ''")
        assert page.input_value("#model") == "SmolLM2-135M-Instruct"
        # Without a key the API refuses the job, and the page shows why.
        page.fill("#prompt", "no key")
        page.press("#prompt", "Enter")
        page.wait_for_selector(".msg.error")
        assert "API key" in page.inner_text(".msg.error")
        assert page.inner_text("#status") == "error"
        page.fill("#apikey", USER_KEY)
        page.dispatch_event("#apikey", "change")
        page.fill("#max-tokens", "120")
        page.fill("#prompt", "stream please")
        page.press("#prompt", "Enter")
        # Token by token: the reply is seen part-way, then whole.
        page.wait_for_function(
            "(() => { const t = [...document.querySelectorAll('.msg.assistant .text')].pop();"
            " return t && t.textContent.includes('tok3') && !t.textContent.includes('tok119'); })()"
        )
        page.wait_for_function("document.getElementById('status').textContent === 'succeeded'")
        text = assistant_text(page)
        assert text.startswith("tok0 tok1 tok2") and text.endswith("tok119")
        assert page.inner_text("#job-id").startswith("job_")
        assert page.inner_text("#ttft").endswith(" s")
        assert float(page.inner_text("#tps")) > 0
        assert page.inner_text("#tokens") == "120"
        # The key survives a reload (localStorage), and a second turn works.
        page.reload()
        assert page.input_value("#apikey") == USER_KEY
        page.close()


@pytest.mark.engine
def test_paris_streams_from_the_real_engine(engine_stack: Stack, browser: Any) -> None:
    page = browser.new_page()
    page.goto(engine_stack.url + "/playground")
    page.wait_for_function("document.querySelector('#model option').value !== ''")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "40")
    page.fill("#prompt", "What is the capital of France?")
    page.click("#send")
    page.wait_for_function(
        "[...document.querySelectorAll('.msg.assistant .text')].pop().textContent"
        ".includes('Paris')",
        timeout=120_000,
    )
    page.wait_for_function(
        "document.getElementById('status').textContent === 'succeeded'", timeout=120_000
    )
    assert "Paris" in assistant_text(page)
    assert page.inner_text("#job-id").startswith("job_")
    assert float(page.inner_text("#tps")) > 0
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    page.close()
