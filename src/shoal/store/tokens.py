"""Bearer tokens: random, shown once, stored as a SHA-256 of their secret half.

A token reads `<id>.<secret>`: the id finds the row, the secret is compared by hash. Secrets carry
256 random bits, so a plain SHA-256 is as strong as a password hash would be, and cheap per request.
"""

import hashlib
import hmac
import secrets
import time
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


# How long a verified token is trusted without asking the database again. A revocation in this
# process clears the cache at once; another controller replica sees it within this time.
CACHE_SECONDS = 5.0
CACHE_LIMIT = 10_000


class TokenStore:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, tuple[float, TokenRecord]] = {}

    def cached(self, token: str) -> TokenRecord | None:
        """The record of a token verified in the last few seconds, without a database read."""
        hit = self._cache.get(token)
        if hit is None:
            return None
        verified_at, record = hit
        now = time.time()
        if now - verified_at > CACHE_SECONDS or (
            record.expires_at is not None and record.expires_at < now
        ):
            self._cache.pop(token, None)
            return None
        return record

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
        return f"{token_id}.{secret}", record

    def verify(self, token: str) -> TokenRecord | None:
        token_id, _, secret = token.partition(".")
        if not token_id or not secret or len(token) > 200:
            return None
        with self._store.read_engine.connect() as conn:
            row = conn.execute(
                sa.select(*_COLUMNS, tokens.c.secret_hash).where(tokens.c.id == token_id)
            ).first()
        if row is None or not hmac.compare_digest(row[6], _hash(secret)):
            return None
        record = TokenRecord(row[0], row[1], row[2], row[3], row[4], row[5])
        if record.expires_at is not None and record.expires_at < time.time():
            return None
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        self._cache[token] = (time.time(), record)
        return record

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
        self._cache.clear()
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
        self._cache.clear()
        return removed

    def get(self, token_id: str) -> TokenRecord | None:
        with self._store.read_engine.connect() as conn:
            row = conn.execute(sa.select(*_COLUMNS).where(tokens.c.id == token_id)).first()
        return _record(row) if row else None
