"""VM power actions: POST .../virtualmachines/{name}/start|stop|suspend|resume.

Each sets spec.powerState (the wish); the agent on the VM's node makes it so and reports phases.
"""

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from shoal.api.auth import authorize
from shoal.api.docs import ERRORS
from shoal.api.routes import PREFIX, Caller, Ctx, NameParam, NamespaceParam, audit
from shoal.errors import Conflict
from shoal.model.kinds import LEASE_RENEWED, VirtualMachine
from shoal.model.meta import now_iso
from shoal.store.store import Obj

# action -> (power states it may start from, the power state it asks for)
ACTIONS: dict[str, tuple[frozenset[str], str]] = {
    "start": (frozenset({"Running", "Stopped", "Suspended"}), "Running"),
    "stop": (frozenset({"Running", "Stopped", "Suspended"}), "Stopped"),
    "suspend": (frozenset({"Running", "Suspended"}), "Suspended"),
    "resume": (frozenset({"Suspended", "Running"}), "Running"),
}


def apply_action(vm: Obj, action: str) -> Obj | None:
    allowed, wanted = ACTIONS[action]
    name = vm["metadata"]["name"]
    if vm["metadata"].get("deletionTimestamp"):
        raise Conflict(f"cannot {action} VirtualMachine {name}: it is being deleted")
    current = vm["spec"].get("powerState", "Running")
    if current not in allowed:
        raise Conflict(f"cannot {action} VirtualMachine {name}: its power state is {current}")
    if action == "resume" and current == "Running" and vm["status"].get("phase") != "Suspended":
        return None
    if current == wanted:
        return None
    vm["spec"]["powerState"] = wanted
    vm["metadata"]["generation"] = int(vm["metadata"].get("generation") or 1) + 1
    return vm


def _handler(action: str) -> Callable[..., JSONResponse]:
    def handler(
        ctx: Ctx, caller: Caller, namespace: NamespaceParam, name: NameParam
    ) -> JSONResponse:
        authorize(
            ctx.store, caller, "action", "VirtualMachine", namespace, plural="virtualmachines"
        )
        vm = ctx.store.mutate(
            "VirtualMachine", namespace, name, lambda obj: apply_action(obj, action)
        )
        audit(ctx, caller, vm, action.capitalize())
        return JSONResponse(vm)

    return handler


def actions_router() -> APIRouter:
    router = APIRouter()
    responses: dict[int | str, dict[str, Any]] = {
        200: {"model": VirtualMachine, "description": "the VirtualMachine"},
        **ERRORS,
    }
    for action in ACTIONS:

        def handler(
            ctx: Ctx,
            caller: Caller,
            namespace: NamespaceParam,
            name: NameParam,
            action: str = action,
        ) -> JSONResponse:
            authorize(
                ctx.store, caller, "action", "VirtualMachine", namespace, plural="virtualmachines"
            )
            vm = ctx.store.mutate(
                "VirtualMachine", namespace, name, lambda obj: apply_action(obj, action)
            )
            audit(ctx, caller, vm, action.capitalize())
            return JSONResponse(vm)

        router.add_api_route(
            f"{PREFIX}/namespaces/{{namespace}}/virtualmachines/{{name}}/{action}",
            handler,
            methods=["POST"],
            tags=["VirtualMachine"],
            responses=responses,
            summary=f"{action.capitalize()} a VirtualMachine",
            name=f"vm_{action}",
        )

    def renew(ctx: Ctx, caller: Caller, namespace: NamespaceParam, name: NameParam) -> JSONResponse:
        """Renew the VM's lease (spec.leaseSeconds) from now, by the server's clock."""
        authorize(
            ctx.store, caller, "action", "VirtualMachine", namespace, plural="virtualmachines"
        )
        vm = ctx.store.mutate("VirtualMachine", namespace, name, renew_lease)
        return JSONResponse(vm)

    router.add_api_route(
        f"{PREFIX}/namespaces/{{namespace}}/virtualmachines/{{name}}/renew",
        renew,
        methods=["POST"],
        tags=["VirtualMachine"],
        responses=responses,
        summary="Renew a VirtualMachine's lease (spec.leaseSeconds)",
        name="vm_renew",
    )
    return router


def renew_lease(vm: Obj) -> Obj:
    name = vm["metadata"]["name"]
    if not vm["spec"].get("leaseSeconds"):
        raise Conflict(f"VirtualMachine {name} has no lease to renew (spec.leaseSeconds)")
    if vm["metadata"].get("deletionTimestamp"):
        raise Conflict(f"VirtualMachine {name} is being deleted")
    annotations = vm["metadata"].setdefault("annotations", {})
    annotations[LEASE_RENEWED] = now_iso()
    return vm
