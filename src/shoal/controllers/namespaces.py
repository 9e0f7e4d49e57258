"""Namespace deletion: delete everything in a terminating namespace (VMs through their normal
graceful path), revoke its service-account tokens, then let the namespace go."""

import logging

from shoal.errors import ApiError
from shoal.model.kinds import NAMESPACE_FINALIZER
from shoal.model.registry import KINDS
from shoal.store.store import Obj, Store
from shoal.store.tokens import TokenStore

log = logging.getLogger(__name__)

# VMs first, so their agents start releasing disks while the rest goes.
ORDER = ["VirtualMachine"] + [k.kind for k in KINDS if k.namespaced and k.kind != "VirtualMachine"]


class NamespaceFinalizer:
    def __init__(self, store: Store, tokens: TokenStore) -> None:
        self.store = store
        self.tokens = tokens

    def run_once(self) -> None:
        for namespace in self.store.list_objects("Namespace")[0]:
            if namespace["metadata"].get("deletionTimestamp"):
                self._finalize(namespace["metadata"]["name"])

    def _finalize(self, namespace: str) -> None:
        remaining = 0
        for kind in ORDER:
            for obj in self.store.list_objects(kind, namespace)[0]:
                remaining += 1
                meta = obj["metadata"]
                if meta.get("deletionTimestamp"):
                    continue
                try:
                    _, gone = self.store.delete(
                        kind, namespace, meta["name"], expect_uid=meta["uid"]
                    )
                    if gone:
                        remaining -= 1
                    if kind == "ServiceAccount":
                        self.tokens.revoke_subject("ServiceAccount", namespace, meta["name"])
                except ApiError as error:
                    log.debug("deleting %s %s/%s: %s", kind, namespace, meta["name"], error)
        if remaining == 0:
            self.store.mutate("Namespace", "", namespace, _release)


def _release(namespace: Obj) -> Obj | None:
    finalizers = namespace["metadata"].get("finalizers") or []
    if NAMESPACE_FINALIZER not in finalizers:
        return None
    namespace["metadata"]["finalizers"] = [f for f in finalizers if f != NAMESPACE_FINALIZER]
    return namespace
