"""The overview stays live across a controller restart: the page shows a banner while the
controller is away, its watch resumes from the last version it saw when it is back (a relist only
on 410), and changes made after the restart appear without reloading. A real controller process
over TLS (the browser speaks wss) and a real agent on the sim backend."""

from pathlib import Path

from playwright.sync_api import Browser, expect

from helpers import AgentProcess, ControllerProcess, create_join_token, processes
from shoal.client import resource_path
from ui_helpers import shoot, sign_in, watch_errors

SECONDS = 1000


def vm_body(name: str) -> dict[str, object]:
    return {
        "metadata": {"name": name},
        "spec": {"image": "x:1", "cpu": 1, "memory": "64Mi", "disk": "1Gi"},
    }


def test_the_overview_stays_live_across_a_controller_restart(
    tmp_path: Path, browser: Browser, artifacts: Path
) -> None:
    controller = ControllerProcess(tmp_path / "controller")
    controller.start()
    agent = AgentProcess(
        controller.url,
        create_join_token(controller.client()),
        "n1",
        tmp_path / "agent",
        extra_args=["--heartbeat-interval", "1", "--sim-boot-delay", "0.1"],
    )
    with processes(controller, agent):
        agent.start()
        admin = controller.client()
        context = browser.new_context(ignore_https_errors=True)
        page = context.new_page()
        errors = watch_errors(page)
        sign_in(page, controller.url, controller.admin_token)
        expect(page.locator("#capacity [data-node=n1] .phase")).to_have_text(
            "Ready", timeout=60 * SECONDS
        )
        admin.request("POST", resource_path("virtualmachines", "default"), body=vm_body("before"))
        expect(page.locator("[data-phase=All]")).to_have_text("1")
        page.evaluate("window.__sameDocument = true")
        lists_after_restart: list[str] = []

        controller.kill()
        expect(page.locator("#banner")).to_be_visible(timeout=30 * SECONDS)
        expect(page.locator("#banner")).to_contain_text("reconnecting")
        shoot(page, artifacts, "overview-controller-down")

        page.on(
            "request",
            lambda request: (
                lists_after_restart.append(request.url)
                if "/virtualmachines" in request.url
                else None
            ),
        )
        controller.start()
        expect(page.locator("#banner")).to_be_hidden(timeout=30 * SECONDS)
        admin.request("POST", resource_path("virtualmachines", "default"), body=vm_body("after"))
        expect(page.locator("[data-phase=All]")).to_have_text("2", timeout=10 * SECONDS)
        expect(page.locator("[data-phase=Running]")).to_have_text("2", timeout=30 * SECONDS)
        admin.request("DELETE", resource_path("virtualmachines", "default", "before"))
        expect(page.locator("[data-phase=All]")).to_have_text("1", timeout=30 * SECONDS)
        shoot(page, artifacts, "overview-after-restart")

        assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
        # The watch resumed from its version: nothing was listed again.
        assert lists_after_restart == [], lists_after_restart
        assert not errors, errors
        context.close()
