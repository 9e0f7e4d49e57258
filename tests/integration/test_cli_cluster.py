"""The controller and 3 agents as separate processes, driven through the `shoal` CLI."""

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import (
    AgentProcess,
    Cli,
    ControllerProcess,
    create_join_token,
    processes,
    wait_until,
)

VMS = 50


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControllerProcess, Cli]]:
    base = tmp_path_factory.mktemp("cluster")
    controller = ControllerProcess(base / "controller")
    controller.start()
    with processes(controller):
        token = create_join_token(controller.client())
        agents = [
            AgentProcess(
                controller.url,
                token,
                f"host-{i}",
                base / f"agent-{i}",
                extra_args=[
                    "--sim-vms",
                    "20",
                    "--sim-cpu",
                    "32",
                    "--sim-memory",
                    "64Gi",
                    "--sim-boot-delay",
                    "0.2",
                ],
            )
            for i in range(3)
        ]
        for agent in agents:
            agent.start()
        with processes(*agents):
            env = {**os.environ, "SHOAL_CONFIG": str(base / "config.yaml")}
            cli = Cli(env)
            cli.run(
                "context",
                "add",
                "it",
                "--server",
                controller.url,
                "--token-file",
                str(controller.data_dir / "admin.token"),
                "--ca-fingerprint",
                controller.fingerprint,
            )
            wait_until(
                lambda: len(cli.json("node", "list")["items"]) == 3,
                what="3 nodes in `shoal node list`",
            )
            yield controller, cli


def phases(cli: Cli, namespace: str) -> Counter[str]:
    return Counter(vm["status"]["phase"] for vm in cli.json("vm", "list", "-n", namespace)["items"])


