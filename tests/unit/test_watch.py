"""The WatchHub on both store backends: ordered delivery, ring overflow, Gone, heartbeats."""

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from shoal.errors import Gone
from shoal.store.store import Change, Store
from shoal.store.watch import WatchHub

pytestmark = pytest.mark.anyio
Obj = dict[str, Any]
# A safety net so a broken hub fails the test instead of hanging it; never a timing assertion.
PATIENCE = 20.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the hub is written against asyncio


def config(name: str, **labels: str) -> Obj:
    return {
        "apiVersion": "shoal.dev/v1",
        "kind": "VMConfig",
        "metadata": {"name": name, "namespace": "default", "labels": dict(labels)},
        "spec": {"image": "ubuntu"},
    }


def relabel(store: Store, name: str, value: str) -> None:
    def change(obj: Obj) -> Obj:
        obj["metadata"]["labels"]["v"] = value
        return obj

    store.mutate("VMConfig", "default", name, change)


async def started(store: Store, **kwargs: Any) -> WatchHub:
    # a long poll: in-process writes must wake the hub on their own
    hub = WatchHub(store, poll_interval=kwargs.pop("poll_interval", 30.0), **kwargs)
    await hub.start()
    return hub


async def stop(hub: WatchHub) -> bool:
    """Stop the hub; True when the first stop() returned within the patience.

    When it does not (see test_stop_returns_when_a_write_just_woke_the_hub), a second stop()
    cancels the hub again, so one stuck stop cannot hang the suite.
    """
    first = asyncio.ensure_future(hub.stop())
    done, _ = await asyncio.wait({first}, timeout=5)
    if not done:
        await hub.stop()
        await first
    return bool(done)


async def take_changes(stream: AsyncIterator[Change | int | None], count: int) -> list[Change]:
    """The next `count` changes from a stream, skipping heartbeats."""
    got: list[Change] = []
    with anyio.fail_after(PATIENCE):
        async for item in stream:
            if isinstance(item, Change):
                got.append(item)
                if len(got) == count:
                    break
    return got


async def caught_up(hub: WatchHub, rv: int) -> None:
    with anyio.fail_after(PATIENCE):
        while hub.last_rv < rv:
            await hub.wait_past(hub.last_rv, 1.0)


async def test_subscriber_gets_every_later_change_in_order(store_url: str) -> None:
    store = Store(store_url)
    hub = await started(store)
    try:
        store.create(config("before"))
        since = store.current_rv()
        stream = hub.changes(since)
        store.create(config("a"))
        store.create(config("b"))
        relabel(store, "a", "1")
        store.delete("VMConfig", "default", "b")
        relabel(store, "before", "2")

        got = await take_changes(stream, 5)
        assert [(c.type, c.name) for c in got] == [
            ("ADDED", "a"),
            ("ADDED", "b"),
            ("MODIFIED", "a"),
            ("DELETED", "b"),
            ("MODIFIED", "before"),
        ]
        assert [c.rv for c in got] == list(range(since + 1, since + 6))
        assert got == store.changes_since(since)

        # a second subscriber from the middle sees exactly the suffix
        later = await take_changes(hub.changes(since + 3), 2)
        assert [c.rv for c in later] == [since + 4, since + 5]
    finally:
        await stop(hub)
        store.close()


async def test_subscriber_behind_the_ring_reads_the_store(store_url: str) -> None:
    store = Store(store_url)
    hub = await started(store, ring_size=2)
    try:
        for i in range(10):
            store.create(config(f"c{i}"))
        await caught_up(hub, 10)  # the ring now holds only the last two changes

        got = await take_changes(hub.changes(0), 10)
        assert [c.rv for c in got] == list(range(1, 11))
        assert [c.name for c in got] == [f"c{i}" for i in range(10)]
        assert got == store.changes_since(0)
    finally:
        await stop(hub)
        store.close()


async def test_subscriber_behind_the_ring_then_follows_live(store_url: str) -> None:
    store = Store(store_url)
    hub = await started(store, ring_size=2)
    try:
        for i in range(10):
            store.create(config(f"c{i}"))
        await caught_up(hub, 10)
        stream = hub.changes(3)
        first = await take_changes(stream, 7)
        for i in range(5):
            store.create(config(f"late-{i}"))
        rest = await take_changes(stream, 5)
        rvs = [c.rv for c in first + rest]
        assert rvs == list(range(4, 16))
        assert [c.name for c in rest] == [f"late-{i}" for i in range(5)]
    finally:
        await stop(hub)
        store.close()


