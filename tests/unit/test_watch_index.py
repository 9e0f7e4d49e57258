"""The watch hub's index: which rings a change lands in, per-node rings for agents' watches, and
commits of this process handed to the hub (in order, across gaps) instead of read back."""

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from shoal import jsoncodec
from shoal.store.store import Change, Store
from shoal.store.watch import EVERYTHING, WatchHub, belongs, ring_key, ring_keys

pytestmark = pytest.mark.anyio
Obj = dict[str, Any]
PATIENCE = 20.0  # a safety net so a broken hub fails the test instead of hanging it


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def vm(name: str, node: str | None = None) -> Obj:
    spec: Obj = {"image": "ubuntu", "cpu": 1, "memory": "1Gi"}
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "shoal.dev/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default", "labels": {}},
        "spec": spec,
    }


def change(obj: Obj, rv: int = 1, type_: str = "ADDED") -> Change:
    meta = obj["metadata"]
    return Change(
        rv, type_, obj["kind"], meta.get("namespace") or "", meta["name"], jsoncodec.dumps(obj)
    )


def bind(store: Store, name: str, node: str | None) -> None:
    def to(obj: Obj) -> Obj:
        obj["spec"]["nodeName"] = node
        return obj

    store.mutate("VirtualMachine", "default", name, to)


async def take(stream: AsyncIterator[Change | int], count: int) -> list[Change]:
    got: list[Change] = []
    with anyio.fail_after(PATIENCE):
        async for item in stream:
            if isinstance(item, Change):
                got.append(item)
                if len(got) == count:
                    break
    return got


async def nothing_within(stream: AsyncIterator[Change | int], seconds: float) -> None:
    """The stream yields no change for a while (heartbeats, if any, are skipped)."""
    with anyio.move_on_after(seconds):
        async for item in stream:
            assert not isinstance(item, Change), f"unexpected change {item}"


async def started(store: Store) -> WatchHub:
    hub = WatchHub(store, poll_interval=30.0)  # in-process writes must reach it on their own
    await hub.start()
    return hub


# -- pure: which rings a change belongs in ------------------------------------------------


def test_change_parses_its_object_on_use() -> None:
    c = change(vm("a", "n1"))
    assert c.object == vm("a", "n1")
    assert c.object is not c.object  # each use gets its own copy to keep
    assert c.node_name == "n1"
    assert change(vm("b")).node_name is None
    node = {"apiVersion": "shoal.dev/v1", "kind": "Node", "metadata": {"name": "n1"}}
    assert change(node).node_name is None  # only VMs are bound to nodes


def test_ring_keys_index_vms_by_node_only_when_asked() -> None:
    bound = change(vm("a", "n1"))
    assert ring_keys(bound) == [EVERYTHING, ("VirtualMachine", None)]
    assert ring_keys(bound, {"VirtualMachine"}) == [
        EVERYTHING,
        ("VirtualMachine", None),
        ("VirtualMachine", "n1"),
    ]
    assert ring_keys(change(vm("b")), {"VirtualMachine"}) == [
        EVERYTHING,
        ("VirtualMachine", None),
    ]


@pytest.mark.parametrize(
    ("key", "wanted"),
    [
        (EVERYTHING, True),
        (("VirtualMachine", None), True),
        (("VirtualMachine", "n1"), True),
        (("VirtualMachine", "n2"), False),
        (("Node", None), False),
        (("Node", "n1"), False),
    ],
)
def test_belongs(key: tuple[str | None, str | None], wanted: bool) -> None:
    assert belongs(change(vm("a", "n1")), key) is wanted


def test_ring_key_ignores_a_node_without_a_kind() -> None:
    assert ring_key(None, "n1") == EVERYTHING
    assert ring_key("VirtualMachine", "n1") == ("VirtualMachine", "n1")


# -- the hub ------------------------------------------------------------------------------


