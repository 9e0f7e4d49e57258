"""The Store: every object of every kind, on SQLite or PostgreSQL through one SQLAlchemy schema.

Consistency model. All writes happen in a `Tx`. The first write of a transaction bumps the single
row counters["rv"]; on PostgreSQL that row lock, and on SQLite the database write lock taken by
BEGIN IMMEDIATE, serializes writers, so resourceVersions are handed out and committed in the same
order. A reader that has seen every change up to N can therefore read the change log from N on and
never miss one that commits later with a smaller number. Compare-and-swap is done by reading the
row under lock (SELECT ... FOR UPDATE on PostgreSQL) and checking its resourceVersion.
"""

import contextlib
import contextvars
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection, Engine

from shoal import jsoncodec
from shoal.errors import AlreadyExists, Conflict, Gone, NotFound
from shoal.model.meta import now_iso
from shoal.model.warmpool import is_saved
from shoal.quantity import parse_bytes
from shoal.store import usage
from shoal.store.schema import changes, counters, objects
from shoal.store.sealing import SEALED_KINDS, KeyFileError, Sealer, SealingError

Obj = dict[str, Any]
MIGRATIONS = Path(__file__).parent / "migrations"


class Change(NamedTuple):
    """One change-log entry. The object is kept as its stored JSON text and parsed on each use:
    a watcher without selectors sends the text as it is, and most consumers skip most kinds. A
    Secret's text (and object) is the sealed form: Store.open_text gives what a client sees."""

    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    kind: str
    namespace: str
    name: str
    body: str

    @property
    def object(self) -> Obj:
        obj: Obj = jsoncodec.loads(self.body)
        return obj

    @property
    def node_name(self) -> str | None:
        """spec.nodeName of a VirtualMachine (the one field watches are indexed by); else None."""
        if self.kind != "VirtualMachine":
            return None
        name = (self.object.get("spec") or {}).get("nodeName")
        return str(name) if name else None


Listener = Callable[[list[Change]], None]


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


_NO_INDEX = {
    "node_name": None,
    "req_cpu": 0,
    "req_memory": 0,
    "req_disk": 0,
    "guest_os": None,
    "heartbeat": None,
}


def _index_columns(obj: Obj) -> dict[str, Any]:
    if obj["kind"] == "Node":
        return {**_NO_INDEX, "heartbeat": heartbeat_of(obj)}
    if obj["kind"] != "VirtualMachine":
        return dict(_NO_INDEX)
    spec = obj.get("spec") or {}
    if is_saved(
        obj
    ):  # a saved warm-pool entry: disk only, for its disk and memory (see node_usages)
        return {
            **_NO_INDEX,
            "node_name": spec.get("nodeName"),
            "req_disk": sum(parse_bytes(spec[f]) for f in ("disk", "memory") if spec.get(f)),
        }
    return {
        **_NO_INDEX,
        "node_name": spec.get("nodeName"),
        "guest_os": spec.get("os"),
        "req_cpu": int(spec.get("cpu") or 0),
        "req_memory": parse_bytes(spec["memory"]) if spec.get("memory") else 0,
        "req_disk": parse_bytes(spec["disk"]) if spec.get("disk") else 0,
    }


# Every VM takes a slot but a saved warm-pool entry (the only VM that reserves no cpu).
_VM_SLOTS = sa.func.coalesce(sa.func.sum(sa.case((objects.c.req_cpu > 0, 1), else_=0)), 0)


def heartbeat_of(node: Obj) -> float | None:
    """When a node's agent last reported (lastHeartbeatTime, else its Ready condition's time), in
    seconds since the epoch; None when it never did or the time does not parse."""
    status = node.get("status") or {}
    text = status.get("lastHeartbeatTime")
    if not text:
        ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
        text = ready[0].get("lastTransitionTime") if ready else None
    try:
        return datetime.fromisoformat(str(text)).timestamp() if text else None
    except ValueError:
        return None


