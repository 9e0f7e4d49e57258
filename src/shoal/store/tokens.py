"""Bearer tokens: random, shown once, stored as a SHA-256 of their secret half.

A token reads `<id>.<secret>`: the id finds the row, the secret is compared by hash. Secrets carry
256 random bits, so a plain SHA-256 is as strong as a password hash would be, and cheap per request.
"""

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from shoal.store.schema import tokens
from shoal.store.store import Store


@dataclass(frozen=True)
class TokenRecord:
    id: str
    subject_kind: str  # User, ServiceAccount, Node, Join
    subject_namespace: str
    subject_name: str
    created_at: float
    expires_at: float | None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _record(row: Any) -> TokenRecord:
    return TokenRecord(row[0], row[1], row[2], row[3], row[4], row[5])


_COLUMNS = (
    tokens.c.id,
    tokens.c.subject_kind,
    tokens.c.subject_namespace,
    tokens.c.subject_name,
    tokens.c.created_at,
    tokens.c.expires_at,
)


def _check(known: dict[str, tuple[str, TokenRecord]], token: str) -> TokenRecord | None:
    """The record of token among known ones, if its secret matches and it has not expired."""
    token_id, _, secret = token.partition(".")
    entry = known.get(token_id)
    if entry is None or not hmac.compare_digest(entry[0], _hash(secret)):
        return None
    record = entry[1]
    if record.expires_at is not None and record.expires_at < time.time():
        return None
    return record


# How long the tokens read from the database are trusted without asking it again. A revocation in
# this process takes effect at once; another controller replica sees it within this time.
CACHE_SECONDS = 5.0

_READ_ONE = sa.select(*_COLUMNS, tokens.c.secret_hash).where(tokens.c.id == sa.bindparam("id"))
_READ_LIVE = sa.select(*_COLUMNS, tokens.c.secret_hash).where(
    sa.or_(tokens.c.expires_at.is_(None), tokens.c.expires_at > sa.bindparam("now"))
)


class TokenStore:
    def __init__(self, store: Store, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock
        # Every live token's id -> (secret hash, record), as read at _read_at. While that is
        # recent, requests are authenticated from here: no database read, and no worker thread
        # to do one in (an agent heartbeating every 10 s would miss any per-token cache of 5 s).
        self._known: dict[str, tuple[str, TokenRecord]] = {}
        self._read_at = -math.inf
        self._revocations = 0  # a read that overlapped a revocation must not be kept
        self._refresh_lock = threading.Lock()

    def _fresh(self) -> bool:
        return self._clock() - self._read_at <= CACHE_SECONDS

    def _forget_all(self) -> None:
        self._revocations += 1
        self._read_at = -math.inf
        self._known = {}

    def cached(self, token: str) -> TokenRecord | None:
        """The record of a valid token, from the tokens read in the last few seconds, without a
        database read; None when they cannot tell (ask verify)."""
        return _check(self._known, token) if self._fresh() else None

    def issue(
        self, subject_kind: str, namespace: str, name: str, ttl_seconds: float | None = None
    ) -> tuple[str, TokenRecord]:
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        now = time.time()
        record = TokenRecord(
            token_id, subject_kind, namespace, name, now, now + ttl_seconds if ttl_seconds else None
        )
        with self._store.writing() as conn:
            conn.execute(
                sa.insert(tokens).values(
                    id=token_id,
                    secret_hash=_hash(secret),
                    subject_kind=subject_kind,
                    subject_namespace=namespace,
                    subject_name=name,
                    created_at=now,
                    expires_at=record.expires_at,
                )
            )
        self._known[token_id] = (_hash(secret), record)
        return f"{token_id}.{secret}", record

    def refresh(self) -> None:
        """Read every live token into the in-memory copy. The controller calls this on a timer
        shorter than CACHE_SECONDS, so requests never find the copy stale and never wait on the
        read (nor make it many times over, arriving together when it went stale)."""
        with self._refresh_lock:
            self._refresh()

    def _refresh(self) -> None:
        revocations = self._revocations
        started = self._clock()
        with self._store.read_engine.connect() as conn:
            rows = conn.execute(_READ_LIVE, {"now": time.time()}).all()
        if revocations == self._revocations:
            self._known = {row[0]: (row[6], _record(row)) for row in rows}
            self._read_at = started

    def verify(self, token: str) -> TokenRecord | None:
        """The record of a valid token, from the database: every live token when those read
        before are stale (one read for many requests to come), else just this one."""
        token_id, _, secret = token.partition(".")
        if not token_id or not secret or len(token) > 200:
            return None
        if not self._fresh():
            with self._refresh_lock:
                if not self._fresh():  # else another request read them meanwhile
                    self._refresh()
        if self._fresh() and token_id in self._known:
            return _check(self._known, token)
        revocations = self._revocations
        with self._store.read_engine.connect() as conn:
            row = conn.execute(_READ_ONE, {"id": token_id}).first()
        known = {} if row is None else {token_id: (row[6], _record(row))}
        if revocations == self._revocations:
            self._known.pop(token_id, None)
            self._known.update(known)
        return _check(known, token)

    def list(
        self, subject_kind: str, namespace: str = "", name: str | None = None
    ) -> list[TokenRecord]:
        query = sa.select(*_COLUMNS).where(
            tokens.c.subject_kind == subject_kind, tokens.c.subject_namespace == namespace
        )
        if name is not None:
            query = query.where(tokens.c.subject_name == name)
        with self._store.read_engine.connect() as conn:
            return [_record(row) for row in conn.execute(query.order_by(tokens.c.created_at))]

    def revoke(self, token_id: str) -> bool:
        with self._store.writing() as conn:
            removed = bool(conn.execute(sa.delete(tokens).where(tokens.c.id == token_id)).rowcount)
        self._forget_all()
        return removed

    def revoke_subject(self, subject_kind: str, namespace: str, name: str) -> int:
        with self._store.writing() as conn:
            removed = int(
                conn.execute(
                    sa.delete(tokens).where(
                        tokens.c.subject_kind == subject_kind,
                        tokens.c.subject_namespace == namespace,
                        tokens.c.subject_name == name,
                    )
                ).rowcount
            )
        self._forget_all()
        return removed

    def get(self, token_id: str) -> TokenRecord | None:
        with self._store.read_engine.connect() as conn:
            row = conn.execute(sa.select(*_COLUMNS).where(tokens.c.id == token_id)).first()
        return _record(row) if row else None