async def test_a_node_watch_sees_only_its_vms(store_url: str) -> None:
    store = Store(store_url)
    hub = await started(store)
    try:
        since = store.current_rv()
        mine = hub.changes(since, kind="VirtualMachine", node_name="n1")
        all_vms = hub.changes(since, kind="VirtualMachine")
        store.create(vm("a", "n1"))
        store.create(vm("b", "n2"))
        store.create(vm("c"))
        bind(store, "c", "n1")  # bound later: from then on it is n1's
        bind(store, "b", None)

        assert [(c.name, c.type) for c in await take(mine, 2)] == [
            ("a", "ADDED"),
            ("c", "MODIFIED"),
        ]
        assert [c.name for c in await take(all_vms, 5)] == ["a", "b", "c", "c", "b"]
        await nothing_within(mine, 0.2)
    finally:
        await hub.stop()
        store.close()


async def test_a_node_watch_from_the_past_reads_the_log(store_url: str) -> None:
    store = Store(store_url)
    since = store.current_rv()
    store.create(vm("old-mine", "n1"))
    store.create(vm("old-other", "n2"))
    hub = await started(store)
    try:
        # the per-node ring starts empty now: what came before is read from the change log
        stream = hub.changes(since, kind="VirtualMachine", node_name="n1")
        assert [c.name for c in await take(stream, 1)] == ["old-mine"]
        store.create(vm("new-other", "n2"))
        store.create(vm("new-mine", "n1"))
        assert [c.name for c in await take(stream, 1)] == ["new-mine"]
    finally:
        await hub.stop()
        store.close()


async def test_per_node_rings_go_with_their_last_watcher(store_url: str) -> None:
    store = Store(store_url)
    hub = await started(store)
    try:
        since = store.current_rv()
        first = hub.changes(since, kind="VirtualMachine", node_name="n1")
        second = hub.changes(since, kind="VirtualMachine", node_name="n1")
        store.create(vm("a", "n1"))
        await take(first, 1)
        await take(second, 1)
        key = ("VirtualMachine", "n1")
        assert key in hub._rings
        await first.aclose()
        assert key in hub._rings  # the other watcher still reads it
        await second.aclose()
        assert key not in hub._rings
        assert "VirtualMachine" not in hub._keyed_kinds
    finally:
        await hub.stop()
        store.close()


async def test_commits_heard_out_of_order_are_delivered_in_order(store_url: str) -> None:
    store = Store(store_url)
    hub = await started(store)
    try:
        since = hub.last_rv
        stream = hub.changes(since)
        one = change(vm("one"), since + 1)
        two = change(vm("two"), since + 2)
        hub._accept([two])  # the writer of since+1 has not been heard yet: nothing to deliver
        assert hub.last_rv == since
        hub._accept([one])
        assert hub.last_rv == since + 2
        assert [c.name for c in await take(stream, 2)] == ["one", "two"]
        hub._accept([one])  # heard again (say, from the log first): ignored
        assert hub.last_rv == since + 2
    finally:
        await hub.stop()
        store.close()


async def test_a_gap_is_filled_from_the_log(open_store: Callable[..., Store]) -> None:
    mine, other = open_store(), open_store()  # `other` stands for another controller replica
    hub = await started(mine)  # a long poll: the gap itself must make the hub read the log
    try:
        since = mine.current_rv()
        stream = hub.changes(since)
        other.create(vm("remote"))
        mine.create(vm("local"))
        got = await take(stream, 2)
        assert [(c.name, c.rv) for c in got] == [("remote", since + 1), ("local", since + 2)]
    finally:
        await hub.stop()


async def test_the_first_bookmark_may_come_after_its_own_wait(store_url: str) -> None:
    store = Store(store_url)
    hub = await started(store)
    try:
        since = store.current_rv()
        stream = hub.changes(since, heartbeat=30.0, first_heartbeat=0.05)
        with anyio.fail_after(PATIENCE):
            assert await anext(stream) == since  # after the first wait, not the heartbeat's
        with anyio.move_on_after(0.3):  # the next one waits the heartbeat
            item = await anext(stream)
            pytest.fail(f"a second bookmark came early: {item}")
        await stream.aclose()
    finally:
        await hub.stop()
        store.close()
