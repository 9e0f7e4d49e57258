"""ImageCache status from the nodes' own reports: targets and per-node states."""

from typing import Any

import pytest

from shoal.controllers.imagecache import cache_status, targets


def node(name: str, labels: dict[str, str] | None = None, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}}, "status": status}


def cache(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "c"}, "spec": {"image": "img", **spec}}


NODES = [
    node("a", {"pool": "ci"}, cachedImages=["img"]),
    node("b", {"pool": "ci"}, imagePulls=[{"image": "img", "state": "Caching", "bytes": 5,
                                           "totalBytes": 10}]),
    node("c", {"pool": "other"}, imagePulls=[{"image": "img", "state": "Failed",
                                              "message": "registry down"}]),
    node("d"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ({"allNodes": True}, ["a", "b", "c", "d"]),
        ({"nodes": ["b", "d", "gone"]}, ["b", "d"]),
        ({"nodeSelector": {"pool": "ci"}}, ["a", "b"]),
        ({"nodeSelector": {"pool": "none"}}, []),
    ],
)
def test_targets(spec: dict[str, Any], names: list[str]) -> None:
    assert [n["metadata"]["name"] for n in targets(cache(**spec), NODES)] == names


def test_status_gathers_each_nodes_state() -> None:
    status = cache_status(cache(allNodes=True), NODES)
    states = {name: entry["state"] for name, entry in status["nodes"].items()}
    assert states == {"a": "Ready", "b": "Caching", "c": "Failed", "d": "Pending"}
    assert status["nodes"]["b"]["bytes"] == 5 and status["nodes"]["b"]["totalBytes"] == 10
    assert status["nodes"]["c"]["message"] == "registry down"
    assert (status["desired"], status["ready"], status["failed"]) == (4, 1, 1)


def test_a_pull_of_another_image_is_not_this_caches() -> None:
    other = node("x", imagePulls=[{"image": "else", "state": "Caching"}])
    assert cache_status(cache(allNodes=True), [other])["nodes"]["x"]["state"] == "Pending"
