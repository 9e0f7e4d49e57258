"""End to end: the CLI (through CliRunner) against a real controller on a free port.

There is no agent here, so VMs stay Pending: enough for list, get, delete, actions, configs,
namespaces, service accounts, tokens, role bindings, nodes (created through the API) and events.
"""

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from shoal.cli.main import app
from shoal.client import Client
from shoal.server import ControllerSettings, ControlPlane

runner = CliRunner()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    port = free_port()
    settings = ControllerSettings(
        data_dir=tmp_path_factory.mktemp("controller"),
        port=port,
        tls=False,
        housekeeping_interval=0.2,
    )
    plane = ControlPlane(settings)
    ready = threading.Event()
    loops: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        loops.append(asyncio.get_running_loop())

        async def on_ready() -> None:
            ready.set()

        await plane.serve(on_ready)

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(30), "controller did not start"
    yield f"http://127.0.0.1:{port}", plane.admin_token
    asyncio.run_coroutine_threadsafe(plane.stop(), loops[0]).result(10)
    thread.join(10)


def shoal(*args: str) -> Result:
    return runner.invoke(app, list(args))


def ok(*args: str) -> str:
    result = shoal(*args)
    assert result.exit_code == 0, f"shoal {' '.join(args)}: {result.output}"
    return result.stdout


def fails(*args: str) -> str:
    result = shoal(*args)
    assert result.exit_code == 1, f"shoal {' '.join(args)} should fail: {result.output}"
    assert "Traceback" not in result.output
    assert result.stderr.splitlines()[-1].startswith("error: ")  # after any progress lines
    return result.stderr


def rows(table: str) -> list[list[str]]:
    return [line.split() for line in table.splitlines()]


def as_json(*args: str) -> Any:
    return json.loads(ok(*args, "-o", "json"))