async def test_old_version_after_compaction_is_gone(open_store: Callable[..., Store]) -> None:
    store = open_store(change_retention=2)
    for i in range(6):
        store.create(config(f"c{i}"))
    assert store.compact() == 4
    hub = await started(store)
    try:
        with anyio.fail_after(PATIENCE), pytest.raises(Gone):
            await take_changes(hub.changes(1), 1)
        # from the compaction point on, the log still replays
        got = await take_changes(hub.changes(4), 2)
        assert [c.rv for c in got] == [5, 6]
    finally:
        await stop(hub)


async def test_writes_from_another_process_arrive_by_poll(open_store: Callable[..., Store]) -> None:
    mine, other = open_store(), open_store()  # `other` stands for another controller replica
    hub = await started(mine, poll_interval=0.05)
    try:
        since = mine.current_rv()
        stream = hub.changes(since)
        other.create(config("remote"))
        got = await take_changes(stream, 1)
        assert [(c.type, c.name, c.rv) for c in got] == [("ADDED", "remote", since + 1)]
    finally:
        await stop(hub)


async def test_writes_from_another_replica_arrive_at_once_on_postgresql(
    open_store: Callable[..., Store],
) -> None:
    """On PostgreSQL a commit is announced (NOTIFY) and the hub reads the log at once: with a
    poll an hour apart, another replica's writes still arrive, in order, one by one."""
    mine, other = open_store(), open_store()
    if mine.dialect != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    hub = await started(mine, poll_interval=3600.0)
    try:
        await asyncio.sleep(0.5)  # the listener's LISTEN is in place
        since = mine.current_rv()
        stream = hub.changes(since)
        for i in range(3):
            other.create(config(f"remote-{i}"))
            got = await take_changes(stream, 1)
            assert [(c.name, c.rv) for c in got] == [(f"remote-{i}", since + i + 1)]
    finally:
        await stop(hub)


async def test_heartbeats_never_go_below_what_was_yielded(store_url: str) -> None:
    store = Store(store_url)
    store.create(config("seed"))
    hub = await started(store)
    try:
        since = store.current_rv()
        stream = hub.changes(since, heartbeat=0.01)
        yielded: list[int] = []
        heartbeats: list[int] = []

        async def next_item() -> Change | int | None:
            item = await anext(stream)
            if isinstance(item, Change):
                yielded.append(item.rv)
            else:
                assert isinstance(item, int) and not isinstance(item, bool), item
                assert item >= max(yielded, default=since), (item, yielded)
                heartbeats.append(item)
            return item

        with anyio.fail_after(PATIENCE):
            assert await next_item() == since  # quiet from the start: a heartbeat at `since`
            for i in range(3):
                store.create(config(f"w{i}"))
                # read on until a heartbeat comes after the change
                while not (yielded and yielded[-1] == since + i + 1 and heartbeats[-1] > since + i):
                    await next_item()
        assert yielded == [since + 1, since + 2, since + 3]
        assert heartbeats == sorted(heartbeats)
        assert heartbeats[-1] == since + 3
    finally:
        await stop(hub)
        store.close()


async def test_hub_that_falls_behind_compaction_does_not_stall_watchers(
    open_store: Callable[..., Store],
) -> None:
    """Another replica writes and compacts past what this hub has read: watchers must go on.

    No await runs between the hub's start and the compaction, so the hub cannot read those
    changes first: it is behind the log's start. A watcher from the current version must still
    get what is written next, and one from an old version must get Gone.
    """
    mine, other = open_store(), open_store(change_retention=2)
    hub = await started(mine, poll_interval=0.05)
    try:
        for i in range(6):
            other.create(config(f"remote-{i}"))
        assert other.compact() == 4
        since = mine.current_rv()
        stream = hub.changes(since)
        mine.create(config("local"))
        try:
            with anyio.fail_after(3):  # a safety net: the hub retries every 0.05 s
                got = await take_changes(stream, 1)
        except TimeoutError:
            pytest.fail(
                f"no change reached a watcher from {since}: the hub (at {hub.last_rv}) is stuck "
                "behind the compacted change log"
            )
        assert [(c.name, c.rv) for c in got] == [("local", since + 1)]
        with anyio.fail_after(3), pytest.raises(Gone):
            await take_changes(hub.changes(1), 1)
    finally:
        await stop(hub)


