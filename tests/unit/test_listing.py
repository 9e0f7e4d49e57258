"""Lists served from the stored JSON text (spliced, not parsed and dumped again), their pages,
and watch events around stored text."""

import json
from collections.abc import Iterator
from typing import Any

import pytest

from builders import build_node, build_vm
from shoal import jsoncodec
from shoal.api.listing import (
    Page,
    _stored_line,
    list_page,
    list_response,
    make_query,
    watch_start,
)
from shoal.errors import Gone
from shoal.model.registry import BY_KIND
from shoal.store.store import Store

Obj = dict[str, Any]
NODE, VM = BY_KIND["Node"], BY_KIND["VirtualMachine"]


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    store = Store(store_url)
    with store.tx() as tx:
        tx.insert_many([build_node(f"n{i:02}") for i in range(12)])
        free = build_vm("free")
        free["metadata"]["labels"] = {"tier": "web"}
        tx.insert_many([build_vm(f"vm{i:02}", nodeName=f"n{i % 3:02}") for i in range(9)] + [free])
    yield store
    store.close()


def names(response: bytes) -> list[str]:
    return [item["metadata"]["name"] for item in json.loads(response)["items"]]


def test_a_list_is_the_stored_objects_as_they_are(store: Store) -> None:
    response = list_response(NODE, list_page(store, make_query(NODE, None, None, None), None, None))
    listing = json.loads(response)
    stored, rv = store.list_objects("Node")
    assert listing == {
        "apiVersion": "shoal.dev/v1",
        "kind": "NodeList",
        "metadata": {"resourceVersion": str(rv)},
        "items": stored,
    }


def test_pages_follow_continue_tokens_to_the_end(store: Store) -> None:
    query = make_query(NODE, None, None, None)
    seen: list[str] = []
    cont = None
    pages = 0
    while True:
        page = list_page(store, query, 5, cont)
        listing = json.loads(list_response(NODE, page))
        seen += [item["metadata"]["name"] for item in listing["items"]]
        pages += 1
        cont = listing["metadata"].get("continue")
        if not cont:
            break
    assert seen == [f"n{i:02}" for i in range(12)]
    assert pages == 3


def test_a_page_that_ends_exactly_at_the_last_object_has_no_continue(store: Store) -> None:
    page = list_page(store, make_query(NODE, None, None, None), 12, None)
    assert len(page.bodies) == 12 and page.cont is None
    page = list_page(store, make_query(NODE, None, None, None), 11, None)
    assert len(page.bodies) == 11 and page.cont is not None


@pytest.mark.parametrize(
    ("labels", "fields", "limit", "expected"),
    [
        (None, "spec.nodeName=n01", None, ["vm01", "vm04", "vm07"]),
        (None, "spec.nodeName=n01", 2, ["vm01", "vm04"]),
        ("tier=web", None, None, ["free"]),
        ("tier=web", "spec.nodeName=n01", None, []),
    ],
)
def test_selectors(
    store: Store, labels: str | None, fields: str | None, limit: int | None, expected: list[str]
) -> None:
    query = make_query(VM, "default", labels, fields)
    assert names(list_response(VM, list_page(store, query, limit, None))) == expected


def test_an_empty_list_is_valid_json(store: Store) -> None:
    query = make_query(VM, "nowhere", None, None)
    assert json.loads(list_response(VM, list_page(store, query, None, None)))["items"] == []


def test_watch_starts_from_a_page_or_from_a_version_the_log_still_has(store: Store) -> None:
    query = make_query(VM, "default", None, "spec.nodeName=n02")
    start = watch_start(store, query, None)
    assert isinstance(start, Page)
    assert [jsoncodec.loads(b)["metadata"]["name"] for b in start.bodies] == [
        "vm02",
        "vm05",
        "vm08",
    ]
    assert watch_start(store, query, 3) == 3
    small = Store(store.url, change_retention=1)
    small.compact()
    with pytest.raises(Gone):
        watch_start(small, query, 1)
    small.close()


def test_a_watch_event_wraps_the_stored_text() -> None:
    obj = build_vm("x")
    line = _stored_line("MODIFIED", jsoncodec.dumps(obj))
    assert line.endswith(b"\n")
    assert json.loads(line) == {"type": "MODIFIED", "object": obj}
