"""The --wait loop: resumes a watch that ends, relists on 410 Gone, stops on Failed or timeout."""

from collections.abc import Iterator
from typing import Any

import pytest

from shoal.cli.common import CliError
from shoal.cli.wait import all_gone, follow, vm_reaches
from shoal.errors import Gone

Obj = dict[str, Any]


def vm(rv: int, phase: str, message: str = "", reason: str = "") -> Obj:
    return {
        "metadata": {"name": "b1", "namespace": "ns", "resourceVersion": str(rv), "generation": 1},
        "status": {"phase": phase, "message": message, "reason": reason},
    }


class FakeClient:
    """Each watch() call plays the next script: a list of events, or an exception to raise."""

    def __init__(self, scripts: list[list[Obj] | Exception], listing: Obj | None = None) -> None:
        self.scripts = scripts
        self.listing = listing or {"metadata": {"resourceVersion": "50"}, "items": []}
        self.watches: list[dict[str, Any]] = []
        self.lists = 0

    def watch(self, plural: str, namespace: str | None, **kwargs: Any) -> Iterator[Obj]:
        self.watches.append({"plural": plural, "namespace": namespace, **kwargs})
        script = self.scripts.pop(0) if self.scripts else []
        if isinstance(script, Exception):
            raise script
        yield from script

    def list(self, plural: str, namespace: str | None = None, **params: Any) -> Obj:
        self.lists += 1
        return self.listing


def run(client: FakeClient, initial: Obj, timeout: float = 5.0) -> dict[Any, Obj]:
    return follow(
        client,  # type: ignore[arg-type]
        "virtualmachines",
        "ns",
        field_selector="metadata.name=b1",
        judge=vm_reaches("b1", "Running"),
        timeout=timeout,
        title="waiting for VM b1 to be Running",
        initial=([initial], initial["metadata"]["resourceVersion"]),
    )


def test_resumes_from_last_rv_and_relists_on_gone() -> None:
    client = FakeClient(
        [
            [{"type": "MODIFIED", "object": vm(11, "Pending", "0/3 nodes available")}],
            [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}}],
            Gone("too old"),
            [{"type": "MODIFIED", "object": vm(51, "Running")}],
        ],
        listing={"metadata": {"resourceVersion": "50"}, "items": [vm(45, "Starting")]},
    )
    objects = run(client, vm(10, "Pending"))
    assert objects[("ns", "b1")]["status"]["phase"] == "Running"
    rvs = [w["resource_version"] for w in client.watches]
    assert rvs == ["10", "11", "20", "50"]
    assert client.lists == 1
    assert all(w["fieldSelector"] == "metadata.name=b1" for w in client.watches)


def test_failed_is_an_error_with_reason_and_message() -> None:
    client = FakeClient(
        [[{"type": "MODIFIED", "object": vm(11, "Failed", "manifest unknown", "ImagePull")}]]
    )
    with pytest.raises(CliError, match=r"^VM b1 failed: ImagePull: manifest unknown$"):
        run(client, vm(10, "Pending"))


def test_deleted_while_waiting() -> None:
    client = FakeClient([[{"type": "DELETED", "object": vm(11, "Pending")}]])
    with pytest.raises(CliError, match="VM b1 was deleted"):
        run(client, vm(10, "Pending"))


def test_timeout_names_last_phase_and_message() -> None:
    client = FakeClient([[{"type": "MODIFIED", "object": vm(11, "Pending", "no nodes")}]])
    with pytest.raises(CliError, match=r"timed out after 0.3s .*: Pending: no nodes$"):
        run(client, vm(10, "Pending"), timeout=0.3)


def test_already_there() -> None:
    client = FakeClient([])
    run(client, vm(10, "Running"))
    assert client.watches == []


def test_stale_status_of_an_older_generation_is_not_done() -> None:
    stale = vm(10, "Running")
    stale["metadata"]["generation"] = 3
    stale["status"]["observedGeneration"] = 2
    fresh = vm(11, "Running")
    fresh["metadata"]["generation"] = 3
    fresh["status"]["observedGeneration"] = 3
    client = FakeClient([[{"type": "MODIFIED", "object": fresh}]])
    run(client, stale)
    assert len(client.watches) == 1


def test_all_gone() -> None:
    client = FakeClient(
        [[{"type": "DELETED", "object": vm(11, "Pending")}]],
    )
    follow(
        client,  # type: ignore[arg-type]
        "virtualmachines",
        None,
        field_selector="spec.nodeName=n1",
        judge=all_gone(lambda objects: f"{len(objects)} left"),
        timeout=5,
        title="draining",
        initial=([vm(10, "Running")], "10"),
    )
