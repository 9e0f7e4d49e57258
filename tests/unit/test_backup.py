"""Backup and restore of a Store (shoal.store.backup) on SQLite and PostgreSQL: a round trip gives
the same rows, tokens that still authenticate and Secrets that still open; versions move on past
the backup's and older ones are Gone; a backup taken under writes is a snapshot; and restore
refuses what it cannot load whole, leaving the store as it was."""

import contextlib
import io
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from builders import build_node, build_vm
from shoal import jsoncodec
from shoal.errors import Gone, NotFound
from shoal.store import backup as backup_module
from shoal.store import lease
from shoal.store.backup import BackupError, backup, restore
from shoal.store.sealing import Sealer
from shoal.store.store import Store
from shoal.store.tokens import TokenStore

Obj = dict[str, Any]
KEY = os.urandom(32)
PASSWORD = "aHVudGVyMi1iYWNrdXA="  # base64 of a value searched for in the backup


def namespace(name: str) -> Obj:
    return {
        "apiVersion": "shoal.dev/v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {}},
        "spec": {},
        "status": {"phase": "Active"},
    }


def config(name: str, image: str = "ubuntu") -> Obj:
    return {
        "apiVersion": "shoal.dev/v1",
        "kind": "VMConfig",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"image": image},
    }


def secret(name: str) -> Obj:
    return {
        "apiVersion": "shoal.dev/v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default", "labels": {"team": "ios"}},
        "type": "opaque",
        "data": {"password": PASSWORD},
    }


