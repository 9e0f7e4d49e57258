"""The web UI end to end, as a person uses it: Debian's Chromium (headless, through Playwright)
against a real `shoal dev` whose VMs are QEMU guests. Sign in, deploy from the form, watch the VM
reach Running without reloading, type into its serial console (two viewers at once), see its
screen over VNC, cordon its node, delete it; a `view` token cannot deploy. Every page is
screenshotted into the test artifacts."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from helpers import Cli, free_port, wait_until
from images.image_helpers import Registry, push_small_image
from images.registry_fixtures import isolated_credentials, registry
from qemu_dev import TEST_IMAGE, QemuDev, import_test_image
from shoal.testguest import build_test_guest
from ui_helpers import shoot, sign_in, watch_errors

__all__ = ["isolated_credentials", "registry"]

SECONDS = 1000  # Playwright counts milliseconds
BOOT = 120 * SECONDS


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QemuDev]:
    base = tmp_path_factory.mktemp("ui-qemu")
    env = {**os.environ, "SHOAL_CONFIG": str(base / "config.yaml")}
    qemu = QemuDev(base, Cli(env), free_port())
    qemu.start()
    try:
        import_test_image(qemu, build_test_guest())
        yield qemu
    finally:
        qemu.tear_down()


def base_url(dev: QemuDev) -> str:
    return f"http://127.0.0.1:{dev.port}"


def admin_token(dev: QemuDev) -> str:
    return (dev.data_dir / "admin.token").read_text().strip()


def terminal_text(page: Page) -> str:
    return str(
        page.evaluate(
            """() => {
              const buffer = window.shoalConsole.terminal.buffer.active;
              const lines = [];
              for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
              return lines.join("\\n");
            }"""
        )
    )


def canvas_has_picture(page: Page) -> bool:
    """Whether noVNC's canvas shows something: pixels of more than one colour."""
    return bool(
        page.evaluate(
            """() => {
              const canvas = document.querySelector("#console-screen canvas");
              if (!canvas || !canvas.width || !canvas.height) return false;
              const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
              for (let i = 4; i < data.length; i += 4) {
                if (data[i] !== data[0] || data[i + 1] !== data[1] || data[i + 2] !== data[2]) return true;
              }
              return false;
            }"""
        )
    )


