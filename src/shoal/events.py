"""Recording Events: one object per (involved object, reason), counted when it repeats."""

import hashlib
import logging
from typing import Any

from shoal.errors import AlreadyExists, ApiError
from shoal.model.meta import API_VERSION, now_iso
from shoal.store.store import Obj, Store

log = logging.getLogger(__name__)

# Events of cluster-scoped objects (Nodes, Namespaces) live here, as in Kubernetes.
CLUSTER_EVENTS_NAMESPACE = "default"


def event_name(kind: str, namespace: str, name: str, reason: str) -> str:
    digest = hashlib.sha256(f"{kind}/{namespace}/{name}/{reason}".encode()).hexdigest()[:10]
    return f"{name[:50].rstrip('-')}.{digest}".replace(".", "-")


def new_event(
    involved: Obj, reason: str, message: str, *, type_: str = "Normal", source: str = "controller"
) -> Obj:
    meta = involved["metadata"]
    kind, name = involved["kind"], meta["name"]
    namespace = meta.get("namespace") or CLUSTER_EVENTS_NAMESPACE
    now = now_iso()
    return {
        "apiVersion": API_VERSION,
        "kind": "Event",
        "metadata": {
            "name": event_name(kind, namespace, name, reason),
            "namespace": namespace,
            "labels": {},
            "annotations": {},
            "finalizers": [],
        },
        "involvedObject": {
            "kind": kind,
            "name": name,
            **({"namespace": meta["namespace"]} if meta.get("namespace") else {}),
            **({"uid": meta["uid"]} if meta.get("uid") else {}),
        },
        "reason": reason,
        "message": message[:32768],
        "type": type_,
        "count": 1,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "source": source,
    }


def bump(existing: Obj, fresh: Obj) -> Obj:
    existing.update(
        message=fresh["message"],
        type=fresh["type"],
        count=int(existing.get("count", 1)) + 1,
        lastTimestamp=fresh["lastTimestamp"],
        involvedObject=fresh["involvedObject"],
    )
    return existing


def record(
    store: Store,
    involved: Obj,
    reason: str,
    message: str,
    *,
    type_: str = "Normal",
    source: str = "controller",
) -> None:
    """Record an Event; never fails the caller (an event is a report, not part of the change)."""
    event = new_event(involved, reason, message, type_=type_, source=source)
    meta = event["metadata"]
    try:
        with store.tx() as tx:
            current = tx.get("Event", meta["namespace"], meta["name"])
            if current is None:
                tx.insert(event)
            else:
                tx.replace(bump(current, event))
    except (AlreadyExists, ApiError) as error:
        log.debug("event %s not recorded: %s", reason, error)
    except Exception:  # e.g. a busy database: the event is dropped, the change it reports stands
        log.warning("event %s for %s not recorded", reason, meta["name"], exc_info=True)


def involved_stub(kind: str, namespace: str | None, name: str) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": namespace}}
