"""Fixtures for browser tests: Debian's Chromium driven by Playwright (never a downloaded
browser), and a place for the screenshots every test leaves (build/test-artifacts/ui, or
$SHOAL_TEST_ARTIFACTS/ui)."""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("SHOAL_TEST_ARTIFACTS", REPO / "build" / "test-artifacts")) / "ui"


# Per module, not per session: while Playwright's sync API is open, the thread counts as running
# an event loop, and the tests after these ones call asyncio.run().
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: `make test` installs Debian's chromium"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
