"""Secrets at rest, at the store: sealed in every table on SQLite and PostgreSQL, opened on read,
and a key other than the stored Secrets' refused at start with a message that says so."""

import base64
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from shoal.store.sealing import KeyFileError, Sealer, SealingError, generate_key, load_key_file
from shoal.store.store import Store

VALUE = b"hunter2-at-rest-7f3a"
ENCODED = base64.b64encode(VALUE).decode()


def secret(name: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"team": "ios"},
            # kubectl keeps what it applied, values included, in an annotation: sealed too
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": ENCODED},
            "finalizers": [],
        },
        "type": "opaque",
        "data": data or {"password": ENCODED},
    }


def raw_rows(store: Store) -> str:
    with store.read_engine.connect() as conn:
        objects = conn.execute(sa.text("SELECT body FROM objects WHERE kind = 'Secret'")).all()
        changes = conn.execute(sa.text("SELECT body FROM changes WHERE kind = 'Secret'")).all()
    assert objects and changes
    return "\n".join(row[0] for row in objects + changes)


def test_secrets_are_sealed_in_every_table_and_opened_on_read(
    open_store: Callable[..., Store],
) -> None:
    sealer = Sealer(os.urandom(32), "test key")
    store = open_store(sealer=sealer)
    created = store.create(secret("s"))
    assert created["data"] == {"password": ENCODED}  # the caller gets what it wrote
    store.mutate("Secret", "default", "s", lambda s: {**s, "data": {"other": ENCODED}})
    store.create(secret("gone"))
    store.delete("Secret", "default", "gone")

    stored = raw_rows(store)
    assert ENCODED not in stored and "hunter2" not in stored
    assert f'"v1:{sealer.key_id}:' in stored
    assert '"team":"ios"' in stored  # labels stay in clear, for selectors

    got = store.get("Secret", "default", "s")
    assert got["data"] == {"other": ENCODED}
    assert got["metadata"]["annotations"] == secret("s")["metadata"]["annotations"]
    assert [s["data"] for s in store.list_objects("Secret", "default")[0]] == [{"other": ENCODED}]
    logged = [c for c in store.changes_since(0) if c.kind == "Secret"]
    assert [c.type for c in logged] == ["ADDED", "MODIFIED", "ADDED", "DELETED"]
    assert all(ENCODED not in c.body for c in logged)
    assert store.open_text("Secret", logged[-1].body).count(ENCODED) == 2  # data, annotation


def test_a_store_without_a_key_neither_writes_nor_reads_secrets(
    open_store: Callable[..., Store],
) -> None:
    sealed = open_store(sealer=Sealer(os.urandom(32)))
    sealed.create(secret("s"))
    plain = open_store()
    with pytest.raises(SealingError):
        plain.create(secret("t"))
    with pytest.raises(SealingError):
        plain.get("Secret", "default", "s")


def test_another_key_is_refused_at_start(open_store: Callable[..., Store]) -> None:
    raw = os.urandom(32)
    key = Sealer(raw, "/etc/shoal/right.key")
    open_store(sealer=key).create(secret("s"))
    assert open_store(sealer=Sealer(raw)).get("Secret", "default", "s")["data"]  # same key: fine
    wrong = Sealer(os.urandom(32), "/etc/shoal/wrong.key")
    with pytest.raises(KeyFileError) as caught:
        open_store(sealer=wrong)
    message = str(caught.value)
    assert f"sealed with encryption key {key.key_id}" in message
    assert f"this controller has key {wrong.key_id} (/etc/shoal/wrong.key)" in message
    assert "same key file" in message


def test_a_sealed_blob_moved_to_another_secret_does_not_open(
    open_store: Callable[..., Store],
) -> None:
    store = open_store(sealer=Sealer(os.urandom(32)))
    store.create(secret("a"))
    store.create(secret("b", token=base64.b64encode(b"other").decode()))
    with store.engine.begin() as conn:
        body_a = conn.execute(
            sa.text("SELECT body FROM objects WHERE kind = 'Secret' AND name = 'a'")
        ).scalar_one()
        sealed_a = body_a.split('"sealed":"', 1)[1].split('"', 1)[0]
        body_b = conn.execute(
            sa.text("SELECT body FROM objects WHERE kind = 'Secret' AND name = 'b'")
        ).scalar_one()
        sealed_b = body_b.split('"sealed":"', 1)[1].split('"', 1)[0]
        conn.execute(
            sa.text("UPDATE objects SET body = :body WHERE kind = 'Secret' AND name = 'b'"),
            {"body": body_b.replace(sealed_b, sealed_a)},
        )
    with pytest.raises(SealingError) as caught:
        store.get("Secret", "default", "b")
    assert caught.value.code == 500 and "does not open" in caught.value.message
    assert store.get("Secret", "default", "a")["data"] == {"password": ENCODED}


def test_key_file_is_made_once_private_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "encryption.key"
    made = load_key_file(path, create=True)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_key_file(path, create=True).key_id == made.key_id  # kept, not made again
    assert load_key_file(path, create=False).key_id == made.key_id

    with pytest.raises(KeyFileError, match="does not exist; make one with"):
        load_key_file(tmp_path / "missing.key", create=False)
    assert not (tmp_path / "missing.key").exists()
    bad = tmp_path / "bad.key"
    for text in ("not base64 at all!", base64.b64encode(b"short").decode()):
        bad.write_text(text)
        with pytest.raises(KeyFileError, match="not the base64 of 32 bytes") as caught:
            load_key_file(bad, create=False)
        assert text not in str(caught.value)  # a key file's content is never echoed
    bad.write_text(generate_key() + "\n")
    assert load_key_file(bad, create=False).key_id != made.key_id
