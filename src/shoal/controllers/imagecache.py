"""ImageCache status: which of the nodes it targets hold the image (Ready), are pulling it
(Caching, with bytes), failed to (Failed, with the agent's message), or have not started
(Pending). Agents report what they cache and pull in their own Node status; this loop gathers
those into each ImageCache, so an agent never writes an object other nodes write too."""

import logging
from typing import Any

from shoal.errors import ApiError
from shoal.store.store import Obj, Store

log = logging.getLogger(__name__)


def targets(cache: Obj, nodes: list[Obj]) -> list[Obj]:
    """The nodes an ImageCache asks for (named ones that do not exist are left out)."""
    spec = cache["spec"]
    if spec.get("allNodes"):
        return nodes
    if spec.get("nodes"):
        wanted = set(spec["nodes"])
        return [n for n in nodes if n["metadata"]["name"] in wanted]
    selector: dict[str, str] = spec.get("nodeSelector") or {}
    return [
        n
        for n in nodes
        if all((n["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
    ]


def node_state(node: Obj, image: str) -> dict[str, Any]:
    status = node.get("status") or {}
    if image in (status.get("cachedImages") or []):
        return {"state": "Ready", "bytes": 0, "totalBytes": 0, "message": ""}
    for pull in status.get("imagePulls") or []:
        if pull.get("image") == image:
            return {
                "state": pull["state"],
                "bytes": int(pull.get("bytes") or 0),
                "totalBytes": int(pull.get("totalBytes") or 0),
                "message": str(pull.get("message") or ""),
            }
    return {"state": "Pending", "bytes": 0, "totalBytes": 0, "message": ""}


def cache_status(cache: Obj, nodes: list[Obj]) -> dict[str, Any]:
    image = cache["spec"]["image"]
    per_node = {n["metadata"]["name"]: node_state(n, image) for n in targets(cache, nodes)}
    states = [entry["state"] for entry in per_node.values()]
    return {
        "nodes": per_node,
        "desired": len(per_node),
        "ready": states.count("Ready"),
        "failed": states.count("Failed"),
    }


class ImageCacheController:
    def __init__(self, store: Store) -> None:
        self.store = store

    def run_once(self) -> None:
        caches, _ = self.store.list_objects("ImageCache")
        if not caches:
            return
        nodes, _ = self.store.list_objects("Node")
        for cache in caches:
            wanted = cache_status(cache, nodes)
            if (cache.get("status") or {}) == wanted:
                continue
            try:
                self.store.mutate("ImageCache", "", cache["metadata"]["name"], _set_status(wanted))
            except ApiError as error:  # deleted meanwhile: nothing to report
                log.debug("image cache %s: %s", cache["metadata"]["name"], error)


def _set_status(status: dict[str, Any]) -> Any:
    def change(obj: Obj) -> Obj | None:
        if obj.get("status") == status:
            return None
        obj["status"] = status
        return obj

    return change
