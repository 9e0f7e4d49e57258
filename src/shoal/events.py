"""Event objects: named per (involved object, reason), so a repeat is counted, not duplicated."""

import hashlib
from typing import Any

from shoal.model.meta import API_VERSION, now_iso

Obj = dict[str, Any]

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


def involved_stub(kind: str, namespace: str | None, name: str) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": namespace}}