async def test_heartbeat_promises_only_what_was_yielded(store_url: str) -> None:
    """A heartbeat is a bookmark: every change up to it has been yielded, none comes later.

    A watcher that saves the bookmark and reconnects from it must not miss a change, so no
    change may follow a heartbeat whose version is not below the change's.
    """
    store = Store(store_url)
    hub = await started(store)
    try:
        since = store.current_rv()
        stream = hub.changes(since, heartbeat=0.001)  # frequent heartbeats: many chances
        items: list[Change | int] = []
        writes = 30
        writer = asyncio.create_task(
            asyncio.to_thread(lambda: [store.create(config(f"w{i}")) for i in range(writes)])
        )
        with anyio.fail_after(PATIENCE):
            async for item in stream:
                items.append(item)
                if sum(isinstance(i, Change) for i in items) == writes:
                    break
        await writer
        bookmark = since
        for item in items:
            if isinstance(item, Change):
                assert item.rv > bookmark, (
                    f"change {item.rv} came after a heartbeat at {bookmark}: a watcher resuming "
                    "from that bookmark would miss it"
                )
            else:
                bookmark = item
    finally:
        await stop(hub)
        store.close()


async def test_stop_returns_when_a_write_just_woke_the_hub(store_url: str) -> None:
    """The controller stops its hub on shutdown; a write landing at that moment must not make
    the hub swallow the cancellation and run on."""
    store = Store(store_url)
    hub = await started(store)
    try:
        await caught_up(hub, 0)
        for _ in range(5):
            await asyncio.sleep(0)  # the hub is waiting for a wake-up or its poll
        store.create(config("last"))  # its listener wakes the hub in this loop iteration
        assert await stop(hub), (
            "WatchHub.stop() did not return: the hub task swallowed its cancellation"
        )
    finally:
        store.close()


def lose_commits_after(store: Store, rv: int) -> None:
    """What a database that lost acknowledged commits looks like when it comes back: the
    objects, log entries and version counter of every change after rv are gone."""
    import sqlalchemy as sa

    from shoal.store.schema import changes, counters, objects

    with store.engine.begin() as conn:
        conn.execute(sa.delete(objects).where(objects.c.rv > rv))
        conn.execute(sa.delete(changes).where(changes.c.rv > rv))
        conn.execute(sa.update(counters).where(counters.c.name == "rv").values(value=rv))


async def test_a_store_that_lost_commits_makes_every_watch_relist(
    open_store: Callable[..., Store],
) -> None:
    """The database comes back without the last changes it acknowledged and hands their versions
    out again for other changes: the hub notices (its last change is not in the log as it saw
    it), moves the versions past every one it handed out, and its watchers get Gone and relist
    instead of missing the new changes or keeping objects that no longer exist."""
    mine, other = open_store(), open_store()  # the changes after the loss come from a replica
    hub = await started(mine, poll_interval=0.05)
    try:
        mine.create(config("kept"))
        kept = mine.current_rv()
        stream = hub.changes(kept)
        mine.create(config("lost-1"))
        mine.create(config("lost-2"))
        seen = [c.name for c in await take_changes(stream, 2)]
        assert seen == ["lost-1", "lost-2"] and hub.last_rv == kept + 2

        lose_commits_after(mine, kept)
        other.create(config("new-1"))
        other.create(config("new-2"))  # the versions lost-1 and lost-2 had, reused
        with anyio.fail_after(PATIENCE), pytest.raises(Gone):
            await take_changes(stream, 1)
        assert hub.history_resets == 1

        # Every version handed out before is Gone now; a relist sees what the store holds and
        # a watch from it sees what comes next.
        with pytest.raises(Gone):
            mine.changes_since(kept + 2)
        items, rv = mine.list_objects("VMConfig")
        assert sorted(i["metadata"]["name"] for i in items) == ["kept", "new-1", "new-2"]
        assert rv > kept + 2
        await caught_up(hub, rv)
        after = hub.changes(rv)
        other.create(config("next"))
        assert [c.name for c in await take_changes(after, 1)] == ["next"]
    finally:
        await stop(hub)
