"""What browser tests share: screenshots as artifacts, signing in, and catching script errors."""

from pathlib import Path

from playwright.sync_api import Page


def shoot(page: Page, artifacts: Path, name: str) -> None:
    """A full-page screenshot, kept as a test artifact."""
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


def sign_in(page: Page, base: str, token: str) -> None:
    page.goto(base + "/")
    page.fill("#token", token)
    page.click("form.signin button[type=submit]")
    page.wait_for_selector("header.top:not([hidden])")


def watch_errors(page: Page) -> list[str]:
    """Script errors and CSP violations the page reports: a test ends by checking there are none."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            errors.append(f"console: {message.text}")
            if message.type == "error" and "Content Security Policy" in message.text
            else None
        ),
    )
    return errors
