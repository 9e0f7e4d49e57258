"""The Store: every object of every kind, on SQLite or PostgreSQL through one SQLAlchemy schema.

Consistency model. All writes happen in a `Tx`. The first write of a transaction bumps the single
row counters["rv"]; on PostgreSQL that row lock, and on SQLite the database write lock taken by
BEGIN IMMEDIATE, serializes writers, so resourceVersions are handed out and committed in the same
order. A reader that has seen every change up to N can therefore read the change log from N on and
never miss one that commits later with a smaller number. Compare-and-swap is done by reading the
row under lock (SELECT ... FOR UPDATE on PostgreSQL) and checking its resourceVersion.
"""

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from shoal import jsoncodec
from shoal.errors import AlreadyExists, Conflict, Gone, NotFound
from shoal.model.meta import now_iso
from shoal.quantity import parse_bytes
from shoal.store.schema import changes, counters, objects

Obj = dict[str, Any]
MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class Change:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    kind: str
    namespace: str
    name: str
    object: Obj


@dataclass(frozen=True)
class Usage:
    cpu: int = 0
    memory: int = 0
    disk: int = 0
    vms: int = 0
    macos: int = 0


def key_of(obj: Obj) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace") or "", meta["name"]


def _index_columns(obj: Obj) -> dict[str, Any]:
    if obj["kind"] != "VirtualMachine":
        return {"node_name": None, "req_cpu": 0, "req_memory": 0, "req_disk": 0, "guest_os": None}
    spec = obj.get("spec") or {}
    return {
        "node_name": spec.get("nodeName"),
        "guest_os": spec.get("os"),
        "req_cpu": int(spec.get("cpu") or 0),
        "req_memory": parse_bytes(spec["memory"]) if spec.get("memory") else 0,
        "req_disk": parse_bytes(spec["disk"]) if spec.get("disk") else 0,
    }