class _Sql:
    """A statement of the hot paths, run on the driver's own connection: for a small statement
    SQLAlchemy's execution machinery costs ten times what SQLite takes to run it. Written with
    psycopg's %(name)s parameters; SQLite gets :name."""

    def __init__(self, text: str, *, locking: bool = False) -> None:
        self.postgresql = text + (" FOR UPDATE" if locking else "")
        self.sqlite = re.sub(r"%\((\w+)\)s", r":\1", text)

    def run(self, conn: Connection, params: dict[str, Any]) -> Any:
        """Execute with params; the driver's cursor."""
        text = self.sqlite if conn.dialect.name == "sqlite" else self.postgresql
        return conn.connection.driver_connection.execute(text, params)  # type: ignore[union-attr]


# Set in the controller's leader-only loops (shoal.store.lease.fenced): (holder, epoch). Every
# transaction they run first checks that the leader lease still has that holder and epoch, under
# a lock the lease cannot change hands through, so a leader that lost its lease (paused, cut
# off) never writes after its successor started.
FENCE: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "shoal_fence", default=None
)
_FENCE_SQL = _Sql("SELECT holder, epoch FROM leases WHERE name = 'leader'")
NOTIFY_CHANNEL = "shoal_changes"
_NOTIFY = _Sql(f"SELECT pg_notify('{NOTIFY_CHANNEL}', %(rv)s)")
_FENCE_SQL.postgresql += " FOR SHARE"


class NotLeader(Conflict):
    """A leader-only write from a replica that no longer holds the leader lease."""


def _check_fence(conn: Connection) -> None:
    fence = FENCE.get()
    if fence is None:
        return
    row = _FENCE_SQL.run(conn, {}).fetchone()
    if row is None or (str(row[0]), int(row[1])) != fence:
        raise NotLeader(
            f"this replica's leadership (epoch {fence[1]}) has ended: the lease is "
            f"{row[0] if row else 'gone'}'s at epoch {row[1] if row else '?'}"
        )


_KEY = "kind = %(k)s AND namespace = %(ns)s AND name = %(n)s"
_INDEX_COLUMNS = ("node_name", "req_cpu", "req_memory", "req_disk", "guest_os", "heartbeat")
_GET = _Sql(f"SELECT body FROM objects WHERE {_KEY}")
_GET_LOCKED = _Sql(f"SELECT body FROM objects WHERE {_KEY}", locking=True)
_INSERT = _Sql(
    f"INSERT INTO objects (kind, namespace, name, uid, rv, body, {', '.join(_INDEX_COLUMNS)}) "
    "VALUES (%(kind)s, %(namespace)s, %(name)s, %(uid)s, %(rv)s, %(body)s, "
    + ", ".join(f"%({c})s" for c in _INDEX_COLUMNS)
    + ") ON CONFLICT DO NOTHING RETURNING name"
)
_UPDATE = _Sql(
    "UPDATE objects SET rv = %(rv)s, body = %(body)s, "
    + ", ".join(f"{c} = %({c})s" for c in _INDEX_COLUMNS)
    + f" WHERE {_KEY}"
)
_DELETE = _Sql(f"DELETE FROM objects WHERE {_KEY}")
_LOG = _Sql(
    "INSERT INTO changes (rv, kind, namespace, name, type, body) "
    "VALUES (%(rv)s, %(kind)s, %(namespace)s, %(name)s, %(type)s, %(body)s)"
)
_NEXT_RVS = _Sql("UPDATE counters SET value = value + %(count)s WHERE name = 'rv' RETURNING value")
_COUNTER = _Sql("SELECT value FROM counters WHERE name = %(counter)s")
_CHANGES_AFTER = _Sql(
    "SELECT rv, type, kind, namespace, name, body FROM changes "
    "WHERE rv > %(rv)s ORDER BY rv LIMIT %(limit)s"
)
# The bulk forms, for the scheduler's batched binds (executemany through SQLAlchemy).
_UPDATE_MANY = (
    sa.update(objects)
    .where(
        objects.c.kind == sa.bindparam("k"),
        objects.c.namespace == sa.bindparam("ns"),
        objects.c.name == sa.bindparam("n"),
    )
    .values(
        rv=sa.bindparam("rv"),
        body=sa.bindparam("body"),
        **{column: sa.bindparam(column) for column in _INDEX_COLUMNS},
    )
)
_LOG_MANY = sa.insert(changes)


