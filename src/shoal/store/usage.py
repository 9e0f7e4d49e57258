"""Usage: what VMs held, and for how long, from the store's own history.

Every transaction that writes VMs also records what each now holds (`record`, called by
Store.tx before it commits): a VM bound to a node, not saved as a warm-pool entry, holds its cpu
and memory there. A stretch of holding is one row of the usage table, opened when it starts and
closed when it ends (the VM deleted, saved, moved to another node, or resized), on the database's
clock. A report sums the stretches that overlap a window: VM-seconds, vCPU-seconds and memory
byte-seconds, grouped by namespace, image and/or node. Nothing is sampled.
"""

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shoal.model.warmpool import is_saved
from shoal.quantity import parse_bytes
from shoal.store.clock import db_now, read_now

__all__ = ["GROUPS", "Holding", "holding", "read_now", "record", "report"]
from shoal.store.schema import usage

GROUPS = ("namespace", "image", "node")


@dataclass(frozen=True)
class Holding:
    namespace: str
    name: str
    image: str
    node: str
    cpu: int
    memory: int


def holding(vm: dict[str, Any], deleted: bool) -> Holding | None:
    """What a VM holds after a change (None: nothing)."""
    if deleted:
        return None
    spec = vm.get("spec") or {}
    if not spec.get("nodeName") or is_saved(vm):
        return None
    return Holding(
        namespace=vm["metadata"]["namespace"],
        name=vm["metadata"]["name"],
        image=str(spec.get("image") or ""),
        node=str(spec["nodeName"]),
        cpu=int(spec.get("cpu") or 0),
        memory=parse_bytes(spec["memory"]) if spec.get("memory") else 0,
    )


def record(conn: Connection, changes: list[Any]) -> None:
    """Close and open stretches for the VMs these changes (one transaction's) wrote."""
    latest: dict[str, Holding | None] = {}
    for change in changes:
        if change.kind == "VirtualMachine":
            vm = json.loads(change.body)
            latest[str(vm["metadata"]["uid"])] = holding(vm, change.type == "DELETED")
    if not latest:
        return
    rows = conn.execute(
        sa.select(
            usage.c.id, usage.c.uid, usage.c.namespace, usage.c.name, usage.c.image,
            usage.c.node, usage.c.cpu, usage.c.memory,
        ).where(usage.c.uid.in_(list(latest)), usage.c.ended.is_(None))
    ).all()  # fmt: skip
    held = {
        str(r[1]): (int(r[0]), Holding(r[2], r[3], r[4], r[5], int(r[6]), int(r[7]))) for r in rows
    }
    now = db_now(conn)
    closing = [held[uid][0] for uid, new in latest.items() if uid in held and held[uid][1] != new]
    if closing:
        conn.execute(sa.update(usage).where(usage.c.id.in_(closing)).values(ended=now))
    opening = [
        {"uid": uid, **new.__dict__}
        for uid, new in latest.items()
        if new is not None and (uid not in held or held[uid][1] != new)
    ]
    for row in opening:  # one statement each: the clock expression is the database's
        conn.execute(sa.insert(usage).values(**row, started=now))


def report(
    conn: Connection, since: float, until: float | None, group_by: tuple[str, ...],
    namespace: str | None = None,
) -> tuple[float, float, list[dict[str, Any]]]:  # fmt: skip
    """Per group: VMs, VM-seconds, vCPU-seconds and memory byte-seconds held in [since, until]
    (until None: now). Also the window as the database's clock saw it."""
    now = read_now(conn)
    end = now if until is None else min(until, now)
    start = min(since, end)
    stop = sa.func.coalesce(usage.c.ended, end)
    query = sa.select(
        *[getattr(usage.c, g) for g in group_by], usage.c.uid, usage.c.cpu, usage.c.memory,
        usage.c.started, stop,
    ).where(usage.c.started <= end, sa.or_(usage.c.ended.is_(None), usage.c.ended > start))  # fmt: skip
    if namespace is not None:
        query = query.where(usage.c.namespace == namespace)
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for row in conn.execute(query):
        key = tuple(str(v) for v in row[: len(group_by)])
        uid, cpu, memory, began, ended = row[len(group_by) :]
        seconds = max(0.0, min(float(ended), end) - max(float(began), start))
        item = groups.setdefault(
            key,
            {
                **dict(zip(group_by, key, strict=True)),
                "uids": set(),
                "vmSeconds": 0.0,
                "cpuSeconds": 0.0,
                "memoryByteSeconds": 0.0,
            },
        )
        item["uids"].add(uid)
        item["vmSeconds"] += seconds
        item["cpuSeconds"] += seconds * int(cpu)
        item["memoryByteSeconds"] += seconds * int(memory)
    items = []
    for key in sorted(groups):
        item = groups[key]
        item["vms"] = len(item.pop("uids"))
        items.append(item)
    return start, end, items
