"""The scheduler's view of warm pools in one pass: which pool serves a pending VM, which
entries it may take, and where a clone-mode pool's goldens already are.

A VM of a pooled VMConfig takes a ready entry on a node that passes every filter for it, and so
is placed where its entry is; when none fits it is placed as any VM is, and boots cold. The
binder re-checks the entry in the binding transaction (`binder._take_entry`), so one entry is
never handed to two VMs, however many race for it.
"""

from collections import defaultdict
from dataclasses import dataclass, field

from shoal.scheduler.binder import Claim
from shoal.store.store import Obj
from shoal.warmpool import entries


@dataclass
class ClaimIndex:
    # (namespace, config) -> pool
    pools: dict[tuple[str, str], Obj] = field(default_factory=dict)
    # (namespace, pool) -> its claimable entries, oldest saved first
    ready: dict[tuple[str, str], list[Obj]] = field(default_factory=lambda: defaultdict(list))
    # (namespace, pool) -> nodes holding (or being given) a live golden of a clone-mode pool
    goldens: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))

    @staticmethod
    def of(pools: list[Obj], vms: list[Obj]) -> "ClaimIndex":
        index = ClaimIndex()
        for pool in pools:
            meta = pool["metadata"]
            if not meta.get("deletionTimestamp"):
                index.pools[(meta["namespace"], pool["spec"]["config"])] = pool
        for vm in vms:
            pool_name = entries.pool_of(vm)
            if pool_name is None:
                continue
            key = (vm["metadata"]["namespace"], pool_name)
            if entries.claimable(vm):
                index.ready[key].append(vm)
            if (
                entries.is_clone_golden(vm)
                and vm["spec"].get("nodeName")
                and not vm["metadata"].get("deletionTimestamp")
                and (vm.get("status") or {}).get("phase") != "Failed"
            ):
                index.goldens[key].add(vm["spec"]["nodeName"])
        for ready in index.ready.values():
            ready.sort(key=lambda e: entries.saved_at(e) or 0.0)
        return index

    def pool_for(self, vm: Obj) -> Obj | None:
        """The pool serving a VM (never an entry itself)."""
        config = vm["spec"].get("config")
        if not config or entries.pool_of(vm) is not None:
            return None
        return self.pools.get((vm["metadata"]["namespace"], config))

    def candidates(self, pool: Obj, vm: Obj) -> list[Obj]:
        """The ready entries of the pool that can become this VM (same machine shape)."""
        key = (pool["metadata"]["namespace"], pool["metadata"]["name"])
        wanted = entries.shape(vm["spec"])
        return [e for e in self.ready.get(key, []) if entries.shape(e["spec"]) == wanted]

    def take(self, pool: Obj, entry: Obj) -> Claim:
        """The claim of entry; a consumed one is offered to no other VM in this pass."""
        golden = entries.is_clone_golden(entry)
        if not golden:
            self.ready[(pool["metadata"]["namespace"], pool["metadata"]["name"])].remove(entry)
        meta = entry["metadata"]
        return Claim(
            pool=pool["metadata"]["name"],
            entry_name=meta["name"],
            entry_uid=meta["uid"],
            resource_version=meta["resourceVersion"],
            consume=not golden,
        )

    def golden_nodes(self, vm: Obj) -> set[str] | None:
        """For an unplaced golden of a clone-mode pool, the nodes that already hold one of its
        pool (a second there would be waste); None for any other VM."""
        pool_name = entries.pool_of(vm)
        if pool_name is None or not entries.is_clone_golden(vm):
            return None
        return self.goldens[(vm["metadata"]["namespace"], pool_name)]
