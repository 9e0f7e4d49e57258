"""Kind-specific rules applied when an object is created or changed."""

from typing import Any

from pydantic import BaseModel, ValidationError

from shoal.api.objects import CreateHook, UpdateHook, dump, invalid_from
from shoal.errors import Invalid, NotFound
from shoal.images.reference import is_reference
from shoal.model.kinds import NAMESPACE_FINALIZER, VirtualMachine, VirtualMachineSpec
from shoal.model.meta import now_iso
from shoal.quantity import describe_bytes
from shoal.scheduler.placement import Allocatable, Request, could_ever_fit
from shoal.store.store import Obj, Store


def _virtual_machine(store: Store, obj: Obj, model: BaseModel) -> None:
    assert isinstance(model, VirtualMachine)
    spec = obj["spec"]
    inherited: dict[str, str] = {}  # field -> " (from VMConfig 'x')" for the config's fields
    if spec.get("nodeName"):
        raise Invalid(
            "spec.nodeName: is set by the scheduler; use spec.nodeSelector to choose nodes",
            field="spec.nodeName",
        )
    if spec.get("config"):
        namespace = obj["metadata"]["namespace"]
        try:
            config = store.get("VMConfig", namespace, spec["config"])
        except NotFound:
            raise Invalid(
                f"spec.config: VMConfig {spec['config']!r} not found in namespace {namespace}",
                field="spec.config",
            ) from None
        explicit = model.spec.model_dump(mode="json", exclude_unset=True, exclude_none=True)
        try:
            merged = VirtualMachineSpec.model_validate({**config["spec"], **explicit})
        except ValidationError as error:
            raise invalid_from(error, "spec") from None
        obj["spec"] = dump(merged)
        inherited = {
            field: f" (from VMConfig {spec['config']!r})"
            for field in ("image", "startupScript")
            if field not in explicit
        }
    if not obj["spec"].get("image"):
        raise Invalid(
            "spec.image: required (or spec.config naming a VMConfig that sets it)",
            field="spec.image",
        )
    _check_template(store, obj["spec"], inherited)
    _check_some_node_could_hold(store, obj)


def _vm_config(store: Store, obj: Obj, model: BaseModel) -> None:
    _check_template(store, obj["spec"])


def _check_template(
    store: Store, spec: dict[str, Any], inherited: dict[str, str] | None = None
) -> None:
    """The template fields admission refuses: a startup script, an image that names nothing.
    inherited says, of a field a VMConfig gave, where it came from."""
    inherited = inherited or {}
    _refuse_startup_script(spec, inherited.get("startupScript", ""))
    _check_image(store, str(spec["image"]), inherited.get("image", ""))


def _refuse_startup_script(spec: dict[str, Any], origin: str = "") -> None:
    """No backend can run a script in the guest before guest exec exists: a script that would
    silently never run is refused instead (the field stays for when it does)."""
    if spec.get("startupScript"):
        raise Invalid(
            f"spec.startupScript{origin}: not supported yet: no backend runs a script in the "
            "guest until guest exec lands; leave it empty",
            field="spec.startupScript",
        )


def _check_image(store: Store, image: str, origin: str = "") -> None:
    """An image is an OCI reference or the name of an Image; anything else would only fail on
    the node the VM was bound to, so it is refused now."""
    if is_reference(image):
        return
    try:
        store.get("Image", "", image)
    except NotFound:
        raise Invalid(
            f"spec.image{origin}: no Image named {image!r}, and {image!r} is not an OCI "
            "reference (registry/repository:tag or @digest)",
            field="spec.image",
        ) from None


def _template_update(store: Store, current: Obj, updated: Obj) -> None:
    """A replace or patch may not bring in a startup script or an image that names nothing;
    one the object already holds (stored before these rules) may stay, or be removed."""
    before, after = current.get("spec") or {}, updated.get("spec") or {}
    if after.get("startupScript") != before.get("startupScript"):
        _refuse_startup_script(after)
    if after.get("image") and after.get("image") != before.get("image"):
        _check_image(store, str(after["image"]))


def _check_some_node_could_hold(store: Store, vm: Obj) -> None:
    """A VM bigger than every node would wait forever: refuse it now, saying how big they are."""
    nodes = [n for n in store.list_objects("Node")[0] if Allocatable.of(n).cpu > 0]
    if not nodes:
        return  # no node has reported its capacity yet: the VM waits, and says so
    request = Request.of(vm)
    if any(could_ever_fit(node, request) for node in nodes):
        return
    largest = max(nodes, key=lambda n: (Allocatable.of(n).cpu, Allocatable.of(n).memory))
    alloc = Allocatable.of(largest)
    field = next(
        (
            name
            for name, wanted, room in (
                ("spec.cpu", request.cpu, alloc.cpu),
                ("spec.memory", request.memory, alloc.memory),
                ("spec.disk", request.disk, alloc.disk),
            )
            if wanted > room
        ),
        "spec.cpu",
    )
    raise Invalid(
        f"{field}: the VM asks for {request.cpu} cpu, {describe_bytes(request.memory)} memory and "
        f"{describe_bytes(request.disk)} disk, more than any node can hold; the largest node, "
        f"{largest['metadata']['name']}, has {alloc.cpu} cpu, {describe_bytes(alloc.memory)} memory "
        f"and {describe_bytes(alloc.disk)} disk",
        field=field,
    )


def _namespace(store: Store, obj: Obj, model: BaseModel) -> None:
    finalizers = obj["metadata"].setdefault("finalizers", [])
    if NAMESPACE_FINALIZER not in finalizers:
        finalizers.append(NAMESPACE_FINALIZER)


def _event(store: Store, obj: Obj, model: BaseModel) -> None:
    now = now_iso()
    obj.setdefault("firstTimestamp", now)
    obj.setdefault("lastTimestamp", now)


CREATE_HOOKS: dict[str, CreateHook] = {
    "VirtualMachine": _virtual_machine,
    "Namespace": _namespace,
    "Event": _event,
    "VMConfig": _vm_config,
}

UPDATE_HOOKS: dict[str, UpdateHook] = {
    "VirtualMachine": _template_update,  # its image is immutable: only the script can come in
    "VMConfig": _template_update,
}