def _key(kind: str, namespace: str, name: str) -> dict[str, str]:
    return {"k": kind, "ns": namespace, "n": name}


class Tx:
    """One database transaction: reads lock the rows they return; writes get fresh versions."""

    def __init__(self, store: "Store", conn: Connection) -> None:
        self._store = store
        self._conn = conn
        self.changes: list[Change] = []  # what this transaction wrote, in order

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        row = _GET_LOCKED.run(self._conn, _key(kind, namespace, name)).fetchone()
        return self._store.parse(kind, row[0]) if row else None

    def must_get(self, kind: str, namespace: str, name: str) -> Obj:
        obj = self.get(kind, namespace, name)
        if obj is None:
            raise NotFound(_not_found_message(kind, namespace, name), kind=kind, name=name)
        return obj

    def _next_rv(self) -> int:
        return self._next_rvs(1)[0]

    def _log(self, rv: int, type_: str, obj: Obj, body: str) -> None:
        kind, namespace, name = key_of(obj)
        _LOG.run(
            self._conn,
            {
                "rv": rv,
                "kind": kind,
                "namespace": namespace,
                "name": name,
                "type": type_,
                "body": body,
            },
        )
        self.changes.append(Change(rv, type_, kind, namespace, name, body))

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
        body = self._store.stored_text(obj)
        # ON CONFLICT DO NOTHING: a racing transaction that inserted the same key first makes
        # this one a no-op (on PostgreSQL, after waiting for it), answered as AlreadyExists.
        inserted = _INSERT.run(
            self._conn,
            {
                "kind": kind,
                "namespace": namespace,
                "name": name,
                "uid": meta["uid"],
                "rv": rv,
                "body": body,
                **_index_columns(obj),
            },
        ).fetchall()
        if not inserted:
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
        body = self._store.stored_text(obj)
        updated = _UPDATE.run(
            self._conn,
            {**_key(kind, namespace, name), "rv": rv, "body": body, **_index_columns(obj)},
        ).rowcount
        if updated != 1:
            raise NotFound(_not_found_message(kind, namespace, name), kind=kind, name=name)
        self._log(rv, "MODIFIED", obj, body)
        return obj

    def remove(self, obj: Obj) -> Obj:
        kind, namespace, name = key_of(obj)
        rv = self._next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        _DELETE.run(self._conn, _key(kind, namespace, name))
        self._log(rv, "DELETED", obj, self._store.stored_text(obj))
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
                found[(namespace, name)] = self._store.parse(kind, body)
        return found

    def _next_rvs(self, count: int) -> list[int]:
        top = int(_NEXT_RVS.run(self._conn, {"count": count}).fetchall()[0][0])
        return list(range(top - count + 1, top + 1))

    def replace_many(self, updated: list[Obj]) -> None:
        """replace() for many live objects (none of them finishing a deletion), in two statements."""
        if not updated:
            return
        rows, log = [], []
        for obj, rv in zip(updated, self._next_rvs(len(updated)), strict=True):
            kind, namespace, name = key_of(obj)
            obj["metadata"]["resourceVersion"] = str(rv)
            body = self._store.stored_text(obj)
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
        self._conn.execute(_UPDATE_MANY, rows)
        self._conn.execute(_LOG_MANY, log)
        self.changes.extend(_change_of(entry) for entry in log)

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
            body = self._store.stored_text(obj)
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
        self._conn.execute(_LOG_MANY, log)
        self.changes.extend(_change_of(entry) for entry in log)

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
                    _VM_SLOTS,
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
        """What the VMs bound to a node reserve: every bound VM holds its share until deleted
        (a saved warm-pool entry: its disk only)."""
        row = self._conn.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(objects.c.req_cpu), 0),
                sa.func.coalesce(sa.func.sum(objects.c.req_memory), 0),
                sa.func.coalesce(sa.func.sum(objects.c.req_disk), 0),
                _VM_SLOTS,
                sa.func.coalesce(
                    sa.func.sum(sa.case((objects.c.guest_os == "macos", 1), else_=0)), 0
                ),
            ).where(objects.c.kind == "VirtualMachine", objects.c.node_name == node_name)
        ).one()
        return Usage(int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4]))


