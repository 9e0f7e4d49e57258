"""What keeps a thousand nodes' heartbeats cheap: the agent beats on a fixed cadence, the store
keeps each node's last heartbeat in a column, and the node-lifecycle loop reads silent nodes only."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from builders import build_node
from shoal.agent.agent import next_beat
from shoal.controllers.nodelifecycle import NodeLifecycle, iso
from shoal.store.store import Obj, Store, heartbeat_of

T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'shoal.db'}")
    yield store
    store.close()


@pytest.mark.parametrize(
    ("due", "now", "expected"),
    [
        (100.0, 100.2, 110.0),  # answered at once: the next one ten seconds after this one was due
        (100.0, 109.0, 110.0),  # a slow answer does not push the next one back
        (100.0, 110.0, 110.0),
        (100.0, 135.0, 140.0),  # hung past two beats: skip them, keep the phase
    ],
)
def test_next_beat_keeps_the_cadence(due: float, now: float, expected: float) -> None:
    assert next_beat(due, now, 10.0) == expected


def node_with(name: str, heartbeat: datetime | None) -> Obj:
    node = build_node(name, heartbeat=iso(heartbeat) if heartbeat else None)
    if heartbeat is None:  # registered, never heartbeated
        node["status"].pop("lastHeartbeatTime")
        node["status"]["conditions"] = []
    return node


def test_heartbeat_of() -> None:
    assert heartbeat_of(node_with("a", T0)) == T0.timestamp()
    beat_in_condition = node_with("b", T0)
    del beat_in_condition["status"]["lastHeartbeatTime"]
    assert heartbeat_of(beat_in_condition) == T0.timestamp()  # as the lifecycle loop reads it
    assert heartbeat_of(node_with("c", None)) is None
    garbled = node_with("d", T0)
    garbled["status"]["lastHeartbeatTime"] = "yesterday"
    assert heartbeat_of(garbled) is None


def test_list_nodes_silent_since(store: Store) -> None:
    store.create(node_with("fresh", T0 + timedelta(seconds=50)))
    store.create(node_with("silent", T0))
    store.create(node_with("new", None))
    cutoff = (T0 + timedelta(seconds=10)).timestamp()
    silent, _ = store.list_objects("Node", heartbeat_before=cutoff)
    assert [n["metadata"]["name"] for n in silent] == ["new", "silent"]

    def beat(node: Obj) -> Obj:
        node["status"]["lastHeartbeatTime"] = iso(T0 + timedelta(seconds=60))
        return node

    store.mutate("Node", "", "silent", beat)  # the column follows every write
    silent, _ = store.list_objects("Node", heartbeat_before=cutoff)
    assert [n["metadata"]["name"] for n in silent] == ["new"]


def test_the_lifecycle_loop_reads_only_silent_nodes(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(50):
        store.create(node_with(f"n{i:02}", T0))
    lifecycle = NodeLifecycle(store, grace=40.0, eviction_timeout=300.0)
    lifecycle.run_once(T0)
    real = store.list_objects
    read: list[int] = []

    def counting(kind: str, *args: Any, **kwargs: Any) -> tuple[list[Obj], int]:
        listed = real(kind, *args, **kwargs)
        read.append(len(listed[0]))
        return listed

    monkeypatch.setattr(store, "list_objects", counting)

    def beat(at: datetime) -> Any:
        def change(node: Obj) -> Obj:
            node["status"]["lastHeartbeatTime"] = iso(at)
            return node

        return change

    now = T0 + timedelta(seconds=45)
    for i in range(49):  # all but n49 heartbeat
        store.mutate("Node", "", f"n{i:02}", beat(now))
    lifecycle.run_once(now)
    assert read == [1]
    assert store.get("Node", "", "n49")["status"]["conditions"][0]["status"] == "False"
    assert all(
        store.get("Node", "", f"n{i:02}")["status"]["conditions"][0]["status"] == "True"
        for i in range(49)
    )