@pytest.mark.slow
def test_fifty_vms_through_the_cli(cluster: tuple[ControllerProcess, Cli]) -> None:
    _, cli = cluster
    cli.run("namespace", "create", "ci")
    names = [f"build-{i:02d}" for i in range(VMS)]
    first = cli.run(
        "vm",
        "deploy",
        names[0],
        "--image",
        "sim:1",
        "--cpu",
        "1",
        "--memory",
        "1Gi",
        "-n",
        "ci",
        "--wait",
    )
    assert "Running" in first.stdout + first.stderr
    cli.many(
        [
            ["vm", "deploy", name, "--image", "sim:1", "--cpu", "1", "--memory", "1Gi", "-n", "ci"]
            for name in names[1:]
        ]
    )
    wait_until(lambda: phases(cli, "ci")["Running"] == VMS, timeout=120, what="50 Running")
    nodes = Counter(vm["spec"]["nodeName"] for vm in cli.json("vm", "list", "-n", "ci")["items"])
    assert set(nodes) == {"host-0", "host-1", "host-2"}
    assert all(count <= 20 for count in nodes.values())

    halves = [names[: VMS // 2], names[VMS // 2 :]]
    cli.many([["vm", "stop", *half, "-n", "ci"] for half in halves])
    wait_until(lambda: phases(cli, "ci")["Stopped"] == VMS, timeout=120, what="50 Stopped")
    cli.many([["vm", "start", *half, "-n", "ci"] for half in halves])
    wait_until(lambda: phases(cli, "ci")["Running"] == VMS, timeout=120, what="50 Running again")

    partly = cli.run("vm", "suspend", "no-such-vm", names[0], "-n", "ci", "--wait", check=False)
    assert partly.returncode == 1 and "no-such-vm" in partly.stderr
    assert f"VM {names[0]} is Suspended" in partly.stdout
    assert cli.json("vm", "get", names[0], "-n", "ci")["status"]["phase"] == "Suspended"
    cli.run("vm", "resume", names[0], "-n", "ci", "--wait")

    for start in range(0, VMS, 10):
        cli.run("vm", "delete", *names[start : start + 10], "-n", "ci")
    wait_until(
        lambda: not cli.json("vm", "list", "-n", "ci")["items"], timeout=120, what="every VM gone"
    )
    events = cli.json("events", "-n", "ci")["items"]
    reasons = Counter(e["reason"] for e in events)
    assert reasons["Scheduled"] >= VMS and reasons["Running"] >= VMS and reasons["Stopped"] >= VMS


def test_deploy_wait_reports_a_failure_and_a_bad_request(
    cluster: tuple[ControllerProcess, Cli],
) -> None:
    _, cli = cluster
    failed = cli.run(
        "vm",
        "deploy",
        "broken",
        "--image",
        "fail:disk-not-bootable",  # an OCI-shaped name (tag disk-not-bootable), as admission wants
        "--wait",
        "--timeout",
        "60",
        check=False,
    )
    assert failed.returncode != 0
    assert "disk-not-bootable" in failed.stderr
    bad = cli.run("vm", "deploy", "zero", "--image", "x:1", "--cpu", "0", check=False)
    assert bad.returncode == 1
    assert "spec.cpu" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = cli.run("vm", "get", "nothing-here", check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr
    cli.run("vm", "delete", "broken")


def test_deploy_refuses_a_script_that_cannot_run_and_an_image_that_names_nothing(
    cluster: tuple[ControllerProcess, Cli], tmp_path: Path
) -> None:
    controller, cli = cluster
    script = tmp_path / "boot.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    scripted = cli.run(
        "vm", "deploy", "scripted", "--image", "sim:1", "--startup-script", str(script), check=False
    )
    assert scripted.returncode == 1 and "Traceback" not in scripted.stderr
    assert "error: spec.startupScript: needs spec.access.secretRef" in scripted.stderr
    nope = cli.run("vm", "deploy", "nowhere", "--image", "nope", check=False)
    assert nope.returncode == 1 and "Traceback" not in nope.stderr
    assert (
        "error: spec.image: no Image named 'nope', and 'nope' is not an OCI reference"
        in nope.stderr
    )
    for name in ("scripted", "nowhere"):
        assert cli.run("vm", "get", name, check=False).returncode == 1  # nothing was stored
    # a bare name that does name an Image is deployed, and runs
    image = {"metadata": {"name": "named"}, "spec": {"source": {"oci": "registry.test/named"}}}
    controller.client().create("images", image)
    cli.run("vm", "deploy", "by-name", "--image", "named", "--wait", "--timeout", "60")
    cli.run("vm", "delete", "by-name")


def test_unschedulable_vm_says_why_and_namespace_delete_is_graceful(
    cluster: tuple[ControllerProcess, Cli],
) -> None:
    _, cli = cluster
    cli.run("namespace", "create", "doomed")
    for i in range(3):  # 20 of each node's 32 cpu: no node keeps room for another 20
        cli.run(
            "vm",
            "deploy",
            f"filler-{i}",
            "--image",
            "sim:1",
            "--cpu",
            "20",
            "-n",
            "doomed",
            "--wait",
        )
    assert (
        len({vm["spec"]["nodeName"] for vm in cli.json("vm", "list", "-n", "doomed")["items"]}) == 3
    )
    cli.run("vm", "deploy", "waits", "--image", "sim:1", "--cpu", "20", "-n", "doomed")
    wait_until(
        lambda: (
            "insufficient cpu"
            in cli.json("vm", "get", "waits", "-n", "doomed")["status"]["message"]
        ),
        what="the reason a VM waits",
    )
    message = cli.json("vm", "get", "waits", "-n", "doomed")["status"]["message"]
    assert message == "0/3 nodes available: 3 insufficient cpu"
    shown = cli.run("vm", "get", "waits", "-n", "doomed").stdout
    assert "insufficient cpu" in shown
    cli.run("vm", "delete", "filler-0", "-n", "doomed")
    wait_until(
        lambda: cli.json("vm", "get", "waits", "-n", "doomed")["status"]["phase"] == "Running",
        what="the waiting VM to start once room is freed",
    )
    cli.run("namespace", "delete", "doomed")
    wait_until(
        lambda: (
            "doomed" not in {n["metadata"]["name"] for n in cli.json("namespace", "list")["items"]}
        ),
        timeout=60,
        what="the namespace and its VMs to go",
    )


def test_vm_larger_than_any_node_is_refused_at_creation(
    cluster: tuple[ControllerProcess, Cli],
) -> None:
    _, cli = cluster
    refused = cli.run("vm", "deploy", "too-big", "--image", "sim:1", "--cpu", "64", check=False)
    assert refused.returncode == 1
    assert "spec.cpu" in refused.stderr and "has 32 cpu, 64Gi memory" in refused.stderr
    missing = cli.run("vm", "get", "too-big", check=False)
    assert missing.returncode == 1


def test_context_add_refuses_a_wrong_fingerprint(cluster: tuple[ControllerProcess, Cli]) -> None:
    controller, cli = cluster
    wrong = "0" * 64
    result = cli.run(
        "context",
        "add",
        "evil",
        "--server",
        controller.url,
        "--token-file",
        str(controller.data_dir / "admin.token"),
        "--ca-fingerprint",
        wrong,
        check=False,
    )
    assert result.returncode != 0
    assert "fingerprint" in result.stderr
    assert "evil" not in cli.run("context", "list").stdout
