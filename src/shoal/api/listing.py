"""List (with selectors and pages) and watch (newline-delimited JSON) for any kind."""

import asyncio
import base64
import binascii
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from shoal import jsoncodec
from shoal.errors import ApiError, BadRequest, Gone
from shoal.model.meta import API_VERSION
from shoal.model.registry import KindInfo
from shoal.selectors import Predicate, field_predicate, label_predicate, parse_field_selector
from shoal.store.store import Change, Obj, Store
from shoal.store.watch import WatchHub

MAX_LIMIT = 10_000


@dataclass(frozen=True)
class Query:
    info: KindInfo
    namespace: str | None
    labels: Predicate | None
    fields: Predicate | None
    node_name: str | None

    def matches(self, obj: Obj) -> bool:
        if self.labels is not None and not self.labels(obj):
            return False
        return self.fields is None or self.fields(obj)

    def wants(self, change: Change) -> bool:
        if change.kind != self.info.kind:
            return False
        if self.namespace is not None and change.namespace != self.namespace:
            return False
        return self.matches(change.object)


def make_query(
    info: KindInfo, namespace: str | None, label_selector: str | None, field_selector: str | None
) -> Query:
    terms = parse_field_selector(field_selector)
    node_name = next(
        (value for path, op, value in terms if path == "spec.nodeName" and op == "="), None
    )
    return Query(
        info, namespace, label_predicate(label_selector), field_predicate(terms), node_name
    )


def _encode_continue(namespace: str, name: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([namespace, name]).encode()).decode()


def _decode_continue(token: str) -> tuple[str, str]:
    try:
        namespace, name = json.loads(base64.urlsafe_b64decode(token.encode()))
        if not isinstance(namespace, str) or not isinstance(name, str):
            raise ValueError
        return namespace, name
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("continue: not a token this server handed out", field="continue") from None


def list_objects(store: Store, query: Query, limit: int | None, cont: str | None) -> Obj:
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit: must be between 1 and {MAX_LIMIT}", field="limit")
    after = _decode_continue(cont) if cont else None
    items: list[Obj] = []
    list_rv = None
    more = False
    node_name = query.node_name if query.info.kind == "VirtualMachine" else None
    batch = None if limit is None else max(limit, 500)
    while True:
        page, rv = store.list_objects(
            query.info.kind, query.namespace, node_name=node_name, after=after, batch=batch
        )
        list_rv = list_rv or rv
        for obj in page:
            if not query.matches(obj):
                continue
            if limit is not None and len(items) == limit:
                more = True
                break
            items.append(obj)
        if more or batch is None or len(page) < batch:
            break
        last = page[-1]["metadata"]
        after = (last.get("namespace") or "", last["name"])
    metadata: dict[str, Any] = {"resourceVersion": str(list_rv)}
    if more and items:
        last_meta = items[-1]["metadata"]
        metadata["continue"] = _encode_continue(last_meta.get("namespace") or "", last_meta["name"])
    return {
        "apiVersion": API_VERSION,
        "kind": f"{query.info.kind}List",
        "metadata": metadata,
        "items": items,
    }


def _line(event_type: str, obj: Obj) -> bytes:
    return jsoncodec.dumps_bytes({"type": event_type, "object": obj}) + b"\n"


def _bookmark(info: KindInfo, rv: int) -> bytes:
    return _line(
        "BOOKMARK",
        {"apiVersion": API_VERSION, "kind": info.kind, "metadata": {"resourceVersion": str(rv)}},
    )


def parse_resource_version(text: str | None) -> int | None:
    if text in (None, "", "0"):
        return None
    try:
        value = int(str(text))
    except ValueError:
        raise BadRequest(
            f"resourceVersion {text!r} is not a number", field="resourceVersion"
        ) from None
    if value < 0:
        raise BadRequest("resourceVersion must not be negative", field="resourceVersion")
    return value


async def check_watchable(store: Store, since: int | None) -> None:
    """Raise Gone (410) before the stream starts when `since` is older than the change log."""
    if since is not None:
        await asyncio.to_thread(store.changes_since, since, 1)


async def watch(
    store: Store,
    hub: WatchHub,
    query: Query,
    since: int | None,
    *,
    timeout: float | None,
    bookmark_interval: float,
) -> AsyncIterator[bytes]:
    """ADDED events for what exists (when since is None), then every change that matches."""
    if since is None:
        listing = await asyncio.to_thread(list_objects, store, query, None, None)
        for obj in listing["items"]:
            yield _line("ADDED", obj)
        since = int(listing["metadata"]["resourceVersion"])
    deadline = None if timeout is None else time.monotonic() + timeout
    last_sent = since
    stream = hub.changes(
        since,
        kind=query.info.kind,
        heartbeat=bookmark_interval
        if deadline is None
        else min(bookmark_interval, max(0.05, timeout or bookmark_interval)),
    )
    try:
        async for change in stream:
            if deadline is not None and time.monotonic() >= deadline:
                break
            if isinstance(change, int):
                if change > last_sent:
                    last_sent = change
                yield _bookmark(query.info, last_sent)
                continue
            if query.wants(change):
                yield _line(change.type, change.object)
                last_sent = change.rv
    except Gone as error:
        yield _line("ERROR", error.status())
    except ApiError as error:
        yield _line("ERROR", error.status())
    finally:
        await stream.aclose()
