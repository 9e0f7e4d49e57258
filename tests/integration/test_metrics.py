"""What the controller tells Prometheus (parsed with prometheus-client's own parser): its
requests per route, the fleet's state (objects, VMs by phase and namespace, pending VMs by
reason, nodes' capacity and allocation, warm pools, leadership), the scheduler's passes and a VM's
deploy-to-Running time; and the Server-Timing header on every answer."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from builders import build_node
from helpers import InProcessController, metric_samples, wait_until
from shoal.model.meta import now_iso


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessController]:
    with InProcessController(Path(tmp_path_factory.mktemp("metrics"))) as running:
        yield running


def scrape(controller: InProcessController) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    headers = {"Authorization": f"Bearer {controller.admin_token}"}
    response = httpx.get(controller.url + "/metrics", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return metric_samples(response.text)


def test_answers_carry_the_servers_time(controller: InProcessController) -> None:
    headers = {"Authorization": f"Bearer {controller.admin_token}"}
    for path in ("/apis/shoal.dev/v1/namespaces/default", "/apis/shoal.dev/v1/namespaces/nope"):
        response = httpx.get(controller.url + path, headers=headers)
        name, _, duration = response.headers["server-timing"].partition(";dur=")
        assert name == "app"
        assert float(duration) >= 0


def test_metrics_count_requests_by_route_and_code(controller: InProcessController) -> None:
    headers = {"Authorization": f"Bearer {controller.admin_token}"}
    for _ in range(3):
        httpx.get(controller.url + "/apis/shoal.dev/v1/nodes/absent", headers=headers)
    assert httpx.get(controller.url + "/metrics").status_code == 401
    samples = scrape(controller)
    route = {("method", "GET"), ("route", "/apis/shoal.dev/v1/nodes/{name}")}
    assert samples[("shoal_http_requests_total", frozenset({*route, ("code", "404")}))] == 3
    assert samples[("shoal_http_request_duration_seconds_count", frozenset(route))] == 3
    inf = frozenset({*route, ("le", "+Inf")})
    assert samples[("shoal_http_request_duration_seconds_bucket", inf)] == 3
    assert samples[("shoal_objects", frozenset({("kind", "Namespace")}))] >= 1
    assert samples[("shoal_leader", frozenset())] == 1
    assert samples[("shoal_watch_streams", frozenset({("kind", "*")}))] >= 1  # the scheduler
    assert samples[("shoal_leader_epoch", frozenset())] >= 1


def test_the_fleet_and_the_scheduler_are_measured(controller: InProcessController) -> None:
    client = controller.client()
    node = build_node("m1", cpu=4)
    client.create("nodes", {"metadata": {"name": "m1"}, "spec": {}})
    client.patch("nodes", "m1", {"status": node["status"]}, sub="status")
    vm = {"metadata": {"name": "big"}, "spec": {"image": "sim:1", "cpu": 3, "memory": "1Gi"}}
    client.create("virtualmachines", vm, "default")
    vm["metadata"]["name"] = "second"
    client.create("virtualmachines", vm, "default")  # fits nowhere once big is bound

    def measured() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        samples = scrape(controller)
        pending = ("shoal_vms_pending", frozenset({("reason", "insufficient cpu")}))
        return samples if samples.get(pending) == 1 else None

    samples = wait_until(measured, what="the second VM waiting for cpu")
    by_phase = {labels: value for (name, labels), value in samples.items() if name == "shoal_vms"}
    assert by_phase[frozenset({("namespace", "default"), ("phase", "Scheduled")})] == 1
    assert by_phase[frozenset({("namespace", "default"), ("phase", "Pending")})] == 1
    cpu = frozenset({("node", "m1"), ("resource", "cpu")})
    assert samples[("shoal_node_capacity", cpu)] == 4
    assert samples[("shoal_node_allocated", cpu)] == 3
    assert samples[("shoal_scheduler_attempts_total", frozenset({("result", "bound")}))] >= 1
    assert (
        samples[("shoal_scheduler_attempts_total", frozenset({("result", "unschedulable")}))] >= 1
    )
    assert samples[("shoal_scheduler_pass_duration_seconds_count", frozenset())] >= 1

    # The agent's first Running of a VM is timed from its creation, and its boot from its start.
    booting = {"phase": "Starting", "bootTime": now_iso()}
    client.patch("virtualmachines", "big", {"status": booting}, "default", sub="status")
    client.patch(
        "virtualmachines", "big", {"status": {"phase": "Running"}}, "default", sub="status"
    )
    samples = scrape(controller)
    count = ("shoal_vm_deploy_to_running_seconds_count", frozenset({("namespace", "default")}))
    assert samples[count] == 1
    boots = frozenset({("node", "m1"), ("start", "booted")})
    assert samples[("shoal_vm_boot_seconds_count", boots)] == 1

    # An image pull a node reported, then cached: its bytes and time.
    pull = {"image": "reg/x:1", "state": "Caching", "bytes": 10, "totalBytes": 100}
    client.patch("nodes", "m1", {"status": {"imagePulls": [pull]}}, sub="status")
    client.patch(
        "nodes", "m1", {"status": {"imagePulls": [], "cachedImages": ["reg/x:1"]}}, sub="status"
    )
    samples = scrape(controller)
    assert samples[("shoal_image_pull_bytes_total", frozenset({("node", "m1")}))] == 100
    assert samples[("shoal_image_pull_duration_seconds_count", frozenset({("node", "m1")}))] == 1
    client.patch(
        "virtualmachines", "big", {"status": {"phase": "Stopped"}}, "default", sub="status"
    )
    client.patch(
        "virtualmachines", "big", {"status": {"phase": "Running"}}, "default", sub="status"
    )
    assert scrape(controller)[count] == 1, "a restart is not a deploy"
