"""Scheduler throughput: 10,000 VMs onto 100, 1,000 and 5,000 simulated nodes.

The real scheduler and binder on a real store (SQLite in a temp dir); nodes are Node objects as
agents write them. Reports placements per second and checks zero overcommit from the store.
"""

import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from shoal.model.meta import API_VERSION, now_iso
from shoal.scheduler.loop import Scheduler
from shoal.store.store import Store
from shoal.store.watch import WatchHub

VMS = 10_000
CLUSTERS = (100, 1_000, 5_000)


def _node(name: str, vms: int) -> dict[str, Any]:
    now = now_iso()
    room = {"cpu": 4 * vms, "memory": f"{4 * vms}Gi", "disk": f"{100 * vms}Gi", "vms": vms}
    return {
        "apiVersion": API_VERSION,
        "kind": "Node",
        "metadata": {"name": name, "labels": {}, "annotations": {}, "finalizers": []},
        "spec": {"unschedulable": False, "dedicatedNamespaces": [], "maxMacOSVMs": 2},
        "status": {
            "capacity": room,
            "allocatable": room,
            "arch": "amd64",
            "os": "linux",
            "guestOS": ["linux"],
            "backend": "sim",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "AgentReady",
                    "message": "",
                    "lastTransitionTime": now,
                }
            ],
            "lastHeartbeatTime": now,
        },
    }


def _vm(name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "VirtualMachine",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {},
            "annotations": {},
            "finalizers": [],
        },
        "spec": {
            "image": "ci",
            "cpu": 2,
            "memory": "2Gi",
            "disk": "20Gi",
            "os": "linux",
            "arch": "amd64",
            "nodeSelector": {},
            "ports": [],
            "powerState": "Running",
            "priority": 0,
        },
        "status": {"phase": "Pending", "conditions": []},
    }


def _one(nodes: int) -> list[dict[str, Any]]:
    per_node = -(-VMS // nodes) + 1  # a little room to spare
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'bench.db'}")
        with store.tx() as tx:
            tx.insert_many([_vm(f"vm-{i:05d}") for i in range(VMS)])
        with store.tx() as tx:
            tx.insert_many([_node(f"node-{i:05d}", per_node) for i in range(nodes)])
        scheduler = Scheduler(store, WatchHub(store))
        started = time.perf_counter()
        bound = 0
        while bound < VMS:
            placed = scheduler.run_once()
            if placed == 0 and not scheduler._again:
                break
            bound += placed
        elapsed = time.perf_counter() - started
        vms, _ = store.list_objects("VirtualMachine")
        held = Counter(vm["spec"].get("nodeName") for vm in vms)
        overcommitted = sum(1 for name, count in held.items() if name and count > per_node)
        store.close()
    return [
        {"name": f"schedule {VMS} VMs on {nodes} nodes", "value": elapsed, "unit": "s"},
        {"name": f"  placements/s at {nodes} nodes", "value": bound / elapsed, "unit": "VMs/s"},
        {
            "name": f"  overcommitted nodes at {nodes} nodes",
            "value": float(overcommitted),
            "unit": "nodes",
        },
        {"name": f"  unplaced VMs at {nodes} nodes", "value": float(VMS - bound), "unit": "VMs"},
    ]


def run() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for nodes in CLUSTERS:
        rows += _one(nodes)
    return rows