def test_a_person_runs_a_vm_from_the_browser(
    dev: QemuDev, browser: Browser, artifacts: Path, registry: Registry, tmp_path: Path
) -> None:
    base = base_url(dev)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = watch_errors(page)
    page.on("dialog", lambda dialog: dialog.accept())

    # Sign in: a wrong token gets the API's answer at the form; the admin token gets in.
    page.goto(base + "/")
    shoot(page, artifacts, "signin")
    page.fill("#token", "not-a-token")
    page.click("form.signin button[type=submit]")
    expect(page.locator("#signin-error")).to_contain_text("invalid")
    page.fill("#token", admin_token(dev))
    page.click("form.signin button[type=submit]")
    expect(page.locator("h1")).to_have_text("Overview")
    assert "token" not in page.url
    expect(page.locator("#capacity [data-node]")).to_have_count(1)
    shoot(page, artifacts, "overview")

    # Deploy from the form; the VM page follows it to Running without a reload.
    page.click("nav >> text=VMs")
    page.click("#deploy-link")
    page.evaluate("window.__sameDocument = true")
    page.fill("#deploy-metadata-name", "web1")
    page.fill("#deploy-spec-image", TEST_IMAGE)
    page.fill("#deploy-spec-cpu", "1")
    page.fill("#deploy-spec-memory", "256Mi")
    page.fill("#deploy-spec-disk", "1Gi")
    page.fill("#deploy-spec-ports", "22")
    shoot(page, artifacts, "deploy")
    page.click("form[aria-label='Deploy a VM'] button[type=submit]")
    page.wait_for_url("**/#/vms/default/web1")
    expect(page.locator("h1 .phase")).to_have_text("Running", timeout=BOOT)
    assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
    expect(page.locator("#serial-log")).to_contain_text("ssh ready", timeout=30 * SECONDS)

    # The serial console: what is typed runs in the guest; a second viewer sees the same.
    page.click("#tab-serial")
    expect(page.locator("#console-status")).to_have_text("connected", timeout=30 * SECONDS)
    second = browser.new_context().new_page()  # another person, signed in on their own
    sign_in(second, base, admin_token(dev))
    second.goto(base + "/#/vms/default/web1")
    second.click("#tab-serial")
    expect(second.locator("#console-status")).to_have_text("connected", timeout=30 * SECONDS)
    page.locator("#console-serial").click()
    page.keyboard.press("Enter")  # the console shell starts on Enter
    page.keyboard.type("echo ui-$((6 * 7))\n")
    wait_until(lambda: "ui-42" in terminal_text(page), timeout=60, what="the guest's answer")
    wait_until(lambda: "ui-42" in terminal_text(second), timeout=30, what="the second viewer")
    shoot(page, artifacts, "vm-serial-console")
    second.context.close()

    # Push the VM's disk to a registry from its page, with progress to the end.
    pushed = f"{registry.host}/web1:1"
    page.fill("#push-reference", pushed)
    page.check("#push-insecure")
    page.click("form:has(#push-reference) button[type=submit]")
    expect(page.locator("#push-status")).to_contain_text(f"pushed {pushed}", timeout=BOOT)
    assert page.locator("#push-progress").evaluate("p => p.value") == 1
    page.fill("#push-reference", "not a reference")
    page.click("form:has(#push-reference) button[type=submit]")
    expect(page.locator("[data-error-for=reference]")).not_to_be_empty()

    # The screen: noVNC draws the guest's framebuffer.
    page.click("#tab-screen")
    wait_until(lambda: canvas_has_picture(page), timeout=60, what="the VNC framebuffer")
    shoot(page, artifacts, "vm-screen")
    page.click("#tab-none")

    # The list shows it live; the overview counts it.
    page.click("nav >> text=VMs")
    row = page.locator("tbody tr", has_text="web1")
    expect(row.locator(".phase")).to_have_text("Running")
    shoot(page, artifacts, "vms")
    page.click("nav >> text=Overview")
    expect(page.locator("[data-phase=Running]")).to_have_text("1")

    # On a phone's screen the pages fit its width (wide tables scroll inside themselves), and
    # the keyboard reaches the navigation.
    page.set_viewport_size({"width": 390, "height": 844})
    for route, name in (("#/", "overview-phone"), ("#/vms", "vms-phone")):
        page.goto(f"{base}/{route}")
        page.wait_for_selector("main h1")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), route
        shoot(page, artifacts, name)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.reload()
    page.wait_for_selector("main h1")
    focused = []
    for _ in range(3):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.textContent"))
    assert focused == ["Skip to content", "shoal", "Overview"], focused

    # Cordon the node, see it, uncordon it.
    page.click("nav >> text=Nodes")
    node_row = page.locator("tbody tr[data-key]").first
    node_name = node_row.locator("td").first.inner_text()
    node_row.locator("[data-action=cordon]").click()
    expect(node_row.locator(".phase")).to_have_text("Cordoned")
    assert dev.cli.json("node", "get", node_name)["spec"]["unschedulable"] is True
    shoot(page, artifacts, "nodes-cordoned")
    page.locator("tbody tr[data-key]").first.locator("[data-action=uncordon]").click()
    expect(page.locator("tbody tr[data-key]").first.locator(".phase")).to_have_text("Ready")
    page.locator("tbody tr[data-key]").first.locator("[data-action=label]").click()
    page.fill("#node-labels", "pool=ci, disk=ssd")
    page.click("dialog button[type=submit]")
    expect(page.locator("tbody tr[data-key]").first).to_contain_text("pool=ci, disk=ssd")
    labels = dev.cli.json("node", "get", node_name)["metadata"]["labels"]
    assert labels["pool"] == "ci" and labels["disk"] == "ssd"
    page.locator("tbody tr[data-key]").first.locator("[data-action=label]").click()
    page.fill("#node-labels", "disk=ssd, bad key=x")
    page.click("dialog button[type=submit]")
    expect(page.locator("dialog .error")).not_to_be_empty()  # the API's words about the key
    page.fill("#node-labels", "disk=ssd")
    page.click("dialog button[type=submit]")
    expect(page.locator("tbody tr[data-key]").first.locator("td").nth(2)).to_have_text("disk=ssd")

    # Images: pull one from a real registry onto the node, following the node's progress.
    page.click("nav >> text=Images")
    expect(page.locator("tbody tr", has_text=TEST_IMAGE)).to_have_count(1)
    reference, _ = push_small_image(registry, tmp_path)
    page.fill("#pull-reference", reference)
    page.fill("#pull-name", "small")
    page.click("form:has(#pull-reference) button[type=submit]")
    card = page.locator("[data-cache=small]")
    expect(card).to_contain_text("1/1 nodes ready", timeout=120 * SECONDS)
    expect(card).to_contain_text("Ready")
    assert reference in dev.cli.json("node", "get", node_name)["status"]["cachedImages"]
    page.fill("#pull-reference", "Not A Reference")
    page.click("form:has(#pull-reference) button[type=submit]")
    expect(page.locator("[data-error-for='spec.image']")).not_to_be_empty()
    shoot(page, artifacts, "images")

    # Admin: a service account, a view binding, a token shown once.
    page.click("nav >> text=Admin")
    page.fill("#new-serviceaccount", "viewer")
    page.locator("#new-serviceaccount").press("Enter")
    viewer_row = page.locator("tbody tr", has_text="viewer")
    expect(viewer_row).to_have_count(1)
    page.fill("#binding-name", "viewer-view")
    page.select_option("#binding-role", "view")
    page.fill("#binding-subject", "viewer")
    page.locator("#binding-subject").press("Enter")
    expect(page.locator("tbody tr", has_text="viewer-view")).to_have_count(1)
    viewer_row.locator("[data-action=token]").click()
    viewer_token = page.locator("#new-token-value").inner_text().strip()
    assert len(viewer_token) > 20
    shoot(page, artifacts, "admin")

    # Delete the VM from the list; it goes from the page and from the API.
    page.click("nav >> text=VMs")
    page.locator("tbody tr", has_text="web1").locator("[data-action=delete]").click()
    expect(page.locator("tbody tr", has_text="web1")).to_have_count(0, timeout=BOOT)
    assert dev.cli.json("vm", "list", "-o", "json")["items"] == []
    assert not errors, errors
    context.close()

    # A view token sees the VMs page without the way to deploy, and the API refuses it anyway.
    viewer = browser.new_context()
    page = viewer.new_page()
    errors = watch_errors(page)
    sign_in(page, base, viewer_token)
    page.click("nav >> text=VMs")
    expect(page.locator("#vm-count")).to_contain_text("VMs")
    expect(page.locator("#deploy-link")).to_be_hidden()
    page.goto(base + "/#/deploy")
    page.fill("#deploy-metadata-name", "sneaky")
    page.fill("#deploy-spec-image", TEST_IMAGE)
    page.click("form[aria-label='Deploy a VM'] button[type=submit]")
    expect(page.locator(".form-error")).to_contain_text(
        "cannot create virtualmachines in namespace default"
    )
    shoot(page, artifacts, "view-token-cannot-deploy")
    page.click("nav >> text=Nodes")
    expect(page.locator("tbody tr[data-key]")).to_have_count(1)
    expect(page.locator("[data-action=cordon]")).to_have_count(0)
    assert dev.cli.json("vm", "list", "-o", "json")["items"] == []

    # Signing out forgets the token: the sign-in form again, and nothing left in the session.
    page.click("#signout")
    expect(page.locator("#token")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    assert not errors, errors
    viewer.close()
