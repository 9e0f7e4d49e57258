"""Nodes and VMs as the store holds them, built for tests of the pure parts (scheduler, listing,
node lifecycle) and shared with fixtures."""

from typing import Any

from shoal.api.objects import dump, validate
from shoal.model.kinds import VirtualMachine
from shoal.model.meta import now_iso
from shoal.model.registry import BY_KIND
from shoal.quantity import format_bytes

Obj = dict[str, Any]
GI = 2**30


def build_node(
    name: str,
    *,
    cpu: int = 8,
    memory: int = 16 * GI,
    disk: int = 500 * GI,
    vms: int = 8,
    ready: bool = True,
    unschedulable: bool = False,
    max_vms: int | None = None,
    heartbeat: str | None = None,
) -> Obj:
    """A Node as the agent leaves it: registered with an empty spec, then a heartbeat's status.

    The status is the one `Agent.heartbeat` writes (allocatable sizes through format_bytes, a
    Ready condition), validated through the Node model as the /status PATCH does.
    """
    spec: Obj = {}
    if unschedulable:
        spec["unschedulable"] = True
    if max_vms is not None:
        spec["maxVMs"] = max_vms
    resources = {
        "cpu": cpu,
        "memory": format_bytes(memory),
        "disk": format_bytes(disk),
        "vms": vms,
    }
    now = heartbeat or now_iso()  # the agent stamps its heartbeat with the current time
    status = {
        "capacity": resources,
        "allocatable": resources,
        "arch": "amd64",
        "os": "linux",
        "guestOS": ["linux"],
        "backend": "sim",
        "agentVersion": "0.1.0",
        "conditions": [
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "reason": "AgentReady" if ready else "NodeLost",
                "message": "",
                "lastTransitionTime": now,
            }
        ],
        "lastHeartbeatTime": now,
    }
    return validate(
        BY_KIND["Node"],
        {"apiVersion": "shoal.dev/v1", "kind": "Node", "metadata": {"name": name}, "spec": spec}
        | {"status": status},
    )


def build_vm(
    name: str,
    namespace: str = "default",
    *,
    cpu: int = 1,
    memory: str = "1Gi",
    disk: str = "10Gi",
    **spec: Any,
) -> Obj:
    """A VirtualMachine as the API stores it on create: the model's dump, defaults filled in."""
    model = VirtualMachine.model_validate(
        {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"image": "ubuntu", "cpu": cpu, "memory": memory, "disk": disk, **spec},
        }
    )
    return dump(model)
