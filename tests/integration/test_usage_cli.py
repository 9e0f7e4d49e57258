"""`shoal usage` and GET .../usage against a real controller with a sim agent: what a VM held is
reported per namespace, image and node, as a table, JSON and CSV; who may ask about what; bad
input as a clear error."""

import csv
import io
import os
from collections.abc import Iterator

import pytest

from helpers import (
    AgentProcess,
    Cli,
    ControllerProcess,
    create_join_token,
    processes,
    wait_until,
)
from shoal.client import API
from shoal.errors import ApiError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cli, ControllerProcess]]:
    base = tmp_path_factory.mktemp("cli-usage")
    controller = ControllerProcess(base / "controller")
    controller.start()
    client = controller.client()
    agent = AgentProcess(
        controller.url, create_join_token(client), "u1", base / "agent",
        extra_args=["--heartbeat-interval", "0.5", "--sim-boot-delay", "0.05"],
    )  # fmt: skip
    with processes(controller, agent):
        agent.start()
        cli = Cli({**os.environ, "SHOAL_CONFIG": str(base / "config.yaml")})
        cli.run(
            "context", "add", "it", "--server", controller.url,
            "--token-file", str(controller.data_dir / "admin.token"),
            "--ca-fingerprint", controller.fingerprint,
        )  # fmt: skip
        cli.run("vm", "deploy", "job", "--image", "example.com/ci:1", "--cpu", "2",
                "--memory", "1Gi", "--wait")  # fmt: skip
        yield cli, controller


def test_usage_reports_what_the_vm_held(setup: tuple[Cli, ControllerProcess]) -> None:
    cli, _ = setup
    report = wait_until(
        lambda: (r := cli.json("usage", "--by", "namespace,image,node"))["items"] and r,
        what="usage of the running VM",
    )
    (item,) = report["items"]
    assert (item["namespace"], item["image"], item["node"], item["vms"]) == (
        "default", "example.com/ci:1", "u1", 1,
    )  # fmt: skip
    assert item["cpuSeconds"] == 2 * item["vmSeconds"] > 0
    assert item["memoryByteSeconds"] == 2**30 * item["vmSeconds"]
    rows = list(csv.reader(io.StringIO(cli.run("usage", "-o", "csv", "--by", "node").stdout)))
    assert rows[0] == ["node", "vms", "vmSeconds", "cpuSeconds", "memoryByteSeconds"]
    assert rows[1][:2] == ["u1", "1"]
    table = cli.run("usage", "-A").stdout
    assert table.splitlines()[0].split() == [
        "NAMESPACE", "VMS", "VM-HOURS", "VCPU-HOURS", "MEMORY-GIB-HOURS",
    ]  # fmt: skip
    assert table.splitlines()[1].split()[:2] == ["default", "1"]


def test_usage_refuses_bad_input_and_who_may_not_ask(
    setup: tuple[Cli, ControllerProcess],
) -> None:
    cli, controller = setup
    bad = cli.run("usage", "--by", "colour", check=False)
    assert bad.returncode == 1 and "--by: give namespace, image and/or node" in bad.stderr
    late = cli.run("usage", "--since", "1h", "--until", "2h", check=False)
    assert late.returncode == 1 and "must be less than sinceSeconds" in late.stderr
    cli.run("serviceaccount", "create", "nobody")
    token = cli.run("token", "create", "nobody").stdout.strip().splitlines()[-1].split()[-1]
    stranger = controller.client(token)
    with pytest.raises(ApiError) as everywhere:
        stranger.request("GET", f"{API}/usage")
    assert everywhere.value.code == 403 and "one namespace only" in everywhere.value.message
    with pytest.raises(ApiError) as default:
        stranger.request("GET", f"{API}/usage", params={"namespace": "default"})
    assert default.value.code == 403
