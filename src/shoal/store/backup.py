"""Backup and restore of a Store: a logical snapshot as JSON lines, portable between SQLite and
PostgreSQL.

The file (format "shoal-backup", version 1) is one JSON object a line:

    {"format": "shoal-backup", "version": 1, "dialect": "sqlite", "resourceVersion": 5678,
     "createdAt": "...", "encryptionKeys": ["3f2a..."]}
    {"object": {"kind": ..., "namespace": ..., "name": ..., "uid": ..., "rv": ..., "body": "..."}}
    {"token": {"id": ..., "secret_hash": ..., "subject_kind": ..., ..., "expires_at": ...}}
    {"end": {"objects": 1234, "tokens": 12}}

Object bodies are kept exactly as stored, so a Secret stays sealed: restoring it needs the same
encryption key, whose id ("encryptionKeys": the ids the Secrets were sealed with) the header
records. The change log and the leases are left out: a restored store starts its change log
empty, and the target's leases stay as they are. The index columns of objects are not written
either: restore computes them from the bodies, as every write does.

`backup` reads everything in one read transaction, a snapshot (REPEATABLE READ on PostgreSQL, a
WAL read transaction on SQLite), so it runs while controllers keep writing; every object in it
has a resourceVersion at most the header's. The footer's counts tell a whole file from a cut one.

`restore` writes everything in one transaction (a failure leaves the store as it was), and moves
the resourceVersion on past the backup's by `bump` and marks the change log compacted there: a
watch or agent resuming from any version it saw before, even one the old controller handed out
after the backup was taken, gets 410 Gone and relists, rather than missing the changes the
restored controller numbers anew.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shoal import jsoncodec
from shoal.errors import ApiError
from shoal.model.meta import now_iso
from shoal.store.schema import changes, counters, objects, tokens
from shoal.store.sealing import SEALED_FIELD, SEALED_KINDS, VERSION
from shoal.store.store import Store, _index_columns, restart_versions

FORMAT = "shoal-backup"
FORMAT_VERSION = 1
# How far past the backup's resourceVersion a restore starts numbering: more than the writes
# the old controller can have made after the backup (a billion: a week at 1500 writes a second).
DEFAULT_BUMP = 1_000_000_000
BATCH = 1000  # rows read (backup) or inserted (restore) at a time
PROGRESS_EVERY = 10_000  # rows between calls of progress

Progress = Callable[[int], None]
_OBJECT_COLUMNS = ("kind", "namespace", "name", "uid", "rv", "body")
_TOKEN_COLUMNS = tuple(column.name for column in tokens.columns)


class BackupError(Exception):
    """A file or a store that restore refuses; the message says why, and what to do."""


@dataclass(frozen=True)
class BackupInfo:
    resource_version: int  # the store's version the snapshot is of
    objects: int
    tokens: int
    encryption_keys: tuple[str, ...]  # ids of the keys the Secrets in it were sealed with


@dataclass(frozen=True)
class RestoreInfo:
    backup_version: int  # the resourceVersion the backup was taken at
    resource_version: int  # the restored store's version: the next write gets the one after
    objects: int
    tokens: int
    dialect: str  # the database the backup was taken from


def _key_of_sealed(body: str) -> str | None:
    """The id of the key a stored Secret's data was sealed with (None when it is not sealed)."""
    text = jsoncodec.loads(body).get(SEALED_FIELD)
    parts = text.split(":") if isinstance(text, str) else []
    return parts[1] if len(parts) >= 3 and parts[0] == VERSION else None


def _rows(conn: Connection, query: sa.Select[Any], batch: int) -> Iterator[sa.Row[Any]]:
    """The rows of a query, fetched a batch at a time (a server-side cursor on PostgreSQL)."""
    result = conn.execution_options(yield_per=batch).execute(query)
    try:
        yield from result
    finally:
        result.close()


