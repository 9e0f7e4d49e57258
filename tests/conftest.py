"""Shared fixtures and object builders.

pytest puts this directory on sys.path (there is no tests/__init__.py), so `fixtures.*` and
`helpers` import as top-level modules.
"""

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from builders import Obj, build_node, build_vm
from fixtures.postgres import postgres_db, postgres_server, postgres_url
from shoal.store.store import Store

__all__ = ["postgres_db", "postgres_server", "postgres_url"]


@pytest.fixture(scope="session")
def make_node() -> Callable[..., Obj]:
    return build_node


@pytest.fixture(scope="session")
def make_vm() -> Callable[..., Obj]:
    return build_vm


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A store URL on each backend: a SQLite file, and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/s.db"
    return str(request.getfixturevalue("postgres_db"))


@pytest.fixture
def open_store(store_url: str) -> Iterator[Callable[..., Store]]:
    """Open Stores on the test's database; all are closed at the end."""
    opened: list[Store] = []

    def open_(**kwargs: Any) -> Store:
        store = Store(store_url, **kwargs)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()