@pytest.fixture
def target_url(store_url: str, request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A second, empty database on the backend of store_url, to restore into."""
    if store_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path}/target.db"
        return
    server = request.getfixturevalue("postgres_server")
    name = f"shoal_target_{uuid.uuid4().hex[:12]}"
    url = server.create_database(name)
    try:
        yield url
    finally:
        server.drop_database(name)


@pytest.fixture
def opened() -> Iterator[Callable[..., Store]]:
    """Open Stores on any URL; all are closed at the end."""
    stores: list[Store] = []

    def open_(url: str, **kwargs: Any) -> Store:
        store = Store(url, **kwargs)
        stores.append(store)
        return store

    yield open_
    for store in stores:
        store.close()


def rows(store: Store) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every objects row (index columns too) and every tokens row, in key order."""
    with store.read_engine.connect() as conn:
        objects = conn.execute(
            sa.text(
                "SELECT kind, namespace, name, uid, rv, body, node_name, req_cpu, req_memory, "
                "req_disk, guest_os, heartbeat FROM objects ORDER BY kind, namespace, name"
            )
        ).all()
        tokens = conn.execute(sa.text("SELECT * FROM tokens ORDER BY id")).all()
    return [tuple(row) for row in objects], [tuple(row) for row in tokens]


def populate(store: Store) -> tuple[TokenStore, list[str]]:
    """A few objects of every indexed sort, some history, and two tokens."""
    store.create(namespace("default"))
    store.create(config("small"))
    store.mutate("VMConfig", "default", "small", lambda c: {**c, "spec": {"image": "debian"}})
    store.create(config("gone"))
    store.delete("VMConfig", "default", "gone")
    store.create(build_node("n1"))
    vm = build_vm("build-1", cpu=2, memory="4Gi")
    vm["spec"]["nodeName"] = "n1"
    store.create(vm)
    store.create(build_vm("queued"))
    store.create(secret("deploy-key"))
    tokens = TokenStore(store)
    issued = [tokens.issue("User", "", "admin")[0], tokens.issue("ServiceAccount", "ci", "bot")[0]]
    return tokens, issued


def take(store: Store, **kwargs: Any) -> tuple[bytes, backup_module.BackupInfo]:
    out = io.BytesIO()
    info = backup(store, out, **kwargs)
    return out.getvalue(), info


def lines(data: bytes) -> list[Obj]:
    return [jsoncodec.loads(line) for line in data.splitlines()]


def test_backup_then_restore_gives_the_same_objects_tokens_and_secrets(
    store_url: str,
    target_url: str,
    opened: Callable[..., Store],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backup_module, "PROGRESS_EVERY", 3)
    sealer = Sealer(KEY, "test key")
    source = opened(store_url, sealer=sealer)
    source_tokens, issued = populate(source)
    shown: list[int] = []
    data, info = take(source, progress=shown.append)
    assert shown == [3, 6, 9]  # lines written: the header, 6 objects, 2 tokens, the end

    records = lines(data)
    assert records[0]["format"] == "shoal-backup" and records[0]["version"] == 1
    assert records[0]["resourceVersion"] == source.current_rv() == info.resource_version
    assert records[0]["encryptionKeys"] == [sealer.key_id] == list(info.encryption_keys)
    assert records[-1] == {"end": {"objects": 6, "tokens": 2}}
    assert (info.objects, info.tokens) == (6, 2)
    assert PASSWORD.encode() not in data  # the Secret stays sealed in the file

    target = opened(target_url, sealer=Sealer(KEY, "same key"))
    done: list[int] = []
    restored = restore(target, io.BytesIO(data), done.append)
    assert (restored.objects, restored.tokens) == (6, 2) and done == [3, 6]
    assert restored.backup_version == info.resource_version
    assert restored.dialect == source.dialect
    assert restored.resource_version == info.resource_version + backup_module.DEFAULT_BUMP

    assert rows(target) == rows(source)  # bodies, versions, uids, index columns, token hashes
    assert target.get("Secret", "default", "deploy-key")["data"] == {"password": PASSWORD}
    for token in issued:
        assert TokenStore(target).verify(token) == source_tokens.verify(token)
    assert lease.read_all(target)[0] is not None  # the target's leader lease row stays

    # versions move on past the backup's; the change log starts there
    assert target.current_rv() == restored.resource_version
    with pytest.raises(Gone):
        target.changes_since(info.resource_version)
    with pytest.raises(Gone):
        target.changes_since(3)
    created = target.create(config("after"))
    assert int(created["metadata"]["resourceVersion"]) == restored.resource_version + 1
    assert [c.name for c in target.changes_since(restored.resource_version)] == ["after"]
    listed, _ = target.list_objects("VirtualMachine", node_name="n1")
    assert [vm["metadata"]["name"] for vm in listed] == ["build-1"]


def test_restore_without_a_bump_goes_on_from_the_backups_version(
    store_url: str, target_url: str, opened: Callable[..., Store]
) -> None:
    source = opened(store_url)
    for name in ("a", "b", "c"):
        source.create(config(name))
    data, info = take(source)
    target = opened(target_url)
    assert restore(target, io.BytesIO(data), bump=0).resource_version == info.resource_version
    assert target.changes_since(info.resource_version) == []  # an up-to-date watcher goes on
    with pytest.raises(Gone):
        target.changes_since(info.resource_version - 1)
    assert target.create(config("d"))["metadata"]["resourceVersion"] == str(
        info.resource_version + 1
    )


def test_a_backup_taken_while_another_thread_writes_is_a_snapshot(
    open_store: Callable[..., Store],
) -> None:
    store = open_store()
    for i in range(200):
        store.create(config(f"c{i}"))
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        i = 0
        try:
            while not stop.is_set():
                i += 1
                store.create(config(f"new{i}"))
                with contextlib.suppress(NotFound):
                    store.mutate(
                        "VMConfig",
                        "default",
                        f"c{i % 200}",
                        lambda c: {**c, "spec": {"image": "x"}},
                    )
                with contextlib.suppress(NotFound):
                    store.delete("VMConfig", "default", f"c{(i * 7) % 200}")
        except BaseException as error:
            errors.append(error)

    written: list[tuple[int, int]] = []  # (lines written, the store's version) as it goes

    class Held(io.BytesIO):
        """Output whose first write waits until the writer has committed 25 more changes: the
        backup's snapshot is taken by then, so the store has surely moved on past it."""

        def write(self, data: Any) -> int:
            if not written:
                first = store.current_rv()
                deadline = time.monotonic() + 60
                while store.current_rv() <= first + 25 and time.monotonic() < deadline:
                    stop.wait(0.01)
            written.append((len(written), store.current_rv()))
            return super().write(data)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        out = Held()
        info = backup(store, out, batch=10)
    finally:
        stop.set()
        writer.join(timeout=60)
    assert not errors and not writer.is_alive()

    top = info.resource_version
    # the store moved on while the backup still had objects to read and write
    assert any(rv > top + 20 and count < info.objects for count, rv in written)
    # what the backup holds is the store at its version: the change log replayed up to it
    expected: dict[tuple[str, str, str], tuple[int, str]] = {}
    for change in store.changes_since(0, limit=10**7):
        if change.rv > top:
            break
        key = (change.kind, change.namespace, change.name)
        if change.type == "DELETED":
            del expected[key]
        else:
            expected[key] = (change.rv, change.body)
    records = lines(out.getvalue())
    backed = {
        (o["kind"], o["namespace"], o["name"]): (o["rv"], o["body"])
        for o in (record["object"] for record in records if "object" in record)
    }
    assert backed == expected
    assert len(backed) == info.objects and records[-1]["end"]["objects"] == info.objects
    assert max(rv for rv, _ in backed.values()) <= top


def test_restore_refuses_what_is_not_a_whole_backup_and_changes_nothing(
    store_url: str, target_url: str, opened: Callable[..., Store]
) -> None:
    source = opened(store_url)
    for name in ("a", "b", "c"):
        source.create(config(name))
    TokenStore(source).issue("User", "", "admin")
    data, _ = take(source)
    first, *middle, end = data.splitlines(keepends=True)
    future = jsoncodec.dumps_bytes({**jsoncodec.loads(first), "version": 2}) + b"\n"
    four = jsoncodec.dumps_bytes({"end": {"objects": 4, "tokens": 1}}) + b"\n"
    cases = {
        b"": "the file is empty",
        b"PK\x03\x04 a zip file\n": "not a shoal backup",
        b'{"kind": "VMConfig"}\n': "not a shoal backup",
        future + b"".join(middle) + end: "format version 2",
        first + b"".join(middle): "no end record: the file is truncated",
        data[: len(data) - len(end) - 10]: "truncated or damaged",
        first + b"".join(middle[1:]) + end: "counts 3 objects and 1 tokens, but the file holds 2",
        data + middle[0]: "follows the backup's end record",
        first + middle[0] + middle[0] + b"".join(middle[1:]) + four: "refused a row",
    }
    target = opened(target_url)
    for text, message in cases.items():
        with pytest.raises(BackupError, match=message):
            restore(target, io.BytesIO(text))
        assert rows(target) == ([], []) and target.current_rv() == 0


def test_restore_into_a_store_that_holds_objects_needs_force(
    store_url: str, target_url: str, opened: Callable[..., Store]
) -> None:
    source = opened(store_url)
    source.create(config("from-backup"))
    data, info = take(source)
    target = opened(target_url)
    for i in range(5):
        target.create(config(f"old{i}"))
    old_token, _ = TokenStore(target).issue("User", "", "admin")
    before = rows(target)
    with pytest.raises(BackupError, match=r"already holds objects.*--force"):
        restore(target, io.BytesIO(data))
    assert rows(target) == before

    restored = restore(target, io.BytesIO(data), force=True)
    assert [row[2] for row in rows(target)[0]] == ["from-backup"]
    assert TokenStore(target).verify(old_token) is None  # the target's tokens went too
    # above the target's own versions too, which its clients may have seen
    assert restored.resource_version == 5 + backup_module.DEFAULT_BUMP > info.resource_version
    with pytest.raises(Gone):
        target.changes_since(5)


def test_a_failed_restore_leaves_the_store_as_it_was(
    store_url: str,
    target_url: str,
    opened: Callable[..., Store],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = opened(store_url)
    for i in range(10):
        source.create(config(f"c{i}"))
    data, _ = take(source)
    *body, end = data.splitlines(keepends=True)
    damaged = b"".join(body[:8]) + b'{"object": {"kind": "VMConfig"}}\n' + b"".join(body[8:]) + end
    target = opened(target_url)
    target.create(config("kept"))
    TokenStore(target).issue("User", "", "admin")
    before, rv = rows(target), target.current_rv()
    monkeypatch.setattr(backup_module, "BATCH", 2)  # rows are written before the damage is read
    for text in (damaged, b"".join(body)):
        with pytest.raises(BackupError):
            restore(target, io.BytesIO(text), force=True)
        assert rows(target) == before and target.current_rv() == rv
        assert [c.name for c in target.changes_since(0)] == ["kept"]


def test_restore_refuses_secrets_sealed_with_another_key(
    store_url: str, target_url: str, opened: Callable[..., Store]
) -> None:
    sealer = Sealer(KEY, "the old key")
    source = opened(store_url, sealer=sealer)
    source.create(secret("s"))
    data, _ = take(source)

    other = Sealer(os.urandom(32), "/etc/shoal/other.key")
    with pytest.raises(BackupError) as caught:
        restore(opened(target_url, sealer=other), io.BytesIO(data))
    message = str(caught.value)
    assert sealer.key_id in message and other.key_id in message
    assert "--encryption-key-file" in message
    with pytest.raises(BackupError, match=f"sealed with encryption key {sealer.key_id}.*no "):
        restore(opened(target_url), io.BytesIO(data))

    # a header that does not name the key is caught on the Secret's own line
    unnamed = data.replace(f'"encryptionKeys":["{sealer.key_id}"]'.encode(), b'"encryptionKeys":[]')
    with pytest.raises(BackupError, match=f"sealed with encryption key {sealer.key_id}"):
        restore(opened(target_url, sealer=other), io.BytesIO(unnamed))

    target = opened(target_url, sealer=Sealer(KEY, "a copy of the old key"))
    assert rows(target) == ([], [])
    restore(target, io.BytesIO(data))
    assert target.get("Secret", "default", "s")["data"] == {"password": PASSWORD}


@pytest.mark.postgres
def test_a_sqlite_backup_restores_into_postgresql(
    tmp_path: Any, postgres_db: str, opened: Callable[..., Store]
) -> None:
    source = opened(f"sqlite:///{tmp_path}/s.db", sealer=Sealer(KEY))
    _, issued = populate(source)
    data, info = take(source)
    assert lines(data)[0]["dialect"] == "sqlite"
    target = opened(postgres_db, sealer=Sealer(KEY))
    restored = restore(target, io.BytesIO(data))
    assert (restored.objects, restored.tokens, restored.dialect) == (6, 2, "sqlite")
    assert rows(target) == rows(source)
    assert TokenStore(target).verify(issued[1]) is not None
    assert target.get("Secret", "default", "deploy-key")["data"] == {"password": PASSWORD}
    # and back: the PostgreSQL backup of it loads into SQLite the same
    again, _ = take(target)
    copy = opened(f"sqlite:///{tmp_path}/copy.db", sealer=Sealer(KEY))
    restore(copy, io.BytesIO(again), bump=0)
    assert rows(copy) == rows(source)
    assert info.resource_version < copy.current_rv()
