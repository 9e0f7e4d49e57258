"""Lists answered from the watch hub's object cache: the same pages as the database gives, only
when the cache is provably as fresh, and a load that misses nothing written while it read."""

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import jsoncodec
from shoal.api.listing import list_page, make_query
from shoal.model.registry import KINDS
from shoal.store.objectcache import ObjectCache
from shoal.store.store import Change, Store
from shoal.store.watch import WatchHub

Obj = dict[str, Any]
VM_INFO = next(info for info in KINDS if info.kind == "VirtualMachine")
PATIENCE = 20.0


def body(namespace: str, name: str, version: int) -> str:
    return jsoncodec.dumps({"metadata": {"namespace": namespace, "name": name, "v": version}})


# -- pure: the cache against a plain dict ----------------------------------------------------

names = st.sampled_from(["a", "b", "c", "d", "e"])
namespaces = st.sampled_from(["default", "default-x", "team"])
operations = st.lists(st.tuples(st.booleans(), namespaces, names), max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    operations,
    st.one_of(st.none(), namespaces),
    st.one_of(st.none(), st.tuples(namespaces, names)),
    st.one_of(st.none(), st.integers(1, 6)),
)
def test_pages_match_a_plain_model(
    ops: list[tuple[bool, str, str]],
    namespace: str | None,
    after: tuple[str, str] | None,
    limit: int | None,
) -> None:
    cache = ObjectCache(["VirtualMachine"])
    cache.load("VirtualMachine", [], 0, [])
    model: dict[tuple[str, str], str] = {}
    for rv, (delete, ns, name) in enumerate(ops, start=1):
        key = (ns, name)
        if delete and key in model:
            change = Change(rv, "DELETED", "VirtualMachine", ns, name, model.pop(key))
        elif delete:
            continue
        else:
            model[key] = body(ns, name, rv)
            change = Change(rv, "MODIFIED", "VirtualMachine", ns, name, model[key])
        cache.apply([change])
    wanted = sorted(
        key
        for key in model
        if (namespace is None or key[0] == namespace) and (after is None or key > after)
    )
    page = cache.page("VirtualMachine", namespace, after, limit, fresh_as_of=0)
    assert page is not None
    bodies, _rv, last = page
    shown = wanted if limit is None else wanted[:limit]
    assert bodies == [model[key] for key in shown]
    assert last == (shown[-1] if len(wanted) > len(shown) else None)


def test_a_kind_not_loaded_or_not_fresh_enough_is_not_answered() -> None:
    cache = ObjectCache(["Node"])
    assert cache.page("Node", None, None, None, fresh_as_of=0) is None
    cache.load("Node", [("", "n1", body("", "n1", 5))], 5, [])
    assert cache.page("Node", None, None, None, fresh_as_of=5) is not None
    assert cache.page("Node", None, None, None, fresh_as_of=6) is None  # behind the database
    cache.apply([Change(6, "MODIFIED", "Event", "default", "e", "{}")])
    assert cache.page("Node", None, None, None, fresh_as_of=6) is not None
    cache.clear()
    assert cache.page("Node", None, None, None, fresh_as_of=0) is None


def test_a_load_applies_what_came_after_its_read() -> None:
    cache = ObjectCache(["Node"])
    read_at_3 = [("", "n1", body("", "n1", 1)), ("", "n2", body("", "n2", 2))]
    since = [
        Change(3, "MODIFIED", "Node", "", "n1", body("", "n1", 3)),  # in what was read
        Change(4, "DELETED", "Node", "", "n2", body("", "n2", 2)),
        Change(5, "ADDED", "Node", "", "n3", body("", "n3", 5)),
        Change(6, "ADDED", "VirtualMachine", "default", "v", "{}"),
    ]
    cache.load("Node", read_at_3, 3, since)
    page = cache.page("Node", None, None, None, fresh_as_of=3)
    assert page is not None
    assert page[0] == [body("", "n1", 1), body("", "n3", 5)]


# -- through a running hub, against the database -----------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store(open_store: Callable[..., Store]) -> Store:
    return open_store()


def vm(name: str, namespace: str = "default") -> Obj:
    return {
        "apiVersion": "shoal.dev/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": namespace, "labels": {}},
        "spec": {"image": "ubuntu", "cpu": 1, "memory": "1Gi"},
    }


def same_pages(store: Store, hub: WatchHub, namespace: str | None, limit: int | None) -> None:
    query = make_query(VM_INFO, namespace, None, None)
    cont = None
    while True:
        cached = list_page(store, query, limit, cont, hub.cache)
        read = list_page(store, query, limit, cont)
        assert cached.bodies == read.bodies
        assert cached.cont == read.cont
        assert cached.rv >= read.rv
        if cached.cont is None:
            return
        cont = cached.cont


@pytest.mark.anyio
async def test_lists_from_the_cache_equal_the_databases(store: Store) -> None:
    for i in range(5):
        store.create(vm(f"before-{i}"))  # there when the hub loads
    hub = WatchHub(store, poll_interval=30.0)
    await hub.start()
    try:
        for i in range(12):
            await anyio.to_thread.run_sync(store.create, vm(f"vm-{i:02}", ["a", "b"][i % 2]))
        store.delete("VirtualMachine", "a", "vm-04")
        store.mutate("VirtualMachine", "b", "vm-05", _label)
        # Commits reach the hub through the event loop: let it run before comparing.
        with anyio.fail_after(PATIENCE):
            while hub.last_rv < store.current_rv():
                await anyio.sleep(0.01)
        # The cache answers (the comparison below is not the database against itself).
        assert hub.cache.page("VirtualMachine", None, None, None, store.current_rv()) is not None
        for namespace in (None, "a", "b", "default", "none"):
            for limit in (None, 1, 2, 5):
                same_pages(store, hub, namespace, limit)
    finally:
        await hub.stop()


def _label(obj: Obj) -> Obj:
    obj["metadata"]["labels"] = {"changed": "yes"}
    return obj