def test_every_noun(
    controller: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, admin_token = controller
    monkeypatch.setenv("SHOAL_CONFIG", str(tmp_path / "config.yaml"))
    monkeypatch.delenv("SHOAL_CONTEXT", raising=False)

    # -- context ---------------------------------------------------------------------------
    ok("context", "add", "admin", "--server", url, "--token", admin_token)
    assert rows(ok("context", "list"))[1][:2] == ["*", "admin"]

    # -- namespace -------------------------------------------------------------------------
    assert ok("namespace", "create", "team-a") == "namespace team-a created\n"
    names = [ns["metadata"]["name"] for ns in as_json("namespace", "list")["items"]]
    assert {"default", "team-a"} <= set(names)
    assert as_json("namespace", "get", "team-a")["status"]["phase"] == "Active"
    assert "Status:" in ok("namespace", "get", "team-a")

    # -- vm deploy, list, get, errors ------------------------------------------------------
    assert ok(
        "vm", "deploy", "vm1", "-n", "team-a", "--image", "ubuntu:24.04", "--cpu", "2",
        "--memory", "2Gi", "--label", "team=ci", "--port", "22",
    ) == "vm1\n"  # fmt: skip
    error = fails("vm", "deploy", "bad", "-n", "team-a", "--image", "x:1", "--cpu", "0")
    assert "spec.cpu" in error
    assert "spec.memory" in fails(
        "vm", "deploy", "bad", "-n", "team-a", "--image", "x:1", "--memory", "lots"
    )
    assert "already exists" in fails("vm", "deploy", "vm1", "-n", "team-a", "--image", "x:1")
    generated = ok(
        "vm", "deploy", "--generate-name", "ci-", "-n", "team-a", "--image", "x:1"
    ).strip()
    assert generated.startswith("ci-")

    table = rows(ok("vm", "list", "-n", "team-a"))
    assert table[0] == ["NAME", "PHASE", "NODE", "IMAGE", "CPU", "MEMORY", "AGE"]
    vm1 = next(r for r in table if r[0] == "vm1")
    assert vm1[:6] == ["vm1", "Pending", "<none>", "ubuntu:24.04", "2", "2Gi"]
    wide = rows(ok("vm", "list", "-n", "team-a", "-o", "wide"))
    assert wide[0][:2] == ["NAMESPACE", "NAME"] and "MESSAGE" in wide[0]
    listing = as_json("vm", "list", "-n", "team-a", "-l", "team=ci")
    assert listing["kind"] == "VirtualMachineList"
    assert [vm["metadata"]["name"] for vm in listing["items"]] == ["vm1"]
    everywhere = rows(ok("vm", "list", "-A", "--field-selector", "metadata.name=vm1"))
    assert everywhere[0][0] == "NAMESPACE" and everywhere[1][:2] == ["team-a", "vm1"]
    assert yaml.safe_load(ok("vm", "get", "vm1", "-n", "team-a", "-o", "yaml"))["spec"]["cpu"] == 2
    view = ok("vm", "get", "vm1", "-n", "team-a")
    assert "Phase:" in view and "Message:" in view and "Conditions:" in view
    assert "not found" in fails("vm", "get", "nope", "-n", "team-a")

    error = fails(
        "vm", "deploy", "slow", "-n", "team-a", "--image", "x:1", "--wait", "--timeout", "1"
    )
    assert "timed out after 1s waiting for VM slow to be Running: Pending" in error

    # -- power actions ---------------------------------------------------------------------
    ok("vm", "stop", "vm1", "-n", "team-a")
    assert as_json("vm", "get", "vm1", "-n", "team-a")["spec"]["powerState"] == "Stopped"
    ok("vm", "start", "vm1", "-n", "team-a")
    ok("vm", "suspend", "vm1", "-n", "team-a")
    assert as_json("vm", "get", "vm1", "-n", "team-a")["spec"]["powerState"] == "Suspended"
    ok("vm", "resume", "vm1", "-n", "team-a")
    assert as_json("vm", "get", "vm1", "-n", "team-a")["spec"]["powerState"] == "Running"

    # -- vmconfig --------------------------------------------------------------------------
    image = {"metadata": {"name": "ubuntu"}, "spec": {"source": {"oci": "registry.test/ubuntu"}}}
    Client(url, admin_token).create("images", image)  # a bare image name must name an Image
    ok("vmconfig", "create", "small", "-n", "team-a", "--image", "ubuntu", "--cpu", "1")
    assert rows(ok("vmconfig", "list", "-n", "team-a"))[1][:3] == ["small", "ubuntu", "1"]
    made = as_json(
        "vm", "deploy", "fromcfg", "-n", "team-a", "--config", "small", "--memory", "3Gi"
    )
    assert (made["spec"]["image"], made["spec"]["cpu"], made["spec"]["memory"]) == (
        "ubuntu",
        1,
        "3Gi",
    )
    assert "image:" in ok("vmconfig", "get", "small", "-n", "team-a")
    ok("vmconfig", "delete", "small", "-n", "team-a")
    assert "VMConfig 'nope' not found" in fails(
        "vm", "deploy", "x", "-n", "team-a", "--config", "nope"
    )

    # -- serviceaccount, token, rolebinding ------------------------------------------------
    ok("serviceaccount", "create", "ci", "-n", "team-a", "--description", "CI")
    token = ok("token", "create", "ci", "-n", "team-a", "--ttl", "1h").strip()
    assert token and "\n" not in token
    account = as_json("serviceaccount", "get", "ci", "-n", "team-a")
    token_id = account["status"]["tokens"][0]["id"]
    assert token_id in ok("serviceaccount", "get", "ci", "-n", "team-a")
    assert rows(ok("serviceaccount", "list", "-n", "team-a"))[1][:2] == ["ci", "1"]
    assert "expirationSeconds" in fails("token", "create", "ci", "-n", "team-a", "--ttl", "10s")

    ok("context", "add", "ci", "--server", url, "--token", token, "-n", "team-a", "--no-use")
    assert "cannot list virtualmachines" in fails("vm", "list", "--context", "ci")
    ok(
        "rolebinding", "create", "ci-edit", "-n", "team-a", "--role", "edit",
        "--serviceaccount", "ci", "--user", "alice",
    )  # fmt: skip
    binding = rows(ok("rolebinding", "list", "-n", "team-a"))[1]
    assert binding[:3] == ["ci-edit", "edit", "serviceaccount:team-a:ci,user:alice"]
    assert "alice" in ok("rolebinding", "get", "ci-edit", "-n", "team-a")
    assert "vm1" in ok("vm", "list", "--context", "ci")
    assert "cannot create namespaces" in fails("namespace", "create", "x", "--context", "ci")

    ok("token", "revoke", "ci", token_id, "-n", "team-a")
    assert "invalid, expired or revoked" in fails("vm", "list", "--context", "ci")
    assert "has no token" in fails("token", "revoke", "ci", "abc123", "-n", "team-a")
    ok("rolebinding", "delete", "ci-edit", "-n", "team-a")

    # -- node ------------------------------------------------------------------------------
    client = Client(url, admin_token)
    client.create("nodes", {"metadata": {"name": "host-1"}})
    client.patch(
        "nodes",
        "host-1",
        {
            "status": {
                "backend": "sim",
                "arch": "amd64",
                "allocatable": {"cpu": 8, "memory": "16Gi"},
            }
        },
        sub="status",
    )
    client.close()
    assert rows(ok("node", "list"))[1] == [
        "host-1", "NotReady", "sim", "amd64", "0/8", "0/16Gi", "0", rows(ok("node", "list"))[1][7],
    ]  # fmt: skip
    ok("node", "cordon", "host-1")
    assert rows(ok("node", "list"))[1][1] == "NotReady,SchedulingDisabled"
    ok("node", "label", "host-1", "xcode=16", "gpu=yes")
    ok("node", "label", "host-1", "gpu-")
    assert as_json("node", "get", "host-1")["metadata"]["labels"] == {"xcode": "16"}
    assert "Allocatable:" in ok("node", "get", "host-1")
    assert ok("node", "drain", "host-1", "--timeout", "5").endswith("node host-1 drained\n")
    ok("node", "uncordon", "host-1")
    assert as_json("node", "get", "host-1")["spec"]["unschedulable"] is False

    join = ok("node", "join-token", "create", "--ttl", "30m").strip()
    assert join.startswith("SJ1.") and join.endswith(".insecure")
    tokens = as_json("node", "join-token", "list")["items"]
    assert len(tokens) == 1
    ok("node", "join-token", "revoke", tokens[0]["id"])
    assert as_json("node", "join-token", "list")["items"] == []

    # -- events ----------------------------------------------------------------------------
    events = rows(ok("events", "-n", "team-a"))
    assert events[0][:4] == ["LAST", "SEEN", "TYPE", "REASON"]
    assert any(r[2:4] == ["Created", "virtualmachine/vm1"] for r in events[1:])
    about = as_json("events", "-n", "team-a", "--for", "vm/vm1")["items"]
    assert about and {e["involvedObject"]["name"] for e in about} == {"vm1"}
    assert "node/host-1" in ok("events", "--for", "node/host-1")
    assert "unknown kind" in fails("events", "--for", "pod/x")
    watched = ok("events", "-n", "team-a", "--for", "vm/vm1", "-w", "--timeout", "1")
    assert watched.splitlines()[0].split()[:3] == ["LAST", "SEEN", "TYPE"]

    # -- deletion ---------------------------------------------------------------------------
    assert ok("vm", "delete", "vm1", "-n", "team-a", "--wait") == "VM vm1 deleted\n"
    result = shoal("vm", "delete", "fromcfg", "gone", "-n", "team-a")
    assert result.exit_code == 1
    assert "VM fromcfg deleted" in result.stdout
    assert "error: VirtualMachine team-a/gone not found" in result.stderr
    ok("serviceaccount", "delete", "ci", "-n", "team-a")
    out = ok("namespace", "delete", "team-a", "--wait", "--timeout", "30")
    assert out == "namespace team-a is being deleted\nnamespace team-a is gone\n"
    assert "not found" in fails("namespace", "get", "team-a")