def backup(
    store: Store, out: IO[bytes], progress: Progress | None = None, *, batch: int = BATCH
) -> BackupInfo:
    """Write a snapshot of the store's objects and tokens to out (see the module's text)."""
    done = 0

    def line(record: dict[str, Any]) -> None:
        nonlocal done
        out.write(jsoncodec.dumps_bytes(record) + b"\n")
        done += 1
        if progress is not None and done % PROGRESS_EVERY == 0:
            progress(done)

    counts = {"objects": 0, "tokens": 0}
    with store.snapshot() as conn:
        rv = int(conn.execute(sa.select(counters.c.value).where(counters.c.name == "rv")).one()[0])
        sealed = sa.select(objects.c.body).where(objects.c.kind.in_(SEALED_KINDS))
        keys = {_key_of_sealed(row[0]) for row in _rows(conn, sealed, batch)}
        key_ids = tuple(sorted(key for key in keys if key))
        line(
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "dialect": store.dialect,
                "resourceVersion": rv,
                "createdAt": now_iso(),
                "encryptionKeys": list(key_ids),
            }
        )
        columns = [objects.c[name] for name in _OBJECT_COLUMNS]
        query = sa.select(*columns).order_by(objects.c.kind, objects.c.namespace, objects.c.name)
        for row in _rows(conn, query, batch):
            line({"object": dict(zip(_OBJECT_COLUMNS, row, strict=True))})
            counts["objects"] += 1
        for row in _rows(conn, sa.select(tokens).order_by(tokens.c.id), batch):
            line({"token": dict(zip(_TOKEN_COLUMNS, row, strict=True))})
            counts["tokens"] += 1
    line({"end": counts})
    out.flush()
    return BackupInfo(rv, counts["objects"], counts["tokens"], key_ids)


# -- restore ------------------------------------------------------------------------------------