class Tx:
    """One database transaction: reads lock the rows they return; writes get fresh versions."""

    def __init__(self, store: "Store", conn: Connection) -> None:
        self._store = store
        self._conn = conn
        self.written: list[int] = []

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        query = sa.select(objects.c.body).where(
            objects.c.kind == kind, objects.c.namespace == namespace, objects.c.name == name
        )
        if self._store.dialect == "postgresql":
            query = query.with_for_update()
        row = self._conn.execute(query).first()
        return jsoncodec.loads(row[0]) if row else None

    def must_get(self, kind: str, namespace: str, name: str) -> Obj:
        obj = self.get(kind, namespace, name)
        if obj is None:
            raise NotFound(_not_found_message(kind, namespace, name), kind=kind, name=name)
        return obj

    def _next_rv(self) -> int:
        rv = self._conn.execute(
            sa.update(counters)
            .where(counters.c.name == "rv")
            .values(value=counters.c.value + 1)
            .returning(counters.c.value)
        ).scalar_one()
        self.written.append(rv)
        return int(rv)

    def _log(self, rv: int, type_: str, obj: Obj, body: str) -> None:
        kind, namespace, name = key_of(obj)
        self._conn.execute(
            sa.insert(changes).values(
                rv=rv, kind=kind, namespace=namespace, name=name, type=type_, body=body
            )
        )

    def insert(self, obj: Obj) -> Obj:
        kind, namespace, name = key_of(obj)
        if self.get(kind, namespace, name) is not None:
            raise AlreadyExists(
                f"{kind} {_qualified(namespace, name)} already exists", kind=kind, name=name
            )
        rv = self._next_rv()
        meta = obj["metadata"]
        meta["resourceVersion"] = str(rv)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now_iso())
        meta.setdefault("generation", 1)
        body = jsoncodec.dumps(obj)
        # ON CONFLICT DO NOTHING: a racing transaction that inserted the same key first makes
        # this one a no-op (on PostgreSQL, after waiting for it), answered as AlreadyExists.
        insert = postgresql_insert if self._store.dialect == "postgresql" else sqlite_insert
        inserted = self._conn.execute(
            insert(objects)
            .values(
                kind=kind,
                namespace=namespace,
                name=name,
                uid=meta["uid"],
                rv=rv,
                body=body,
                **_index_columns(obj),
            )
            .on_conflict_do_nothing()
            .returning(objects.c.name)
        ).first()
        if inserted is None:
            raise AlreadyExists(
                f"{kind} {_qualified(namespace, name)} already exists", kind=kind, name=name
            )
        self._log(rv, "ADDED", obj, body)
        return obj

    def replace(self, obj: Obj) -> Obj:
        """Write obj over the stored one; remove it instead once it is deleted and finalized."""
        kind, namespace, name = key_of(obj)
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self.remove(obj)
        rv = self._next_rv()
        meta["resourceVersion"] = str(rv)
        body = jsoncodec.dumps(obj)
        updated = self._conn.execute(
            sa.update(objects)
            .where(objects.c.kind == kind, objects.c.namespace == namespace, objects.c.name == name)
            .values(rv=rv, body=body, **_index_columns(obj))
        ).rowcount
        if updated != 1:
            raise NotFound(_not_found_message(kind, namespace, name), kind=kind, name=name)
        self._log(rv, "MODIFIED", obj, body)
        return obj

    def remove(self, obj: Obj) -> Obj:
        kind, namespace, name = key_of(obj)
        rv = self._next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        self._conn.execute(
            sa.delete(objects).where(
                objects.c.kind == kind, objects.c.namespace == namespace, objects.c.name == name
            )
        )
        self._log(rv, "DELETED", obj, jsoncodec.dumps(obj))
        return obj

    # -- bulk forms, for the scheduler's batched binds ------------------------------------

    def get_many(self, kind: str, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Obj]:
        """The objects at (namespace, name) keys that exist, read (and on PostgreSQL locked) in one
        statement, in key order."""
        found: dict[tuple[str, str], Obj] = {}
        for start in range(0, len(keys), 500):
            chunk = sorted(set(keys[start : start + 500]))
            query = (
                sa.select(objects.c.namespace, objects.c.name, objects.c.body)
                .where(
                    objects.c.kind == kind,
                    sa.tuple_(objects.c.namespace, objects.c.name).in_(chunk),
                )
                .order_by(objects.c.namespace, objects.c.name)
            )
            if self._store.dialect == "postgresql":
                query = query.with_for_update()
            for namespace, name, body in self._conn.execute(query):
                found[(namespace, name)] = jsoncodec.loads(body)
        return found

    def _next_rvs(self, count: int) -> list[int]:
        top = int(
            self._conn.execute(
                sa.update(counters)
                .where(counters.c.name == "rv")
                .values(value=counters.c.value + count)
                .returning(counters.c.value)
            ).scalar_one()
        )
        rvs = list(range(top - count + 1, top + 1))
        self.written.extend(rvs)
        return rvs

    def replace_many(self, updated: list[Obj]) -> None:
        """replace() for many live objects (none of them finishing a deletion), in two statements."""
        if not updated:
            return
        rows, log = [], []
        for obj, rv in zip(updated, self._next_rvs(len(updated)), strict=True):
            kind, namespace, name = key_of(obj)
            obj["metadata"]["resourceVersion"] = str(rv)
            body = jsoncodec.dumps(obj)
            rows.append(
                {
                    "k": kind,
                    "ns": namespace,
                    "n": name,
                    "rv": rv,
                    "body": body,
                    **_index_columns(obj),
                }
            )
            log.append(
                {
                    "rv": rv,
                    "kind": kind,
                    "namespace": namespace,
                    "name": name,
                    "type": "MODIFIED",
                    "body": body,
                }
            )
        self._conn.execute(
            sa.update(objects)
            .where(
                objects.c.kind == sa.bindparam("k"),
                objects.c.namespace == sa.bindparam("ns"),
                objects.c.name == sa.bindparam("n"),
            )
            .values(
                rv=sa.bindparam("rv"),
                body=sa.bindparam("body"),
                node_name=sa.bindparam("node_name"),
                req_cpu=sa.bindparam("req_cpu"),
                req_memory=sa.bindparam("req_memory"),
                req_disk=sa.bindparam("req_disk"),
                guest_os=sa.bindparam("guest_os"),
            ),
            rows,
        )
        self._conn.execute(sa.insert(changes), log)

    def insert_many(self, created: list[Obj]) -> None:
        """insert() for many new objects whose keys the caller knows to be free (read under lock)."""
        if not created:
            return
        rows, log = [], []
        for obj, rv in zip(created, self._next_rvs(len(created)), strict=True):
            kind, namespace, name = key_of(obj)
            meta = obj["metadata"]
            meta["resourceVersion"] = str(rv)
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now_iso())
            meta.setdefault("generation", 1)
            body = jsoncodec.dumps(obj)
            rows.append(
                {
                    "kind": kind,
                    "namespace": namespace,
                    "name": name,
                    "uid": meta["uid"],
                    "rv": rv,
                    "body": body,
                    **_index_columns(obj),
                }
            )
            log.append(
                {
                    "rv": rv,
                    "kind": kind,
                    "namespace": namespace,
                    "name": name,
                    "type": "ADDED",
                    "body": body,
                }
            )
        self._conn.execute(sa.insert(objects), rows)
        self._conn.execute(sa.insert(changes), log)

    def node_usages(self, node_names: list[str]) -> dict[str, Usage]:
        """node_usage() for many nodes in one statement."""
        usages = {name: Usage() for name in node_names}
        for start in range(0, len(node_names), 500):
            chunk = node_names[start : start + 500]
            rows = self._conn.execute(
                sa.select(
                    objects.c.node_name,
                    sa.func.coalesce(sa.func.sum(objects.c.req_cpu), 0),
                    sa.func.coalesce(sa.func.sum(objects.c.req_memory), 0),
                    sa.func.coalesce(sa.func.sum(objects.c.req_disk), 0),
                    sa.func.count(),
                    sa.func.coalesce(
                        sa.func.sum(sa.case((objects.c.guest_os == "macos", 1), else_=0)), 0
                    ),
                )
                .where(objects.c.kind == "VirtualMachine", objects.c.node_name.in_(chunk))
                .group_by(objects.c.node_name)
            )
            for name, cpu, memory, disk, vms, macos in rows:
                usages[name] = Usage(int(cpu), int(memory), int(disk), int(vms), int(macos))
        return usages

    def node_usage(self, node_name: str) -> Usage:
        """What the VMs bound to a node reserve: every bound VM holds its share until deleted."""
        row = self._conn.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(objects.c.req_cpu), 0),
                sa.func.coalesce(sa.func.sum(objects.c.req_memory), 0),
                sa.func.coalesce(sa.func.sum(objects.c.req_disk), 0),
                sa.func.count(),
                sa.func.coalesce(
                    sa.func.sum(sa.case((objects.c.guest_os == "macos", 1), else_=0)), 0
                ),
            ).where(objects.c.kind == "VirtualMachine", objects.c.node_name == node_name)
        ).one()
        return Usage(int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4]))