def _change_of(entry: dict[str, Any]) -> Change:
    return Change(
        entry["rv"], entry["type"], entry["kind"], entry["namespace"], entry["name"], entry["body"]
    )


def _qualified(namespace: str, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


def _not_found_message(kind: str, namespace: str, name: str) -> str:
    return f"{kind} {_qualified(namespace, name)} not found"


@dataclass(frozen=True)
class _LastVersion:
    """A listener of versions as a listener of changes (equal for the same listener)."""

    listener: Callable[[int], None]

    def __call__(self, written: list[Change]) -> None:
        self.listener(written[-1].rv)


class Store:
    def __init__(
        self, url: str, *, change_retention: int = 200_000, sealer: Sealer | None = None
    ) -> None:
        """sealer: the key Secrets are sealed with (store.sealing); without one, writing or
        reading a Secret is an error, so a value can never reach the database in clear."""
        self.url = url
        self.change_retention = change_retention
        self.sealer = sealer
        self.dialect = sa.engine.make_url(url).get_backend_name()
        self._listeners: list[Listener] = []
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
        if sealer is not None:
            self._check_sealer(sealer)

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
            # On the driver's connection: through SQLAlchemy this costs more than the BEGIN.
            conn.connection.driver_connection.execute(  # type: ignore[union-attr]
                "BEGIN IMMEDIATE" if immediate else "BEGIN"
            )

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

    def _check_sealer(self, sealer: Sealer) -> None:
        """Refuse to start with a key other than the one the stored Secrets were sealed with:
        every Secret in the objects table, and the newest one in the change log."""
        sealed_by_another = sa.and_(
            objects.c.kind.in_(SEALED_KINDS), ~objects.c.body.contains(sealer.marker())
        )
        newest_logged = (
            sa.select(changes.c.body)
            .where(changes.c.kind.in_(SEALED_KINDS))
            .order_by(changes.c.rv.desc())
            .limit(1)
        )
        with self._read_engine.connect() as conn:
            row = conn.execute(sa.select(objects.c.body).where(sealed_by_another).limit(1)).first()
            if row is None:
                logged = conn.execute(newest_logged).first()
                if logged is not None and sealer.marker() not in logged[0]:
                    row = logged
        if row is not None:
            raise KeyFileError(sealer.mismatch(jsoncodec.loads(row[0])))

    def stored_text(self, obj: Obj) -> str:
        """An object as it is stored: its JSON, with a Secret's data sealed."""
        if obj["kind"] not in SEALED_KINDS:
            return jsoncodec.dumps(obj)
        if self.sealer is None:
            raise SealingError("this store has no encryption key: Secrets cannot be written")
        return jsoncodec.dumps(self.sealer.seal(obj))

    def parse(self, kind: str, text: str | bytes) -> Obj:
        """A stored object, with a Secret's data opened."""
        obj: Obj = jsoncodec.loads(text)
        if kind not in SEALED_KINDS:
            return obj
        if self.sealer is None:
            raise SealingError("this store has no encryption key: Secrets cannot be read")
        return self.sealer.open(obj)

    def open_text(self, kind: str, text: str) -> str:
        """Stored JSON text as a client gets it: a Secret's data opened; other kinds as they are."""
        if kind not in SEALED_KINDS:
            return text
        return jsoncodec.dumps(self.parse(kind, text))

    def close(self) -> None:
        self._engine.dispose()
        self._read_engine.dispose()

    # -- notification ---------------------------------------------------------------------

    def add_change_listener(self, listener: Listener) -> None:
        """Call listener(changes) after each commit that wrote something, with what it wrote in
        order (from the writer's thread). On SQLite, listeners of this process hear the commits
        in commit order; on PostgreSQL, two writers' calls may come in either order."""
        with self._listeners_lock:
            self._listeners.append(listener)

    def remove_change_listener(self, listener: Listener) -> None:
        with self._listeners_lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """Call listener(rv) after each commit that wrote something: rv is its last version."""
        self.add_change_listener(_LastVersion(listener))

    def remove_listener(self, listener: Callable[[int], None]) -> None:
        self.remove_change_listener(_LastVersion(listener))

    # -- transactions ---------------------------------------------------------------------

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A write transaction; every writer of this process goes through here."""
        with self._writer_turn or contextlib.nullcontext(), self._engine.begin() as conn:
            yield conn

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read transaction that sees the store as of its first statement, whatever commits
        during it (REPEATABLE READ on PostgreSQL; on SQLite, a read transaction in WAL mode)."""
        with self._read_engine.connect() as conn, conn.begin():
            if self.dialect == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield conn

    @contextmanager
    def tx(self) -> Iterator[Tx]:
        with self._writer_turn or contextlib.nullcontext():
            with self._engine.begin() as conn:
                _check_fence(conn)
                tx = Tx(self, conn)
                yield tx
                if any(change.kind == "VirtualMachine" for change in tx.changes):
                    usage.record(conn, tx.changes)  # what the VMs hold, with the write
                if tx.changes and self.dialect == "postgresql":
                    # Heard by the other replicas' watch hubs at commit (shoal.store.notify).
                    _NOTIFY.run(conn, {"rv": str(tx.changes[-1].rv)})
            # Still holding the turn: the next writer's changes cannot be published before these.
            if tx.changes:
                with self._listeners_lock:
                    listeners = list(self._listeners)
                for listener in listeners:
                    listener(tx.changes)

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
        return dict(self.parse(kind, self.get_body(kind, namespace, name)))

    def get_body(self, kind: str, namespace: str, name: str) -> str:
        """An object as its stored JSON text (a Secret's sealed: see open_text)."""
        with self._read_engine.connect() as conn:
            row = _GET.run(conn, _key(kind, namespace, name)).fetchone()
        if row is None:
            raise NotFound(_not_found_message(kind, namespace, name), kind=kind, name=name)
        return str(row[0])

    def list_objects(
        self,
        kind: str,
        namespace: str | None = None,
        *,
        node_name: str | None = None,
        unbound: bool = False,
        heartbeat_before: float | None = None,
        after: tuple[str, str] | None = None,
        batch: int | None = None,
    ) -> tuple[list[Obj], int]:
        """Objects of a kind in (namespace, name) order after a key, with the list's version.

        unbound: only VMs that no node holds yet (the scheduler's queue). heartbeat_before: only
        Nodes whose last heartbeat (see heartbeat_of) is older than this, or unknown."""
        rows, rv = self.list_bodies(
            kind,
            namespace,
            node_name=node_name,
            unbound=unbound,
            heartbeat_before=heartbeat_before,
            after=after,
            batch=batch,
        )
        if kind in SEALED_KINDS:
            return [self.parse(kind, row[2]) for row in rows], rv
        return [jsoncodec.loads(row[2]) for row in rows], rv

    def list_bodies(
        self,
        kind: str,
        namespace: str | None = None,
        *,
        node_name: str | None = None,
        unbound: bool = False,
        heartbeat_before: float | None = None,
        after: tuple[str, str] | None = None,
        batch: int | None = None,
    ) -> tuple[list[tuple[str, str, str]], int]:
        """list_objects() as (namespace, name, stored JSON text) rows, unparsed (a Secret's data
        sealed: see open_text)."""
        where = ["kind = %(kind)s"]
        params: dict[str, Any] = {"kind": kind}
        if unbound:
            where.append("node_name IS NULL")
        if heartbeat_before is not None:
            where.append("(heartbeat IS NULL OR heartbeat < %(heartbeat)s)")
            params["heartbeat"] = heartbeat_before
        if namespace is not None:
            where.append("namespace = %(namespace)s")
            params["namespace"] = namespace
        if node_name is not None:
            where.append("node_name = %(node_name)s")
            params["node_name"] = node_name
        if after is not None:
            where.append("(namespace, name) > (%(after_namespace)s, %(after_name)s)")
            params.update(after_namespace=after[0], after_name=after[1])
        text = f"SELECT namespace, name, body FROM objects WHERE {' AND '.join(where)}"
        text += " ORDER BY namespace, name"
        if batch is not None:
            text += " LIMIT %(batch)s"
            params["batch"] = batch
        with self._read_engine.connect() as conn, conn.begin():
            rv = self._current_rv(conn)
            rows = _Sql(text).run(conn, params).fetchall()
        return [(row[0], row[1], row[2]) for row in rows], rv

    def names(self, kind: str) -> set[str]:
        """The names of a kind's objects (of every namespace), without reading the objects."""
        query = sa.select(objects.c.name).where(objects.c.kind == kind)
        with self._read_engine.connect() as conn:
            return {row[0] for row in conn.execute(query)}

    def node_usages(self, node_names: list[str]) -> dict[str, Usage]:
        """What the VMs bound to each node reserve, read outside any write (Tx.node_usages)."""
        with self._read_engine.connect() as conn:
            return Tx(self, conn).node_usages(node_names)

    def count(self, kind: str, namespace: str | None = None) -> int:
        query = sa.select(sa.func.count()).where(objects.c.kind == kind)
        if namespace is not None:
            query = query.where(objects.c.namespace == namespace)
        with self._read_engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    @staticmethod
    def _current_rv(conn: Connection) -> int:
        return int(_COUNTER.run(conn, {"counter": "rv"}).fetchone()[0])

    def current_rv(self) -> int:
        with self._read_engine.connect() as conn:
            return self._current_rv(conn)

    def start_history_after(self, seen: int) -> int:
        """After the database lost commits it had acknowledged (a crash under asynchronous
        commit, a failover to a standby that was behind): move the version past every one handed
        out (`seen`, and any reused since) and start the change log there, so no version names
        two different states and every watcher from before gets Gone and relists. Returns the
        new version."""
        with self.writing() as conn:
            point = max(self._current_rv(conn), seen) + 1
            restart_versions(conn, point)
        return point

    def changes_since(self, rv: int, limit: int = 10_000) -> list[Change]:
        """Changes after rv in order; Gone when the log no longer reaches back to rv."""
        with self._read_engine.connect() as conn, conn.begin():
            compacted = int(_COUNTER.run(conn, {"counter": "compacted"}).fetchone()[0])
            if rv < compacted:
                raise Gone(
                    f"resourceVersion {rv} is too old: the change log starts after {compacted}; "
                    "list again and watch from the list's resourceVersion",
                    oldest=compacted,
                )
            rows = _CHANGES_AFTER.run(conn, {"rv": rv, "limit": limit}).fetchall()
        return [Change(int(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows]

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


def restart_versions(conn: Connection, rv: int) -> None:
    """Make rv the current version and the change log's start: nothing before it resumes."""
    for name in ("rv", "compacted"):
        conn.execute(sa.update(counters).where(counters.c.name == name).values(value=rv))


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