def _records(source: IO[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of each line; a line that does not parse is a cut file's last, or
    a damaged one."""
    for number, raw in enumerate(source, start=1):
        try:
            record = jsoncodec.loads(raw)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            if number == 1:
                raise BackupError("not a shoal backup (its first line is not a shoal header)")
            raise BackupError(
                f"line {number} is not a backup record: the file is truncated or damaged"
            )
        yield number, record


def _header(record: dict[str, Any]) -> dict[str, Any]:
    if record.get("format") != FORMAT:
        raise BackupError("not a shoal backup (its first line is not a shoal header)")
    version = record.get("version")
    if version != FORMAT_VERSION:
        raise BackupError(
            f"backup format version {version} is not one this shoal reads (it reads version "
            f"{FORMAT_VERSION}): restore it with the shoal that made it, or a newer one"
        )
    if not isinstance(record.get("resourceVersion"), int):
        raise BackupError("the backup's header has no resourceVersion: the file is damaged")
    return record


def _check_keys(store: Store, key_ids: list[str]) -> None:
    if not key_ids:
        return
    sealed_with = ", ".join(key_ids)
    if store.sealer is None:
        raise BackupError(
            f"the backup holds Secrets sealed with encryption key {sealed_with}, and no "
            "encryption key was given: pass that key's file with --encryption-key-file (or put "
            "it at DATA_DIR/encryption.key)"
        )
    if store.sealer.key_id not in key_ids:
        raise BackupError(
            f"the backup's Secrets were sealed with encryption key {sealed_with}, but the key "
            f"given is {store.sealer.key_id} ({store.sealer.source}): restore with the key file "
            "of the controller the backup was taken from (--encryption-key-file)"
        )


def _object_row(store: Store, values: Any, number: int, top: int) -> dict[str, Any]:
    """The objects row of an object record: its columns, and the index columns of its body."""
    if not isinstance(values, dict) or any(name not in values for name in _OBJECT_COLUMNS):
        raise BackupError(f"line {number}: an object record without {', '.join(_OBJECT_COLUMNS)}")
    row = {name: values[name] for name in _OBJECT_COLUMNS}
    if not isinstance(row["rv"], int) or row["rv"] > top:
        raise BackupError(
            f"line {number}: {row['kind']} {row['name']} has resourceVersion {row['rv']}, not one "
            f"at most the backup's {top}: the file is damaged"
        )
    try:
        obj = jsoncodec.loads(row["body"])
        row.update(_index_columns(obj))
    except (ValueError, TypeError, KeyError, AttributeError):
        raise BackupError(
            f"line {number}: the body of {row['kind']} {row['name']} is damaged"
        ) from None
    if row["kind"] in SEALED_KINDS and store.sealer is not None:
        try:
            store.sealer.open(obj)  # the right key, and a blob that opens
        except ApiError as error:
            raise BackupError(f"line {number}: {error.message}") from None
    return row


def _token_row(values: Any, number: int) -> dict[str, Any]:
    if not isinstance(values, dict) or any(name not in values for name in _TOKEN_COLUMNS):
        raise BackupError(f"line {number}: a token record without {', '.join(_TOKEN_COLUMNS)}")
    return {name: values[name] for name in _TOKEN_COLUMNS}


def _holds_anything(conn: Connection) -> bool:
    return any(
        conn.execute(sa.select(sa.literal(1)).select_from(table).limit(1)).first() is not None
        for table in (objects, tokens)
    )


def _load(
    conn: Connection,
    store: Store,
    records: Iterator[tuple[int, dict[str, Any]]],
    top: int,
    progress: Progress | None,
) -> dict[str, int]:
    """Insert the object and token records, a batch at a time; their counts, checked against
    the end record."""
    tables = {"objects": objects, "tokens": tokens}
    pending: dict[str, list[dict[str, Any]]] = {"objects": [], "tokens": []}
    counts = {"objects": 0, "tokens": 0}
    ended: dict[str, Any] | None = None
    for number, record in records:
        if ended is not None:
            raise BackupError(f"line {number} follows the backup's end record")
        if "object" in record:
            table = "objects"
            pending[table].append(_object_row(store, record["object"], number, top))
        elif "token" in record:
            table = "tokens"
            pending[table].append(_token_row(record["token"], number))
        elif isinstance(record.get("end"), dict):
            ended = record["end"]
            continue
        else:
            raise BackupError(f"line {number} is not a backup record")
        counts[table] += 1
        if len(pending[table]) >= BATCH:
            conn.execute(sa.insert(tables[table]), pending[table])
            pending[table] = []
        done = counts["objects"] + counts["tokens"]
        if progress is not None and done % PROGRESS_EVERY == 0:
            progress(done)
    if ended is None:
        raise BackupError("the backup has no end record: the file is truncated (restored nothing)")
    if {table: ended.get(table) for table in counts} != counts:
        raise BackupError(
            f"the backup's end record counts {ended.get('objects')} objects and "
            f"{ended.get('tokens')} tokens, but the file holds {counts['objects']} and "
            f"{counts['tokens']}: it is damaged (restored nothing)"
        )
    for table, rows in pending.items():
        if rows:
            conn.execute(sa.insert(tables[table]), rows)
    return counts


def restore(
    store: Store,
    source: IO[bytes],
    progress: Progress | None = None,
    *,
    force: bool = False,
    bump: int = DEFAULT_BUMP,
) -> RestoreInfo:
    """Load a backup into the store, in one transaction. Refuses a store that holds objects or
    tokens (unless force: then they go first, with the change log), a file that is not a whole
    backup of a version this code reads, and Secrets sealed with a key other than the store's.
    The restored store's resourceVersion is the greater of the backup's and the store's, plus
    bump; its change log starts there (older versions are Gone)."""
    if bump < 0:
        raise ValueError("bump is a count of versions: 0 or more")
    records = _records(source)
    first = next(records, None)
    if first is None:
        raise BackupError("not a shoal backup (the file is empty)")
    header = _header(first[1])
    top = int(header["resourceVersion"])
    key_ids = header.get("encryptionKeys") or []
    if not isinstance(key_ids, list):
        raise BackupError("the backup's header is damaged (encryptionKeys is not a list)")
    _check_keys(store, [str(key) for key in key_ids])
    try:
        with store.writing() as conn:
            if not force and _holds_anything(conn):
                raise BackupError(
                    "this store already holds objects or tokens: restore into an empty one (a "
                    "new data dir or database), or pass --force to replace them"
                )
            for table in (objects, tokens, changes):
                conn.execute(sa.delete(table))
            current = conn.execute(sa.select(counters.c.value).where(counters.c.name == "rv"))
            rv = max(top, int(current.one()[0])) + bump
            counts = _load(conn, store, records, top, progress)
            restart_versions(conn, rv)
    except (sa.exc.IntegrityError, sa.exc.DataError) as error:
        raise BackupError(
            f"the store refused a row of the backup (one held twice, or damaged): {error.orig}"
        ) from None
    return RestoreInfo(top, rv, counts["objects"], counts["tokens"], str(header.get("dialect")))
