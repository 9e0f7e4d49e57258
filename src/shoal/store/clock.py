"""The database's clock: leases and usage are timed by it, never by a replica's own."""

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


def db_now(conn: Connection) -> Any:
    """The database's clock, in seconds since the epoch, as an SQL expression."""
    if conn.dialect.name == "postgresql":
        return sa.func.extract("epoch", sa.func.clock_timestamp())
    return (sa.func.julianday("now") - 2440587.5) * 86400.0


def read_now(conn: Connection) -> float:
    """The database's clock now."""
    return float(conn.execute(sa.select(db_now(conn))).scalar_one())
