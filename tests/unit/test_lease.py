"""The leader lease on the database's clock, and the fence it puts on a leader's writes, on
SQLite and PostgreSQL."""

import time
from collections.abc import Callable

import pytest

from builders import build_node
from shoal.store import lease
from shoal.store.store import NotLeader, Store


def test_the_lease_goes_to_one_holder_until_it_lapses_and_each_change_of_hands_bumps_the_epoch(
    open_store: Callable[..., Store],
) -> None:
    store = open_store()
    first = lease.acquire(store, "a", ttl=0.5, address="a:1")
    assert (first.holder, first.epoch, first.address) == ("a", 1, "a:1")
    assert lease.acquire(store, "b", ttl=0.5).holder == "a", "held: not b's"
    renewed = lease.acquire(store, "a", ttl=0.5)
    assert (renewed.holder, renewed.epoch) == ("a", 1), "renewing keeps the epoch"
    time.sleep(0.7)
    taken = lease.acquire(store, "b", ttl=30, address="b:1")
    assert (taken.holder, taken.epoch) == ("b", 2)
    assert lease.acquire(store, "a", ttl=30).holder == "b"
    lease.release(store, "a", 1)  # not a's to give: nothing happens
    assert lease.acquire(store, "a", ttl=30).holder == "b"
    lease.release(store, "b", 2)
    assert (lease.acquire(store, "a", ttl=30).epoch, lease.read_all(store)[0].holder) == (3, "a")


def test_a_fenced_write_lands_only_while_the_lease_is_the_writers(
    open_store: Callable[..., Store],
) -> None:
    store = open_store()
    held = lease.acquire(store, "a", ttl=30)
    with lease.fenced("a", held.epoch):
        store.create(build_node("n1"))
    lease.release(store, "a", held.epoch)
    lease.acquire(store, "b", ttl=30)
    with lease.fenced("a", held.epoch), pytest.raises(NotLeader, match="epoch 1"):
        store.create(build_node("n2"))
    store.create(build_node("n3"))  # an unfenced write (the API's) is not a leader's
    names = {n["metadata"]["name"] for n in store.list_objects("Node")[0]}
    assert names == {"n1", "n3"}, "the stale leader's write left nothing"


def test_replicas_say_they_are_up_and_are_forgotten_long_after(
    open_store: Callable[..., Store],
) -> None:
    store = open_store()
    lease.heartbeat(store, "r1", ttl=30, address="10.0.0.1:8420")
    lease.heartbeat(store, "r2", ttl=0.01, address="10.0.0.2:8420")
    time.sleep(0.05)
    lease.acquire(store, "r1", ttl=30)
    leader, replicas = lease.read_all(store)
    assert leader is not None and leader.live and leader.holder == "r1"
    assert [(r.holder, r.live) for r in replicas] == [("r1", True), ("r2", False)]
    assert replicas[0].address == "10.0.0.1:8420" and 29 < replicas[0].remaining <= 30
