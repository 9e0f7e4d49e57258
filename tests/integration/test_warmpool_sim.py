"""Warm pools on sim nodes, through the API: claims under a race, refills, accounting, discards,
back-off from failing entries, scale and deletion. The guest-facing half (a real restore, a
fresh identity) is in tests/vm/test_warmpool_qemu.py."""

import base64
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers import AgentLoop, InProcessController, agent_loop, wait_until
from shoal.agent.agent import Agent, AgentSettings
from shoal.backends.sim import SimBackend, SimSettings
from shoal.client import AsyncClient, Client
from shoal.errors import ApiError, Invalid
from shoal.model.meta import get_condition
from shoal.store.store import Usage
from shoal.warmpool.entries import (
    CLAIM_ENTRY_ANNOTATION,
    CLAIM_POOL_ANNOTATION,
)

pytestmark = pytest.mark.slow
Obj = dict[str, Any]
POOL_LABEL = "warmpools.shoal.dev/pool"
NODES = ("a", "b")


@dataclass
class Cluster:
    controller: InProcessController
    client: Client
    runner: AgentLoop
    backends: dict[str, SimBackend]

    def usage(self) -> dict[str, Usage]:
        """What the nodes' VMs reserve, as the binder reads it."""
        return self.controller.plane.store.node_usages(list(NODES))

    def saved(self) -> set[str]:
        return set().union(*(backend.saved_entries() for backend in self.backends.values()))


@contextmanager
def cluster(tmp_path: Path, **sim: Any) -> Iterator[Cluster]:
    with (
        InProcessController(tmp_path, housekeeping_interval=0.2) as controller,
        agent_loop() as runner,
    ):
        client = controller.client()
        settings = SimSettings(
            **{"boot_delay": 0.2, "cpu": 64, "memory": 256 * 2**30, "max_vms": 60, **sim}
        )
        backends = {name: SimBackend(settings) for name in NODES}
        running = []
        for name, backend in backends.items():
            token, _ = controller.plane.tokens.issue("Node", "", name)
            agent = Agent(
                AsyncClient(controller.url, token),
                backend,
                AgentSettings(node_name=name, heartbeat_interval=0.5, resync_interval=1.0),
            )
            running.append(runner.start(agent))
        try:
            for name in NODES:
                wait_until(lambda name=name: client.get("nodes", name)["status"].get("warmStart"))
            client.create(
                "secrets",
                {
                    "metadata": {"name": "guest"},
                    "type": "ssh-auth",
                    "data": {"password": base64.b64encode(b"hunter2").decode()},
                },
                "default",
            )
            client.create(
                "vmconfigs",
                {
                    "metadata": {"name": "builder"},
                    "spec": {
                        "image": "sim:1",
                        "cpu": 1,
                        "memory": "1Gi",
                        "disk": "2Gi",
                        "access": {"secretRef": {"name": "guest"}},
                    },
                },
                "default",
            )
            yield Cluster(controller, client, runner, backends)
        finally:
            for future in running:
                future.cancel()


def pool(client: Client, name: str = "builders") -> Obj:
    return client.get("warmpools", name, "default")


def ready(client: Client, count: int, name: str = "builders") -> Obj | None:
    status = pool(client, name).get("status") or {}
    return status if status.get("ready") == count and status.get("refilling") == 0 else None


def entries(client: Client, name: str = "builders") -> list[Obj]:
    return [
        vm
        for vm in client.list_all("virtualmachines", "default")
        if (vm["metadata"].get("labels") or {}).get(POOL_LABEL) == name
    ]


def deploy(client: Client, name: str, **spec: Any) -> Obj:
    body = {"metadata": {"name": name}, "spec": {"config": "builder", **spec}}
    return client.create("virtualmachines", body, "default")


def events_of(client: Client, name: str) -> list[tuple[str, str, str]]:
    return [
        (e["reason"], e["type"], e["message"])
        for e in client.list_all("events", "default")
        if e["involvedObject"]["name"] == name
    ]


