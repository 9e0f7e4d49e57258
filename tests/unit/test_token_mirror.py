"""Authenticating from the tokens read in the last few seconds: no database read per request, a
revocation here at once, and one on another replica within the cache time."""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from shoal.store.store import Store
from shoal.store.tokens import CACHE_SECONDS, TokenStore


@pytest.fixture
def store(open_store: Callable[..., Store]) -> Store:
    return open_store()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def count_reads(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    reads: list[int] = []
    real = store.read_engine.connect

    def connect(*args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(store.read_engine, "connect", connect)
    return reads


def test_one_read_serves_every_token_for_a_while(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = TokenStore(store, clock=clock)
    issued = [tokens.issue("Node", "", f"n{i}")[0] for i in range(5)]
    fresh = TokenStore(store, clock=clock)  # another process: knows none of them yet
    reads = count_reads(store, monkeypatch)
    assert fresh.cached(issued[0]) is None
    assert fresh.verify(issued[0]) is not None
    assert len(reads) == 1
    for token in issued:
        record = fresh.cached(token)
        assert record is not None and record.subject_name == f"n{issued.index(token)}"
    assert len(reads) == 1
    clock.now += CACHE_SECONDS + 1
    assert fresh.cached(issued[1]) is None  # stale: ask the database again
    assert fresh.verify(issued[1]) is not None
    assert len(reads) == 2


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.partition(".")[0] + ".wrong-secret",
        lambda t: "0000000000000000." + t.partition(".")[2],
        lambda t: t.partition(".")[0],
        lambda t: "",
    ],
    ids=["wrong-secret", "wrong-id", "no-secret", "empty"],
)
def test_bad_tokens_are_not_served_from_memory(store: Store, mangle: Any) -> None:
    tokens = TokenStore(store)
    token, _ = tokens.issue("User", "", "admin")
    assert tokens.verify(token) is not None
    assert tokens.cached(mangle(token)) is None
    assert tokens.verify(mangle(token)) is None


def test_expired_tokens_are_not_served_from_memory(store: Store) -> None:
    tokens = TokenStore(store)
    expired, _ = tokens.issue("Join", "", "join", ttl_seconds=-1)
    live, _ = tokens.issue("Join", "", "join", ttl_seconds=3600)
    assert tokens.verify(live) is not None  # reads every live token
    assert tokens.cached(live) is not None
    assert tokens.cached(expired) is None
    assert tokens.verify(expired) is None


def test_a_revocation_here_takes_effect_at_once(store: Store) -> None:
    tokens = TokenStore(store)
    token, record = tokens.issue("ServiceAccount", "team", "ci")
    assert tokens.verify(token) is not None and tokens.cached(token) is not None
    tokens.revoke(record.id)
    assert tokens.cached(token) is None
    assert tokens.verify(token) is None
    other, _ = tokens.issue("Node", "", "n1")
    assert tokens.verify(other) is not None
    tokens.revoke_subject("Node", "", "n1")
    assert tokens.cached(other) is None and tokens.verify(other) is None


def test_a_revocation_elsewhere_is_seen_within_the_cache_time(store: Store, clock: Clock) -> None:
    here, there = TokenStore(store, clock=clock), TokenStore(store, clock=clock)  # two replicas
    token, record = here.issue("Node", "", "n1")
    assert here.verify(token) is not None
    there.revoke(record.id)
    assert here.cached(token) is not None  # trusted a little longer, as documented
    clock.now += CACHE_SECONDS + 1
    assert here.cached(token) is None
    assert here.verify(token) is None


def test_a_new_token_from_elsewhere_is_read_alone(store: Store) -> None:
    here, there = TokenStore(store), TokenStore(store)
    assert here.verify(here.issue("User", "", "admin")[0]) is not None  # read everything now
    token, record = there.issue("Node", "", "n9")
    assert here.cached(token) is None  # not among those read
    assert here.verify(token) == record
    assert here.cached(token) == record


def test_refreshed_on_a_timer_requests_never_find_it_stale(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = TokenStore(store, clock=clock)
    token = tokens.issue("Node", "", "n1")[0]
    other = TokenStore(store, clock=clock)  # another replica, refreshing on its timer
    other.refresh()
    reads = count_reads(store, monkeypatch)
    for _ in range(10):
        clock.now += CACHE_SECONDS / 2.5
        other.refresh()
        assert other.cached(token) is not None
    assert len(reads) == 10  # the timer's reads, none for the requests


def test_requests_arriving_together_on_a_stale_copy_read_it_once(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = TokenStore(store, clock=clock)
    issued = [tokens.issue("Node", "", f"n{i}")[0] for i in range(20)]
    stale = TokenStore(store, clock=clock)
    reads = count_reads(store, monkeypatch)
    with ThreadPoolExecutor(20) as pool:
        records = list(pool.map(stale.verify, issued))
    assert all(record is not None for record in records)
    assert len(reads) == 1
