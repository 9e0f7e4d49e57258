"""List (with selectors and pages) and watch (newline-delimited JSON) for any kind."""

import base64
import binascii
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from shoal import jsoncodec
from shoal.errors import ApiError, BadRequest, Gone
from shoal.model.meta import API_VERSION
from shoal.model.registry import KindInfo
from shoal.selectors import Predicate, field_predicate, label_predicate, parse_field_selector
from shoal.store.objectcache import ObjectCache
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

    @property
    def filtered(self) -> bool:
        """Whether objects must be looked into (parsed) to tell if they match."""
        return self.labels is not None or self.fields is not None

    @property
    def bound_to(self) -> str | None:
        """The node whose VMs are wanted (fieldSelector spec.nodeName=X), which the store and the
        watch hub index; None for other kinds and queries."""
        return self.node_name if self.info.kind == "VirtualMachine" else None

    def matches(self, obj: Obj) -> bool:
        if self.labels is not None and not self.labels(obj):
            return False
        return self.fields is None or self.fields(obj)

    def wants(self, change: Change) -> bool:
        if change.kind != self.info.kind:
            return False
        if self.namespace is not None and change.namespace != self.namespace:
            return False
        return not self.filtered or self.matches(change.object)


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


@dataclass(frozen=True)
class Page:
    """Listed objects as their stored JSON text, the list's version and the continue token."""

    bodies: list[str]
    rv: int
    cont: str | None = None


def list_page(
    store: Store,
    query: Query,
    limit: int | None,
    cont: str | None,
    cache: ObjectCache | None = None,
) -> Page:
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit: must be between 1 and {MAX_LIMIT}", field="limit")
    after = _decode_continue(cont) if cont else None
    if cache is not None and not query.filtered and query.bound_to is None:
        cached = cache.page(query.info.kind, query.namespace, after, limit, store.current_rv())
        if cached is not None:
            items, version, more_after = cached
            token = _encode_continue(*more_after) if more_after is not None else None
            return Page(items, version, token)
    bodies: list[str] = []
    last: tuple[str, str] | None = None
    list_rv = None
    more = False
    # One row past the limit tells whether there is more; a selector may skip rows, so then
    # read in larger batches.
    batch: int | None = None
    if limit is not None:
        batch = max(limit + 1, 500) if query.filtered else limit + 1
    while True:
        rows, rv = store.list_bodies(
            query.info.kind, query.namespace, node_name=query.bound_to, after=after, batch=batch
        )
        list_rv = list_rv or rv
        for namespace, name, body in rows:
            if query.filtered and not query.matches(jsoncodec.loads(body)):
                continue
            if limit is not None and len(bodies) == limit:
                more = True
                break
            bodies.append(body)
            last = (namespace, name)
        if more or batch is None or len(rows) < batch:
            break
        after = (rows[-1][0], rows[-1][1])
    token = _encode_continue(*last) if more and last is not None else None
    return Page(bodies, list_rv, token)


def list_response(info: KindInfo, page: Page) -> bytes:
    """The List object of a page, with the stored text of its items spliced in unparsed."""
    metadata: dict[str, Any] = {"resourceVersion": str(page.rv)}
    if page.cont is not None:
        metadata["continue"] = page.cont
    head = jsoncodec.dumps_bytes(
        {"apiVersion": API_VERSION, "kind": f"{info.kind}List", "metadata": metadata}
    )
    return b"".join((head[:-1], b',"items":[', ",".join(page.bodies).encode(), b"]}"))


def _line(event_type: str, obj: Obj) -> bytes:
    return jsoncodec.dumps_bytes({"type": event_type, "object": obj}) + b"\n"


def _stored_line(event_type: str, body: str) -> bytes:
    """A watch event around an object's stored JSON text."""
    return b"".join((b'{"type":"', event_type.encode(), b'","object":', body.encode(), b"}\n"))


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


def watch_start(
    store: Store, query: Query, since: int | None, cache: ObjectCache | None = None
) -> Page | int:
    """Where a watch starts: from what exists (since None: a page of it, sent as ADDED events),
    or from since, once it is known to be in the change log (else Gone (410), raised before the
    stream starts)."""
    if since is None:
        return list_page(store, query, None, None, cache)
    store.changes_since(since, 1)
    return since


async def watch(
    hub: WatchHub,
    query: Query,
    start: Page | int,
    *,
    timeout: float | None,
    bookmark_interval: float,
    reveal: Callable[[str], str] | None = None,
) -> AsyncIterator[bytes]:
    """ADDED events for what exists (when start is a Page), then every change that matches.
    reveal turns a change's stored text into what the client gets (it opens Secrets; the page
    comes opened already); None: as stored."""
    if isinstance(start, Page):
        if start.bodies:
            yield b"".join(_stored_line("ADDED", body) for body in start.bodies)
        since = start.rv
    else:
        since = start
    deadline = None if timeout is None else time.monotonic() + timeout
    last_sent = since
    heartbeat = (
        bookmark_interval
        if deadline is None
        else min(bookmark_interval, max(0.05, timeout or bookmark_interval))
    )
    stream = hub.changes(
        since,
        kind=query.info.kind,
        node_name=query.bound_to,
        heartbeat=heartbeat,
        # A watch that runs until the client goes (an agent's) gets its first bookmark after a
        # random extra part of the interval: opened together (a fleet reconnecting), such watches
        # would otherwise all get theirs at the same instant, every time.
        first_heartbeat=heartbeat * random.uniform(1, 2) if deadline is None else None,
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
                body = change.body if reveal is None else reveal(change.body)
                yield _stored_line(change.type, body)
                last_sent = change.rv
    except Gone as error:
        yield _line("ERROR", error.status())
    except ApiError as error:
        yield _line("ERROR", error.status())
    finally:
        await stream.aclose()
