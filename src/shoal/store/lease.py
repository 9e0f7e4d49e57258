"""Leases on the database's clock: which controller replica leads (and with which epoch), and
which replicas are up.

The leader lease is one row, taken or renewed under a row lock in one transaction: free (never
held, or expired by the database's clock), it goes to the asker with its epoch + 1; held by the
asker, its expiry moves on; held by another, it is left alone. No replica's own clock decides
anything. The epoch is the fencing token: the leader's loops run inside `fenced(holder, epoch)`,
and every transaction they open checks the lease still reads so (shoal.store.store._check_fence).
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shoal.store.clock import read_now as _now
from shoal.store.schema import leases
from shoal.store.store import FENCE, Store

LEADER = "leader"
REPLICA_PREFIX = "replica/"
# Replica rows gone this long are removed (a replica that went away for good).
FORGET_AFTER = 3600.0


def replica_of(holder: str) -> str:
    """The replica's name in a leader lease's holder (NAME#MARK: the mark tells incarnations of
    one replica apart)."""
    return holder.partition("#")[0]


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    epoch: int
    expires: float  # on the database's clock
    address: str
    now: float  # the database's clock when read

    @property
    def live(self) -> bool:
        return bool(self.holder) and self.expires > self.now

    @property
    def remaining(self) -> float:
        return max(0.0, self.expires - self.now)


def _row(conn: Connection, name: str, *, lock: bool) -> tuple[str, int, float, str] | None:
    query = sa.select(leases.c.holder, leases.c.epoch, leases.c.expires, leases.c.address).where(
        leases.c.name == name
    )
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).one_or_none()
    return None if row is None else (str(row[0]), int(row[1]), float(row[2]), str(row[3]))


def acquire(store: Store, holder: str, ttl: float, address: str = "") -> Lease:
    """Take the leader lease, or renew it if holder has it; the lease as it stands after."""
    with store.writing() as conn:
        now = _now(conn)
        row = _row(conn, LEADER, lock=True)
        current_holder, epoch, expires, current_address = row or ("", 0, 0.0, "")
        if current_holder == holder and expires > now:
            conn.execute(sa.update(leases).where(leases.c.name == LEADER).values(expires=now + ttl))
            return Lease(LEADER, holder, epoch, now + ttl, current_address, now)
        if current_holder and expires > now:
            return Lease(LEADER, current_holder, epoch, expires, current_address, now)
        values = {"holder": holder, "epoch": epoch + 1, "expires": now + ttl, "address": address}
        if row is None:
            conn.execute(sa.insert(leases).values(name=LEADER, **values))
        else:
            conn.execute(sa.update(leases).where(leases.c.name == LEADER).values(**values))
        return Lease(LEADER, holder, epoch + 1, now + ttl, address, now)


def release(store: Store, holder: str, epoch: int) -> None:
    """Give the leader lease up (a replica stopping): the next asker takes it at once."""
    with store.writing() as conn:
        conn.execute(
            sa.update(leases)
            .where(leases.c.name == LEADER, leases.c.holder == holder, leases.c.epoch == epoch)
            .values(expires=0.0)
        )


def heartbeat(store: Store, replica: str, ttl: float, address: str) -> None:
    """Say this replica is up for ttl seconds more (and drop replicas long gone)."""
    name = REPLICA_PREFIX + replica
    with store.writing() as conn:
        now = _now(conn)
        values = {"holder": replica, "epoch": 0, "expires": now + ttl, "address": address}
        if conn.execute(sa.update(leases).where(leases.c.name == name).values(**values)).rowcount:
            pass
        else:
            conn.execute(sa.insert(leases).values(name=name, **values))
        conn.execute(
            sa.delete(leases).where(
                leases.c.name.startswith(REPLICA_PREFIX), leases.c.expires < now - FORGET_AFTER
            )
        )


def read_all(store: Store) -> tuple[Lease | None, list[Lease]]:
    """The leader lease and the replicas' rows, on the database's clock."""
    with store.writing() as conn:
        now = _now(conn)
        rows = conn.execute(
            sa.select(
                leases.c.name, leases.c.holder, leases.c.epoch, leases.c.expires, leases.c.address
            )
        ).all()
    found = [Lease(str(r[0]), str(r[1]), int(r[2]), float(r[3]), str(r[4]), now) for r in rows]
    leader = next((lease for lease in found if lease.name == LEADER), None)
    replicas = sorted(
        (lease for lease in found if lease.name.startswith(REPLICA_PREFIX)),
        key=lambda found: found.name,
    )
    return leader, replicas


@contextlib.contextmanager
def fenced(holder: str, epoch: int) -> Iterator[None]:
    """Within: every store transaction checks the leader lease is still (holder, epoch).
    Tasks and threads started within (asyncio.create_task, to_thread) carry it along."""
    token = FENCE.set((holder, epoch))
    try:
        yield
    finally:
        FENCE.reset(token)
