"""The Store on both backends: SQLite (a file) and PostgreSQL (a fresh database per test)."""

import hashlib
import multiprocessing
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory

from shoal.errors import AlreadyExists, Conflict, Gone, NotFound
from shoal.model.meta import parse_iso
from shoal.scheduler.binder import AGENT_FINALIZER, bind
from shoal.scheduler.placement import Allocatable
from shoal.store.store import MIGRATIONS, Store, Usage
from shoal.store.tokens import TokenStore

Obj = dict[str, Any]
GI = 2**30


@pytest.fixture
def store(open_store: Callable[..., Store]) -> Store:
    return open_store()


def namespace(name: str, **labels: str) -> Obj:
    return {
        "apiVersion": "shoal.dev/v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {},
        "status": {"phase": "Active"},
    }


def config(name: str, ns: str = "default") -> Obj:
    return {
        "apiVersion": "shoal.dev/v1",
        "kind": "VMConfig",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"image": "ubuntu"},
    }


def rv_of(obj: Obj) -> int:
    return int(obj["metadata"]["resourceVersion"])


def run_threads(count: int, target: Callable[[int], None]) -> None:
    """Start `count` threads at once (behind a barrier) and re-raise the first failure."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            target(index)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a writer thread hung"
    if errors:
        raise errors[0]


# -- create, get, list ---------------------------------------------------------------------


def test_create_assigns_server_metadata(store: Store) -> None:
    created = store.create(namespace("team-a"))
    meta = created["metadata"]
    assert uuid.UUID(meta["uid"]).version == 4
    assert meta["resourceVersion"] == "1"
    assert meta["generation"] == 1
    parse_iso(meta["creationTimestamp"])  # the store's own timestamp format
    assert store.get("Namespace", "", "team-a") == created

    other = store.create(namespace("team-b"))
    assert other["metadata"]["uid"] != meta["uid"]
    assert other["metadata"]["resourceVersion"] == "2"


def test_create_duplicate_is_already_exists(store: Store) -> None:
    store.create(config("web"))
    with pytest.raises(AlreadyExists) as caught:
        store.create(config("web"))
    assert caught.value.code == 409
    assert store.current_rv() == 1  # the failed create wrote nothing
    # the same name is free in another namespace and for another kind
    store.create(config("web", ns="other"))
    store.create(namespace("web"))
    assert store.count("VMConfig") == 2


def test_get_missing_is_not_found(store: Store) -> None:
    store.create(config("web"))
    with pytest.raises(NotFound) as caught:
        store.get("VMConfig", "default", "nope")
    assert caught.value.code == 404
    with pytest.raises(NotFound):
        store.get("VMConfig", "other", "web")
    with pytest.raises(NotFound):
        store.get("Namespace", "", "web")
    with pytest.raises(NotFound):
        store.mutate("VMConfig", "default", "nope", lambda obj: obj)
    with pytest.raises(NotFound):
        store.delete("VMConfig", "default", "nope")


def test_list_order_and_paging(store: Store) -> None:
    keys = [("b", "x2"), ("a", "z"), ("b", "x10"), ("a", "a-1"), ("c", "m"), ("a", "b")]
    for ns, name in keys:
        store.create(config(name, ns))
    store.create(namespace("not-a-config"))

    items, list_rv = store.list_objects("VMConfig")
    listed = [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in items]
    assert listed == sorted(keys)
    assert list_rv == store.current_rv() == len(keys) + 1

    only_a, _ = store.list_objects("VMConfig", "a")
    assert [o["metadata"]["name"] for o in only_a] == ["a-1", "b", "z"]

    pages: list[list[tuple[str, str]]] = []
    after: tuple[str, str] | None = None
    while True:
        page, _ = store.list_objects("VMConfig", after=after, batch=2)
        if not page:
            break
        pages.append([(o["metadata"]["namespace"], o["metadata"]["name"]) for o in page])
        after = pages[-1][-1]
    assert [len(p) for p in pages] == [2, 2, 2]
    assert [key for page in pages for key in page] == sorted(keys)

    page, _ = store.list_objects("VMConfig", "a", after=("a", "a-1"), batch=5)
    assert [o["metadata"]["name"] for o in page] == ["b", "z"]


def test_resource_version_is_one_counter_across_kinds(store: Store) -> None:
    versions = [
        rv_of(store.create(namespace("ns1"))),
        rv_of(store.create(config("c1"))),
        rv_of(store.mutate("Namespace", "", "ns1", lambda o: o | {"spec": {}})),
        rv_of(store.create(config("c2", ns="other"))),
        rv_of(store.mutate("VMConfig", "default", "c1", lambda o: o)),
        rv_of(store.delete("VMConfig", "other", "c2")[0]),
    ]
    assert versions == list(range(1, 7))
    assert store.current_rv() == 6
    assert [c.rv for c in store.changes_since(0)] == versions


# -- compare-and-swap ----------------------------------------------------------------------


def _set_label(key: str, value: str) -> Callable[[Obj], Obj]:
    def change(obj: Obj) -> Obj:
        obj["metadata"].setdefault("labels", {})[key] = value
        return obj

    return change


def test_mutate_with_current_version_succeeds(store: Store) -> None:
    created = store.create(config("web"))
    updated = store.mutate(
        "VMConfig",
        "default",
        "web",
        _set_label("tier", "front"),
        expect_rv=created["metadata"]["resourceVersion"],
        expect_uid=created["metadata"]["uid"],
    )
    assert rv_of(updated) == rv_of(created) + 1
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    assert store.get("VMConfig", "default", "web") == updated
    assert store.get("VMConfig", "default", "web")["metadata"]["labels"] == {"tier": "front"}


def test_mutate_with_stale_version_conflicts_and_changes_nothing(store: Store) -> None:
    created = store.create(config("web"))
    stale = created["metadata"]["resourceVersion"]
    store.mutate("VMConfig", "default", "web", _set_label("a", "1"))
    before = store.get("VMConfig", "default", "web")
    rv_before = store.current_rv()

    with pytest.raises(Conflict) as caught:
        store.mutate("VMConfig", "default", "web", _set_label("a", "2"), expect_rv=stale)
    assert caught.value.code == 409
    assert store.get("VMConfig", "default", "web") == before
    assert store.current_rv() == rv_before
    assert [c.rv for c in store.changes_since(rv_before - 1)] == [rv_before]

    with pytest.raises(Conflict):
        store.mutate(
            "VMConfig", "default", "web", _set_label("a", "3"), expect_uid=str(uuid.uuid4())
        )
    with pytest.raises(Conflict):
        store.delete("VMConfig", "default", "web", expect_rv=stale)
    assert store.get("VMConfig", "default", "web") == before


def test_mutate_returning_none_writes_nothing(store: Store) -> None:
    created = store.create(config("web"))
    calls: list[int] = []
    store.add_listener(calls.append)
    assert store.mutate("VMConfig", "default", "web", lambda obj: None) == created
    assert store.current_rv() == rv_of(created)
    assert calls == []
    store.mutate("VMConfig", "default", "web", _set_label("a", "1"))
    assert calls == [rv_of(created) + 1]


def test_listeners_hear_commits_not_failures(store: Store) -> None:
    heard: list[int] = []
    store.add_listener(heard.append)
    store.create(config("web"))
    with pytest.raises(AlreadyExists):
        store.create(config("web"))
    with pytest.raises(Conflict):
        store.mutate("VMConfig", "default", "web", _set_label("a", "1"), expect_rv="999")
    store.remove_listener(heard.append)
    store.create(config("api"))
    assert heard == [1]


# -- delete and finalizers -----------------------------------------------------------------


def test_delete_without_finalizers_removes_and_logs_tombstone(store: Store) -> None:
    created = store.create(config("web"))
    _, gone = store.delete("VMConfig", "default", "web")
    assert gone is True
    with pytest.raises(NotFound):
        store.get("VMConfig", "default", "web")
    last = store.changes_since(rv_of(created))
    assert [(c.type, c.name, c.rv) for c in last] == [("DELETED", "web", rv_of(created) + 1)]
    assert last[0].object["metadata"]["uid"] == created["metadata"]["uid"]
    assert last[0].object["metadata"]["resourceVersion"] == str(last[0].rv)


def test_delete_with_finalizers_marks_then_last_finalizer_removes(store: Store) -> None:
    obj = config("web")
    obj["metadata"]["finalizers"] = ["a.dev/one", "b.dev/two"]
    created = store.create(obj)

    marked, gone = store.delete("VMConfig", "default", "web")
    assert gone is False
    assert marked["metadata"]["deletionTimestamp"]
    stored = store.get("VMConfig", "default", "web")
    assert stored["metadata"]["deletionTimestamp"] == marked["metadata"]["deletionTimestamp"]
    assert rv_of(stored) == rv_of(created) + 1

    # deleting again while marked changes nothing
    _, gone = store.delete("VMConfig", "default", "web")
    assert gone is False
    assert store.current_rv() == rv_of(stored)

    def drop(finalizer: str) -> Callable[[Obj], Obj]:
        def change(o: Obj) -> Obj:
            o["metadata"]["finalizers"].remove(finalizer)
            return o

        return change

    still = store.mutate("VMConfig", "default", "web", drop("a.dev/one"))
    assert store.get("VMConfig", "default", "web") == still  # one finalizer left: still there

    tombstone = store.mutate("VMConfig", "default", "web", drop("b.dev/two"))
    with pytest.raises(NotFound):
        store.get("VMConfig", "default", "web")
    log = store.changes_since(rv_of(created) - 1)
    assert [c.type for c in log] == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]
    assert log[-1].rv == rv_of(tombstone)
    assert log[-1].object["metadata"]["deletionTimestamp"]
    assert log[-1].object["metadata"]["finalizers"] == []


def test_delete_calls_on_mark_once(store: Store) -> None:
    obj = namespace("team")
    obj["metadata"]["finalizers"] = ["shoal.dev/namespace"]
    store.create(obj)
    marks: list[Obj] = []

    def on_mark(o: Obj) -> None:
        marks.append(o)
        o["status"]["phase"] = "Terminating"

    store.delete("Namespace", "", "team", on_mark=on_mark)
    store.delete("Namespace", "", "team", on_mark=on_mark)
    assert len(marks) == 1
    assert store.get("Namespace", "", "team")["status"]["phase"] == "Terminating"


# -- change log and compaction -------------------------------------------------------------


def test_changes_since_replays_in_order_with_tombstones(store: Store) -> None:
    store.create(config("a"))
    store.create(config("b"))
    store.mutate("VMConfig", "default", "a", _set_label("v", "2"))
    store.delete("VMConfig", "default", "b")
    store.create(namespace("ns"))

    log = store.changes_since(0)
    assert [(c.rv, c.type, c.kind, c.name) for c in log] == [
        (1, "ADDED", "VMConfig", "a"),
        (2, "ADDED", "VMConfig", "b"),
        (3, "MODIFIED", "VMConfig", "a"),
        (4, "DELETED", "VMConfig", "b"),
        (5, "ADDED", "Namespace", "ns"),
    ]
    assert [c.namespace for c in log] == ["default"] * 4 + [""]
    for change in log:
        assert change.object["metadata"]["resourceVersion"] == str(change.rv)
    assert log[2].object["metadata"]["labels"] == {"v": "2"}
    assert [c.rv for c in store.changes_since(3)] == [4, 5]
    assert [c.rv for c in store.changes_since(1, limit=2)] == [2, 3]
    assert store.changes_since(5) == []


def test_compaction_makes_old_versions_gone(open_store: Callable[..., Store]) -> None:
    store = open_store(change_retention=2)
    for i in range(6):
        store.create(config(f"c{i}"))
    assert store.compact() == 4
    with pytest.raises(Gone) as caught:
        store.changes_since(3)
    assert caught.value.code == 410
    with pytest.raises(Gone):
        store.changes_since(0)
    assert [c.rv for c in store.changes_since(4)] == [5, 6]

    # a Store with a longer retention never moves the compaction point back
    roomy = open_store(change_retention=100)
    assert roomy.compact() == 0
    with pytest.raises(Gone):
        roomy.changes_since(3)
    assert [c.rv for c in roomy.changes_since(4)] == [5, 6]


# -- migrations ----------------------------------------------------------------------------


def migrations_head() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def test_migrations_on_fresh_database_and_second_store(
    store_url: str, open_store: Callable[..., Store]
) -> None:
    first = open_store()
    inspector = sa.inspect(first.engine)
    assert {"counters", "objects", "changes", "tokens", "alembic_version"} <= set(
        inspector.get_table_names()
    )
    with first.engine.connect() as conn:
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    assert version == migrations_head()
    first.create(config("web"))

    second = open_store()
    assert second.get("VMConfig", "default", "web")["metadata"]["resourceVersion"] == "1"
    assert rv_of(second.create(config("api"))) == 2
    assert rv_of(first.mutate("VMConfig", "default", "api", _set_label("a", "b"))) == 3
    assert [c.rv for c in first.changes_since(0)] == [1, 2, 3]


def _open_store_in_child(url: str, go: Any, results: Any) -> None:
    try:
        sa.create_engine(url).connect().close()  # warm the driver up before the start line
        go.wait(timeout=60)
        Store(url).close()
        results.put("ok")
    except BaseException as error:
        results.put(f"{type(error).__name__}: {str(error).splitlines()[0]}")


@pytest.mark.postgres
def test_replicas_starting_at_once_on_a_fresh_database(postgres_db: str) -> None:
    """Controller replicas (separate processes) starting together on a fresh database must all
    come up: the first migration may run only once, and the others must wait for it.

    PostgreSQL only: several replicas on one database is the HA setup; SQLite has one controller.
    """
    store_url = postgres_db
    context = multiprocessing.get_context("fork")  # children start with everything imported
    go, results = context.Barrier(4), context.Queue()
    procs = [
        context.Process(target=_open_store_in_child, args=(store_url, go, results))
        for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    try:
        outcomes = [results.get(timeout=120) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    failed = [outcome for outcome in outcomes if outcome != "ok"]
    assert not failed, f"{len(failed)} of {len(procs)} replicas failed to start: {failed}"
    store = Store(store_url)
    try:
        assert rv_of(store.create(config("web"))) == 1
    finally:
        store.close()


# -- node usage ----------------------------------------------------------------------------


def _bound(vm: Obj, node: str) -> Obj:
    vm["spec"]["nodeName"] = node
    return vm


def test_node_usage_sums_vm_requests_by_node(store: Store, make_vm: Callable[..., Obj]) -> None:
    store.create(_bound(make_vm("a1", cpu=2, memory="4Gi", disk="20Gi"), "node-a"))
    store.create(_bound(make_vm("a2", "other", cpu=1, memory="512Mi"), "node-a"))
    store.create(_bound(make_vm("b1", cpu=4, memory="8Gi", disk="100Gi"), "node-b"))
    store.create(make_vm("pending", cpu=8, memory="32Gi"))
    store.create(config("not-a-vm"))

    with store.tx() as tx:
        assert tx.node_usage("node-a") == Usage(3, 4 * GI + 512 * 2**20, 30 * GI, 2)
        assert tx.node_usage("node-b") == Usage(4, 8 * GI, 100 * GI, 1)
        assert tx.node_usage("node-c") == Usage()

    on_a, _ = store.list_objects("VirtualMachine", node_name="node-a")
    assert sorted(o["metadata"]["name"] for o in on_a) == ["a1", "a2"]

    # the index follows updates and deletes
    def grow(o: Obj) -> Obj:
        o["spec"]["cpu"] = 6
        return o

    store.mutate("VirtualMachine", "default", "a1", grow)
    store.delete("VirtualMachine", "other", "a2")
    with store.tx() as tx:
        assert tx.node_usage("node-a") == Usage(6, 4 * GI, 20 * GI, 1)


# -- concurrency ---------------------------------------------------------------------------


def test_concurrent_mutations_lose_no_update(store: Store) -> None:
    threads, rounds = 8, 50
    created = store.create(config("counter"))
    start = rv_of(created)

    def increment(o: Obj) -> Obj:
        labels = o["metadata"].setdefault("labels", {})
        labels["n"] = str(int(labels.get("n", "0")) + 1)
        return o

    def writer(index: int) -> None:
        for _ in range(rounds):
            store.mutate("VMConfig", "default", "counter", increment)
            if index == 0:
                store.create(config(f"side-{uuid.uuid4().hex[:8]}", ns="side"))

    run_threads(threads, writer)

    final = store.get("VMConfig", "default", "counter")
    assert final["metadata"]["labels"]["n"] == str(threads * rounds)
    log = store.changes_since(start)
    rvs = [c.rv for c in log]
    assert rvs == list(range(start + 1, start + 1 + threads * rounds + rounds))
    assert store.current_rv() == rvs[-1]
    counts = [
        int(c.object["metadata"]["labels"]["n"]) for c in log if c.name == "counter"
    ]  # the log shows each increment once, in order
    assert counts == list(range(1, threads * rounds + 1))


def test_concurrent_creates_of_one_name_one_wins(store: Store) -> None:
    """Racing creates of the same object: one succeeds, and every other one gets the same
    AlreadyExists a lone writer would (a 409 naming the object, not a database error)."""
    outcomes: list[str] = []
    errors: list[AlreadyExists] = []
    lock = threading.Lock()

    def creator(_: int) -> None:
        try:
            store.create(config("web"))
            outcome = "created"
        except AlreadyExists as error:
            outcome = "exists"
            with lock:
                errors.append(error)
        with lock:
            outcomes.append(outcome)

    run_threads(8, creator)
    assert sorted(outcomes) == ["created"] + ["exists"] * 7
    assert store.count("VMConfig") == 1
    with pytest.raises(AlreadyExists) as lone:
        store.create(config("web"))
    for error in errors:
        assert (error.message, error.details) == (lone.value.message, lone.value.details)


@pytest.mark.parametrize(
    ("node_size", "vm_size", "fits"),
    [
        ({"cpu": 8, "memory": 64 * GI, "vms": 100}, {"cpu": 2, "memory": "1Gi"}, 4),
        ({"cpu": 64, "memory": 10 * GI, "vms": 100}, {"cpu": 1, "memory": "2Gi"}, 5),
        ({"cpu": 64, "memory": 64 * GI, "vms": 3}, {"cpu": 1, "memory": "1Gi"}, 3),
    ],
    ids=["cpu-bound", "memory-bound", "vm-limit"],
)
def test_racing_binds_never_overcommit_a_node(
    store: Store,
    make_node: Callable[..., Obj],
    make_vm: Callable[..., Obj],
    node_size: dict[str, int],
    vm_size: dict[str, Any],
    fits: int,
) -> None:
    node = store.create(make_node("host-1", **node_size))
    alloc = Allocatable.of(node)
    contenders = fits * 3
    vms = [store.create(make_vm(f"vm-{i:02d}", **vm_size)) for i in range(contenders)]
    start = store.current_rv()
    results: dict[str, str | None] = {}
    lock = threading.Lock()

    def binder(index: int) -> None:
        meta = vms[index]["metadata"]
        reason = bind(store, "default", meta["name"], meta["resourceVersion"], "host-1")
        with lock:
            results[meta["name"]] = reason

    run_threads(contenders, binder)

    won = sorted(name for name, reason in results.items() if reason is None)
    assert len(won) == fits, results
    assert all(
        reason is not None and reason.startswith(("insufficient", "at their"))
        for reason in results.values()
        if reason is not None
    )
    with store.tx() as tx:
        usage = tx.node_usage("host-1")
    assert usage.vms == fits
    assert usage.cpu <= alloc.cpu and usage.memory <= alloc.memory and usage.vms <= alloc.vms
    for name in won:
        vm = store.get("VirtualMachine", "default", name)
        assert vm["spec"]["nodeName"] == "host-1"
        assert vm["status"]["phase"] == "Scheduled"
        assert AGENT_FINALIZER in vm["metadata"]["finalizers"]

    # replay the log: the node never held more than it has room for, at any version
    bound: set[str] = set()
    for change in store.changes_since(start):
        if change.kind != "VirtualMachine":
            continue  # the scheduler's Events
        assert change.type == "MODIFIED"
        assert change.object["spec"]["nodeName"] == "host-1"
        bound.add(change.name)
        assert len(bound) <= fits
    assert sorted(bound) == won


def test_bind_refuses_stale_or_bound_vms(
    store: Store, make_node: Callable[..., Obj], make_vm: Callable[..., Obj]
) -> None:
    store.create(make_node("host-1"))
    vm = store.create(make_vm("vm"))
    rv = vm["metadata"]["resourceVersion"]
    assert bind(store, "default", "vm", rv, "host-9") == "node gone"
    assert bind(store, "default", "vm", "12345", "host-1") == "vm changed"
    assert bind(store, "default", "vm", rv, "host-1") is None
    fresh = store.get("VirtualMachine", "default", "vm")
    assert bind(store, "default", "vm", fresh["metadata"]["resourceVersion"], "host-1") == (
        "vm changed"
    )
    with store.tx() as tx:
        assert tx.node_usage("host-1").vms == 1


# -- tokens --------------------------------------------------------------------------------


def test_tokens_issue_verify_and_store_only_a_hash(store: Store) -> None:
    tokens = TokenStore(store)
    token, record = tokens.issue("ServiceAccount", "team-a", "ci", ttl_seconds=3600)
    token_id, _, secret = token.partition(".")
    assert token_id == record.id and len(secret) >= 43  # 32 random bytes, base64url
    assert (record.subject_kind, record.subject_namespace, record.subject_name) == (
        "ServiceAccount",
        "team-a",
        "ci",
    )
    assert record.expires_at is not None and record.expires_at > record.created_at
    assert tokens.verify(token) == record
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM tokens")).all()
    assert len(rows) == 1
    assert all(secret not in str(value) for value in rows[0])
    assert hashlib.sha256(secret.encode()).hexdigest() in rows[0]

    other, _ = tokens.issue("User", "", "admin")
    assert other != token
    assert tokens.get(record.id) == record
    assert tokens.get("nope") is None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.partition(".")[0] + ".wrong-secret",
        lambda t: "0000000000000000." + t.partition(".")[2],
        lambda t: t.partition(".")[0],
        lambda t: t.replace(".", ""),
        lambda t: "." + t.partition(".")[2],
        lambda t: "",
        lambda t: t + "x" * 200,
    ],
    ids=["wrong-secret", "wrong-id", "no-secret", "no-dot", "no-id", "empty", "too-long"],
)
def test_tokens_verify_rejects_bad_tokens(store: Store, mangle: Callable[[str], str]) -> None:
    tokens = TokenStore(store)
    token, _ = tokens.issue("User", "", "admin")
    assert tokens.verify(mangle(token)) is None
    assert tokens.verify(token) is not None


def test_tokens_expire(store: Store) -> None:
    tokens = TokenStore(store)
    expired, _ = tokens.issue("Join", "", "join", ttl_seconds=-1)
    forever, record = tokens.issue("Node", "", "host-1")
    assert record.expires_at is None
    assert tokens.verify(expired) is None
    assert tokens.verify(forever) is not None


def test_tokens_list_and_revoke(store: Store) -> None:
    tokens = TokenStore(store)
    first = tokens.issue("ServiceAccount", "team-a", "ci")[1]
    second = tokens.issue("ServiceAccount", "team-a", "ci")[1]
    third = tokens.issue("ServiceAccount", "team-a", "deploy")[1]
    tokens.issue("ServiceAccount", "team-b", "ci")
    assert [r.id for r in tokens.list("ServiceAccount", "team-a", "ci")] == [first.id, second.id]
    assert {r.id for r in tokens.list("ServiceAccount", "team-a")} == {
        first.id,
        second.id,
        third.id,
    }
    assert tokens.revoke(first.id) is True
    assert tokens.revoke(first.id) is False
    assert tokens.get(first.id) is None
    assert tokens.revoke_subject("ServiceAccount", "team-a", "ci") == 1
    assert [r.id for r in tokens.list("ServiceAccount", "team-a")] == [third.id]
    assert len(tokens.list("ServiceAccount", "team-b")) == 1