def _qualified(namespace: str, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


def _not_found_message(kind: str, namespace: str, name: str) -> str:
    return f"{kind} {_qualified(namespace, name)} not found"


class Store:
    def __init__(self, url: str, *, change_retention: int = 200_000) -> None:
        self.url = url
        self.change_retention = change_retention
        self.dialect = sa.engine.make_url(url).get_backend_name()
        self._listeners: list[Callable[[int], None]] = []
        self._listeners_lock = threading.Lock()
        # SQLite lets one writer in at a time and makes the others poll with sleeps of up to
        # 100 ms; queueing writers of this process on a lock hands the turn over at once.
        self._writer_turn: threading.Lock | None = None
        if self.dialect == "sqlite":
            self._writer_turn = threading.Lock()
            self._engine = self._sqlite_engine(url, immediate=True)
            self._read_engine = self._sqlite_engine(url, immediate=False)
        else:
            self._engine = sa.create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)
            self._read_engine = self._engine.execution_options(isolation_level="REPEATABLE READ")
        self._migrate()

    @staticmethod
    def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 60}, pool_size=20
        )

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy's begin event, not the driver, decide how transactions start.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    def _migrate(self) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self._engine.begin() as conn:
            if self.dialect == "postgresql":
                # Replicas starting at once on a fresh database take turns; SQLite's BEGIN
                # IMMEDIATE already serializes them.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7400213)"))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def close(self) -> None:
        self._engine.dispose()
        self._read_engine.dispose()

    # -- notification ---------------------------------------------------------------------

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """Call listener(rv) after each commit that wrote something (from the writer's thread)."""
        with self._listeners_lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[int], None]) -> None:
        with self._listeners_lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    # -- transactions ---------------------------------------------------------------------

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A write transaction; every writer of this process goes through here."""
        with self._writer_turn or contextlib.nullcontext(), self._engine.begin() as conn:
            yield conn

    @contextmanager
    def tx(self) -> Iterator[Tx]:
        with self.writing() as conn:
            tx = Tx(self, conn)
            yield tx
        if tx.written:
            top = max(tx.written)
            with self._listeners_lock:
                listeners = list(self._listeners)
            for listener in listeners:
                listener(top)

    def create(self, obj: Obj) -> Obj:
        with self.tx() as tx:
            return tx.insert(obj)

    def mutate(
        self,
        kind: str,
        namespace: str,
        name: str,
        change: Callable[[Obj], Obj | None],
        *,
        expect_rv: str | None = None,
        expect_uid: str | None = None,
    ) -> Obj:
        """Read under lock, apply change (None means: nothing to write), write; compare-and-swap."""
        with self.tx() as tx:
            current = tx.must_get(kind, namespace, name)
            _check_preconditions(current, expect_rv, expect_uid)
            updated = change(jsoncodec.clone(current))
            if updated is None:
                return current
            return tx.replace(updated)

    def delete(
        self,
        kind: str,
        namespace: str,
        name: str,
        *,
        expect_rv: str | None = None,
        expect_uid: str | None = None,
        on_mark: Callable[[Obj], None] | None = None,
    ) -> tuple[Obj, bool]:
        """Delete gracefully: with finalizers left, mark it; return (object, gone now)."""
        with self.tx() as tx:
            current = tx.must_get(kind, namespace, name)
            _check_preconditions(current, expect_rv, expect_uid)
            meta = current["metadata"]
            if meta.get("finalizers"):
                if meta.get("deletionTimestamp"):
                    return current, False
                meta["deletionTimestamp"] = now_iso()
                if on_mark is not None:
                    on_mark(current)
                return tx.replace(current), False
            return tx.remove(current), True

    # -- reads ----------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> Obj:
        with self._read_engine.connect() as conn:
            row = conn.execute(
                sa.select(objects.c.body).where(
                    objects.c.kind == kind, objects.c.namespace == namespace, objects.c.name == name
                )
            ).first()
        if row is None:
            raise NotFound(_not_found_message(kind, namespace, name), kind=kind, name=name)
        return dict(jsoncodec.loads(row[0]))

    def list_objects(
        self,
        kind: str,
        namespace: str | None = None,
        *,
        node_name: str | None = None,
        unbound: bool = False,
        after: tuple[str, str] | None = None,
        batch: int | None = None,
    ) -> tuple[list[Obj], int]:
        """Objects of a kind in (namespace, name) order after a key, with the list's version.

        unbound: only VMs that no node holds yet (the scheduler's queue)."""
        query = sa.select(objects.c.body).where(objects.c.kind == kind)
        if unbound:
            query = query.where(objects.c.node_name.is_(None))
        if namespace is not None:
            query = query.where(objects.c.namespace == namespace)
        if node_name is not None:
            query = query.where(objects.c.node_name == node_name)
        if after is not None:
            query = query.where(
                sa.tuple_(objects.c.namespace, objects.c.name) > sa.tuple_(after[0], after[1])
            )
        query = query.order_by(objects.c.namespace, objects.c.name)
        if batch is not None:
            query = query.limit(batch)
        with self._read_engine.connect() as conn, conn.begin():
            rv = self._current_rv(conn)
            rows = conn.execute(query).all()
        return [jsoncodec.loads(row[0]) for row in rows], rv

    def count(self, kind: str, namespace: str | None = None) -> int:
        query = sa.select(sa.func.count()).where(objects.c.kind == kind)
        if namespace is not None:
            query = query.where(objects.c.namespace == namespace)
        with self._read_engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    @staticmethod
    def _current_rv(conn: Connection) -> int:
        return int(
            conn.execute(sa.select(counters.c.value).where(counters.c.name == "rv")).scalar_one()
        )

    def current_rv(self) -> int:
        with self._read_engine.connect() as conn:
            return self._current_rv(conn)

    def changes_since(self, rv: int, limit: int = 10_000) -> list[Change]:
        """Changes after rv in order; Gone when the log no longer reaches back to rv."""
        with self._read_engine.connect() as conn, conn.begin():
            compacted = int(
                conn.execute(
                    sa.select(counters.c.value).where(counters.c.name == "compacted")
                ).scalar_one()
            )
            if rv < compacted:
                raise Gone(
                    f"resourceVersion {rv} is too old: the change log starts after {compacted}; "
                    "list again and watch from the list's resourceVersion",
                    oldest=compacted,
                )
            rows = conn.execute(
                sa.select(
                    changes.c.rv,
                    changes.c.type,
                    changes.c.kind,
                    changes.c.namespace,
                    changes.c.name,
                    changes.c.body,
                )
                .where(changes.c.rv > rv)
                .order_by(changes.c.rv)
                .limit(limit)
            ).all()
        return [Change(r[0], r[1], r[2], r[3], r[4], jsoncodec.loads(r[5])) for r in rows]

    def compact(self) -> int:
        """Drop change-log entries older than the retention; return the new compaction point."""
        with self.writing() as conn:
            current = self._current_rv(conn)
            point = max(0, current - self.change_retention)
            conn.execute(sa.delete(changes).where(changes.c.rv <= point))
            conn.execute(
                sa.update(counters)
                .where(counters.c.name == "compacted", counters.c.value < point)
                .values(value=point)
            )
        return point

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def read_engine(self) -> Engine:
        return self._read_engine


def _check_preconditions(current: Obj, expect_rv: str | None, expect_uid: str | None) -> None:
    meta = current["metadata"]
    if expect_uid is not None and meta.get("uid") != expect_uid:
        raise Conflict(
            f"{current['kind']} {meta['name']} has uid {meta.get('uid')}, not {expect_uid}: "
            "it was deleted and created again"
        )
    if expect_rv is not None and meta.get("resourceVersion") != expect_rv:
        raise Conflict(
            f"{current['kind']} {meta['name']} was modified: resourceVersion is "
            f"{meta.get('resourceVersion')}, not {expect_rv}; get it again and retry",
            kind=current["kind"],
            name=meta["name"],
        )
