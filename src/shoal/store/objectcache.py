"""The current stored JSON of the kinds listed most (Nodes, VMs), kept in memory by the watch hub.

A list of a thousand Nodes, read from the database, costs the controller a query, a thousand rows
turned into Python strings and a worker thread to do it in while agents heartbeat; from here it
costs a copy of a thousand references. The hub applies every change, in version order, as it
learns of it. A list is answered from here only when that is provably as fresh as the database:
the hub has applied every change up to the database's current version, read just before (on a
PostgreSQL shared by several controllers, another's commit may not have reached this hub yet;
then the list reads the database as before).
"""

import bisect
import threading
from collections.abc import Iterable

from shoal.store.store import Change

Key = tuple[str, str]  # (namespace, name)

CACHED_KINDS = ("Node", "VirtualMachine")


class ObjectCache:
    def __init__(self, kinds: Iterable[str] = CACHED_KINDS) -> None:
        self.kinds = frozenset(kinds)
        # Writes come from the event loop's thread, reads from worker threads.
        self._lock = threading.Lock()
        self._bodies: dict[str, dict[Key, str]] = {}
        self._keys: dict[str, list[Key]] = {}  # each kind's keys, sorted
        self._loaded_at: dict[str, int] = {}  # the version a kind's objects were read at
        self._applied = 0  # every change up to this version has been applied

    def load(
        self, kind: str, rows: Iterable[tuple[str, str, str]], rv: int, since: Iterable[Change]
    ) -> None:
        """A kind's objects as read from the database at version rv, and the changes the hub
        applied while they were read (those of the kind after rv are applied now)."""
        bodies = {(namespace, name): body for namespace, name, body in rows}
        keys = sorted(bodies)
        with self._lock:
            self._bodies[kind], self._keys[kind], self._loaded_at[kind] = bodies, keys, rv
            self._apply(change for change in since if change.kind == kind)

    def clear(self) -> None:
        """Forget everything (the hub lost track of the log): lists read the database until the
        kinds are loaded again."""
        with self._lock:
            self._bodies, self._keys, self._loaded_at = {}, {}, {}

    def apply(self, batch: list[Change]) -> None:
        """Changes that follow the last applied one, in order."""
        with self._lock:
            self._apply(batch)
            if batch:
                self._applied = batch[-1].rv

    def _apply(self, changes: Iterable[Change]) -> None:
        for change in changes:
            loaded_at = self._loaded_at.get(change.kind)
            if loaded_at is None or change.rv <= loaded_at:
                continue  # not cached, or already in what was loaded
            bodies, keys = self._bodies[change.kind], self._keys[change.kind]
            key = (change.namespace, change.name)
            if change.type == "DELETED":
                if bodies.pop(key, None) is not None:
                    del keys[bisect.bisect_left(keys, key)]
            else:
                if key not in bodies:
                    bisect.insort(keys, key)
                bodies[key] = change.body

    def page(
        self,
        kind: str,
        namespace: str | None,
        after: Key | None,
        limit: int | None,
        fresh_as_of: int,
    ) -> tuple[list[str], int, Key | None] | None:
        """Up to limit objects of a kind (in a namespace) after a key, in key order, with the
        version they are current at and the last key when more follow; None when the cache
        cannot answer: the kind is not cached, or not everything up to fresh_as_of is applied."""
        with self._lock:
            loaded_at = self._loaded_at.get(kind)
            if loaded_at is None or max(loaded_at, self._applied) < fresh_as_of:
                return None
            keys, bodies = self._keys[kind], self._bodies[kind]
            start, end = 0, len(keys)
            if namespace is not None:
                start = bisect.bisect_left(keys, (namespace, ""))
                end = bisect.bisect_left(keys, (namespace + "\0", ""), lo=start)
            if after is not None:
                start = max(start, bisect.bisect_right(keys, after))
            stop = end if limit is None else min(end, start + limit)
            page = [bodies[key] for key in keys[start:stop]]
            last = keys[stop - 1] if stop < end and stop > start else None
            return page, max(loaded_at, self._applied), last
