"""The SQL schema: a generic objects table, a change log that watch replays from, and tokens.

The Alembic migrations in migrations/versions create exactly these tables; this module is what the
code queries through.
"""

from sqlalchemy import BigInteger, Column, Float, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

# Named counters: "rv" is the one global, monotonic resourceVersion; "compacted" is the highest
# resourceVersion whose change-log entry may have been removed.
counters = Table(
    "counters",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

objects = Table(
    "objects",
    metadata,
    Column("kind", String(63), primary_key=True),
    Column("namespace", String(63), primary_key=True),  # "" for cluster-scoped kinds
    Column("name", String(253), primary_key=True),
    Column("uid", String(36), nullable=False),
    Column("rv", BigInteger, nullable=False),
    # Copies of hot fields so the scheduler's sums and fieldSelector=spec.nodeName run in SQL.
    Column("node_name", String(63), nullable=True),
    Column("req_cpu", Integer, nullable=False, default=0),
    Column("req_memory", BigInteger, nullable=False, default=0),
    Column("req_disk", BigInteger, nullable=False, default=0),
    Column("guest_os", String(16), nullable=True),
    # A Node's last heartbeat (seconds since the epoch), so the lifecycle loop reads silent ones.
    Column("heartbeat", Float, nullable=True),
    Column("body", Text, nullable=False),
    Index("ix_objects_kind_node", "kind", "node_name"),
    Index("ix_objects_kind_heartbeat", "kind", "heartbeat"),
)

changes = Table(
    "changes",
    metadata,
    Column("rv", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(63), nullable=False),
    Column("namespace", String(63), nullable=False),
    Column("name", String(253), nullable=False),
    Column("type", String(16), nullable=False),  # ADDED, MODIFIED, DELETED
    Column("body", Text, nullable=False),
)

# Leases on the database's clock: "leader" (its holder runs the controller's loops; its epoch
# grows at each change of hands and fences the leader's writes) and "replica/<id>" (presence).
leases = Table(
    "leases",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("expires", Float, nullable=False),
    Column("address", String(256), nullable=False),
)

# What each VM held and when: one row per stretch a VM was bound to a node holding cpu and
# memory (opened at its bind, closed when it is deleted, saved as a warm-pool entry, or moved),
# written in the transaction that changed it (shoal.store.usage).
usage = Table(
    "usage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("uid", String(36), nullable=False),
    Column("namespace", String(63), nullable=False),
    Column("name", String(253), nullable=False),
    Column("image", String(512), nullable=False),
    Column("node", String(63), nullable=False),
    Column("cpu", Integer, nullable=False),
    Column("memory", BigInteger, nullable=False),
    Column("started", Float, nullable=False),
    Column("ended", Float, nullable=True),
    Index("ix_usage_uid_ended", "uid", "ended"),
    Index("ix_usage_started", "started"),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("secret_hash", String(64), nullable=False),
    Column("subject_kind", String(32), nullable=False),  # User, ServiceAccount, Node, Join
    Column("subject_namespace", String(63), nullable=False),
    Column("subject_name", String(253), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Index("ix_tokens_subject", "subject_kind", "subject_namespace", "subject_name"),
)