def test_fifty_deploys_race_for_ten_entries_and_none_goes_twice(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        client = c.client
        client.create(
            "warmpools",
            {"metadata": {"name": "builders"}, "spec": {"config": "builder", "size": 10}},
            "default",
        )
        wait_until(lambda: ready(client, 10), what="10 ready entries")
        first = {vm["metadata"]["uid"]: vm for vm in entries(client)}
        assert len(first) == 10 and c.saved() == set(first)
        for vm in first.values():
            assert vm["status"]["phase"] == "Saved"
            assert get_condition(vm, "Saved")["status"] == "True"
            assert "startupScript" not in vm["spec"] and vm["spec"]["priority"] == -1000000
        # A saved entry holds its disk, no cpu, memory or VM slot.
        usage = c.usage()
        assert sum(u.cpu for u in usage.values()) == 0
        assert sum(u.vms for u in usage.values()) == 0
        assert sum(u.disk for u in usage.values()) == 10 * (2 + 1) * 2**30  # disk and memory

        names = [f"job-{i:02d}" for i in range(50)]
        with ThreadPoolExecutor(max_workers=16) as threads:
            list(threads.map(lambda name: deploy(client, name), names))

        def all_running() -> list[Obj] | None:
            vms = [client.get("virtualmachines", name, "default") for name in names]
            return vms if all(vm["status"]["phase"] == "Running" for vm in vms) else None

        vms = wait_until(all_running, what="50 VMs Running", timeout=60)
        taken = [
            vm["metadata"]["annotations"].get(CLAIM_ENTRY_ANNOTATION)
            for vm in vms
            if CLAIM_ENTRY_ANNOTATION in vm["metadata"].get("annotations", {})
        ]
        assert Counter(taken).most_common(1)[0][1] == 1, "an entry went to two VMs"
        assert set(taken) == set(first), "every ready entry is used before any VM boots cold"
        for vm in vms:
            assert vm["metadata"]["annotations"][CLAIM_POOL_ANNOTATION] == "builders"
            scheduled = [
                e for e in events_of(client, vm["metadata"]["name"]) if e[0] == "Scheduled"
            ]
            resumed = CLAIM_ENTRY_ANNOTATION in vm["metadata"]["annotations"]
            assert ("resuming an entry of warm pool builders" in scheduled[0][2]) == resumed
            if resumed:
                node = vm["spec"]["nodeName"]
                assert (
                    first[vm["metadata"]["annotations"][CLAIM_ENTRY_ANNOTATION]]["spec"]["nodeName"]
                    == node
                ), "a claimed entry's VM runs where the entry was saved"
                wait_until(
                    lambda vm=vm: (
                        ("WarmStarted", "Normal", "resumed a saved entry of warm pool builders")
                        in events_of(client, vm["metadata"]["name"])
                    ),
                    what="the WarmStarted event",
                )
            else:
                assert "booting cold: warm pool builders has no ready entry" in scheduled[0][2]
        # Ready once its identity step is done; a sim VM has none to refresh, and says so.
        for name in names:
            vm = wait_until(
                lambda name=name: (
                    (
                        get_condition(client.get("virtualmachines", name, "default"), "Ready") or {}
                    ).get("status")
                    == "True"
                    and client.get("virtualmachines", name, "default")
                ),
                what=f"{name} Ready",
            )
            identity = get_condition(vm, "FreshIdentity")
            assert identity is not None and "sim VM has no guest" in identity["message"]

        # The pool refills with new entries; the consumed ones are gone, objects and files.
        wait_until(lambda: ready(client, 10), what="the pool refilled", timeout=60)
        second = {vm["metadata"]["uid"] for vm in entries(client)}
        assert not second & set(first)
        wait_until(lambda: c.saved() == second, what="only the new entries' files on the nodes")
        usage = c.usage()
        assert sum(u.cpu for u in usage.values()) == 50
        assert sum(u.vms for u in usage.values()) == 50


def test_a_pool_discards_stale_entries_backs_off_failing_ones_scales_and_deletes(
    tmp_path: Path,
) -> None:
    with cluster(tmp_path) as c:
        client = c.client
        client.create(
            "warmpools",
            {"metadata": {"name": "builders"}, "spec": {"config": "builder", "size": 2}},
            "default",
        )
        wait_until(lambda: ready(client, 2), what="2 ready entries")
        old = {vm["metadata"]["uid"] for vm in entries(client)}

        # A VM that asks for another machine than the entries boots cold, its entries stay.
        vm = deploy(client, "bigger", cpu=2)
        bound = wait_until(
            lambda: (
                client.get("virtualmachines", "bigger", "default")["spec"].get("nodeName")
                and client.get("virtualmachines", "bigger", "default")
            ),
        )
        assert CLAIM_ENTRY_ANNOTATION not in bound["metadata"]["annotations"]
        assert {e["metadata"]["uid"] for e in entries(client)} == old
        client.delete("virtualmachines", vm["metadata"]["name"], "default")

        # The VMConfig changes: its entries are discarded (with an Event) and made again.
        client.patch("vmconfigs", "builder", {"spec": {"memory": "2Gi"}}, "default")
        wait_until(
            lambda: ready(client, 2) and not {e["metadata"]["uid"] for e in entries(client)} & old,
            what="entries of the new config",
        )
        assert all(e["spec"]["memory"] == "2Gi" for e in entries(client))
        discards = [
            e
            for e in client.list_all("events", "default")
            if e["involvedObject"]["name"] == "builders" and e["reason"] == "EntryDiscarded"
        ]
        assert len(discards) == 1 and discards[0]["count"] >= 2  # one Event, counted
        assert "the pool, its VMConfig or its image changed" in discards[0]["message"]
        assert "changed" in pool(client)["status"]["lastDiscardReason"]
        wait_until(lambda: len(c.saved()) == 2, what="the old entries' files removed")

        # Entries that fail are discarded with a Warning, and the pool backs off.
        client.patch("vmconfigs", "builder", {"spec": {"image": "fail:no-bootloader"}}, "default")
        status = wait_until(
            lambda: (
                (
                    (pool(client).get("status") or {})
                    .get("message", "")
                    .startswith("2 entries failed")
                    or (pool(client).get("status") or {})
                    .get("message", "")
                    .startswith("1 entries failed")
                )
                and pool(client)["status"]
            ),
            what="the pool backing off",
        )
        assert "the next is made at" in status["message"]
        assert "no-bootloader" in status["message"]
        failed = [e for e in events_of(client, "builders") if e[1] == "Warning"]
        assert any("it failed: no-bootloader" in e[2] for e in failed)
        made = len({e["metadata"]["uid"] for e in entries(client)})
        time.sleep(1.0)
        assert len({e["metadata"]["uid"] for e in entries(client)}) <= made + 2, "no storm"

        # A deploy never fails because the pool is broken: it boots (here: fails) like any VM.
        client.patch("vmconfigs", "builder", {"spec": {"image": "sim:2"}}, "default")
        wait_until(lambda: ready(client, 2), what="healthy entries again", timeout=60)

        # Scaled to zero: entries and their files go.
        client.patch("warmpools", "builders", {"spec": {"size": 0}}, "default")
        wait_until(lambda: not entries(client) and not c.saved(), what="the entries gone")

        # Deleted: it holds its finalizer until its entries are gone, then goes.
        client.patch("warmpools", "builders", {"spec": {"size": 3}}, "default")
        wait_until(lambda: ready(client, 3), what="3 entries")
        client.delete("warmpools", "builders", "default")
        wait_until(
            lambda: (
                not any(
                    p["metadata"]["name"] == "builders"
                    for p in client.list_all("warmpools", "default")
                )
            ),
            what="the pool gone",
        )
        wait_until(lambda: not entries(client) and not c.saved(), what="its entries gone")


def test_admission_refuses_what_a_pool_cannot_serve(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        client = c.client

        def refused(spec: Obj, name: str = "p") -> str:
            with pytest.raises(ApiError) as error:
                client.create("warmpools", {"metadata": {"name": name}, "spec": spec}, "default")
            assert error.value.code == 422, error.value.message
            return error.value.message

        assert "VMConfig 'nope' not found" in refused({"config": "nope"})
        client.create(
            "vmconfigs",
            {"metadata": {"name": "no-access"}, "spec": {"image": "sim:1"}},
            "default",
        )
        assert "sets no access.secretRef" in refused({"config": "no-access"})
        assert "size" in refused({"config": "builder", "size": -1})
        assert "maxIdleSeconds 600 is more than maxAgeSeconds 300" in refused(
            {"config": "builder", "maxIdleSeconds": 600, "maxAgeSeconds": 300}
        )
        assert "at most 56 characters" in refused({"config": "builder"}, "p" * 57)
        client.create(
            "warmpools", {"metadata": {"name": "one"}, "spec": {"config": "builder"}}, "default"
        )
        assert "already has WarmPool 'one'" in refused({"config": "builder"}, "two")
        with pytest.raises(Invalid):
            client.patch("warmpools", "one", {"spec": {"mode": "clone"}}, "default")
        with pytest.raises(Invalid, match=r"metadata\.generateName: at most 56 characters"):
            client.create(
                "warmpools",
                {"metadata": {"generateName": "g" * 52}, "spec": {"config": "builder"}},
                "default",
            )

        # Warm-pool metadata is shoal's: a VM cannot point itself at an entry, nor change it.
        with pytest.raises(Invalid, match=r"warmpools\.shoal\.dev/entry: set by the scheduler"):
            deploy_with = {"annotations": {CLAIM_ENTRY_ANNOTATION: "someone-elses-entry"}}
            client.create(
                "virtualmachines",
                {"metadata": {"name": "forged", **deploy_with}, "spec": {"config": "builder"}},
                "default",
            )
        wait_until(lambda: ready(client, 1, "one"), what="an entry of pool one")
        (entry,) = entries(client, "one")
        with pytest.raises(Invalid, match="set by shoal's warm pools, cannot be changed"):
            client.patch(
                "virtualmachines",
                entry["metadata"]["name"],
                {"metadata": {"labels": {POOL_LABEL: "other"}}},
                "default",
            )

        # A pool whose finalizer was taken off by hand goes at once; its entries are deleted.
        client.patch("warmpools", "one", {"metadata": {"finalizers": []}}, "default")
        client.delete("warmpools", "one", "default")
        wait_until(lambda: not entries(client, "one") and not c.saved(), what="orphans gone")
        assert not client.list_all("warmpools", "default")
        assert not any(
            v["metadata"]["name"] == "forged" for v in client.list_all("virtualmachines", "default")
        )
