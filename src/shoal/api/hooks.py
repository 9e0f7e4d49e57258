"""Kind-specific rules applied when an object is created or changed."""

from typing import Any

from pydantic import BaseModel, ValidationError

from shoal.api.objects import CreateHook, UpdateHook, dump, invalid_from
from shoal.ci.runners.runnervm import template_check_vm
from shoal.errors import Invalid, NotFound
from shoal.images.reference import is_reference
from shoal.model.kinds import (
    NAMESPACE_FINALIZER,
    VirtualMachine,
    VirtualMachineSpec,
    secret_problem,
)
from shoal.model.meta import now_iso
from shoal.model.runnerpool import MAX_POOL_NAME, RUNNER_POOL_FINALIZER
from shoal.model.warmpool import MAX_WARM_POOL_NAME, WARM_POOL_FINALIZER
from shoal.quantity import describe_bytes
from shoal.scheduler.placement import Allocatable, Request, could_ever_fit
from shoal.store.store import Obj, Store
from shoal.warmpool import entries


def _virtual_machine(store: Store, obj: Obj, model: BaseModel) -> None:
    for key in obj["metadata"].get("annotations") or {}:
        if key in entries.SCHEDULER_ANNOTATIONS:
            raise Invalid(
                f"metadata.annotations.{key}: set by the scheduler when it places the VM",
                field="metadata.annotations",
            )
    _admit_vm(store, obj, model, check_fit=True)


def _vm_update(store: Store, current: Obj, updated: Obj) -> None:
    """A VM's warm-pool labels and annotations are shoal's: a client may not change them."""
    for part in ("labels", "annotations"):
        before = current["metadata"].get(part) or {}
        after = updated["metadata"].get(part) or {}
        for key in set(before) | set(after):
            if key.startswith(entries.METADATA_PREFIX) and before.get(key) != after.get(key):
                raise Invalid(
                    f"metadata.{part}.{key}: set by shoal's warm pools, cannot be changed",
                    field=f"metadata.{part}",
                )
    _template_update(store, current, updated)


def _admit_vm(store: Store, obj: Obj, model: BaseModel, *, check_fit: bool) -> None:
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
            for field in ("image", "startupScript", "access", "env")
            if field not in explicit
        }
    if not obj["spec"].get("image"):
        raise Invalid(
            "spec.image: required (or spec.config naming a VMConfig that sets it)",
            field="spec.image",
        )
    _check_template(store, obj["metadata"]["namespace"], obj["spec"], inherited)
    if not spec.get("config"):
        _size_from_image(store, obj["spec"], model.spec.model_fields_set)
    _check_script(obj["spec"], inherited)
    if check_fit:
        _check_some_node_could_hold(store, obj)


def _runner_pool(store: Store, obj: Obj, model: BaseModel) -> None:
    """A pool's name leaves room for its VMs' suffix; its credentials Secret exists; its
    template makes a VM admission would take (whether a node can hold it is the pool's
    RunnersScheduled condition, as for any VM). The pool holds a finalizer until its runners
    are gone."""
    name, namespace = obj["metadata"].get("name") or "", obj["metadata"]["namespace"]
    if len(name) > MAX_POOL_NAME:
        raise Invalid(
            f"metadata.name: at most {MAX_POOL_NAME} characters for a RunnerPool (its VMs are "
            "named <pool>-<10 characters>)",
            field="metadata.name",
        )
    _check_runner_pool_spec(store, namespace, obj["spec"])
    finalizers = obj["metadata"].setdefault("finalizers", [])
    if RUNNER_POOL_FINALIZER not in finalizers:
        finalizers.append(RUNNER_POOL_FINALIZER)


def _runner_pool_update(store: Store, current: Obj, updated: Obj) -> None:
    if updated.get("spec") != current.get("spec"):
        _check_runner_pool_spec(store, current["metadata"]["namespace"], updated["spec"])


def _check_runner_pool_spec(store: Store, namespace: str, spec: dict[str, Any]) -> None:
    secret = spec["credentialsRef"]["name"]
    try:
        store.get("Secret", namespace, secret)
    except NotFound:
        raise Invalid(
            f"spec.credentialsRef.name: no Secret named {secret!r} in namespace {namespace!r}",
            field="spec.credentialsRef.name",
        ) from None
    vm = template_check_vm(namespace, spec["template"])
    try:
        _admit_vm(store, vm, VirtualMachine.model_validate(vm), check_fit=False)
    except Invalid as error:
        raise Invalid(
            f"spec.template: a runner VM would be refused: {error}", field="spec.template"
        ) from None


def _warm_pool(store: Store, obj: Obj, model: BaseModel) -> None:
    """A pool's name leaves room for its entries' suffix; its VMConfig exists, gives guest
    access (a claimed VM gets its fresh identity through it), and has no other pool. The pool
    holds a finalizer until its entries are gone."""
    meta = obj["metadata"]
    name, namespace = meta.get("name") or "", meta["namespace"]
    # A generated name is generateName and 5 characters.
    longest = len(name) if name else len(meta.get("generateName") or "") + 5
    if longest > MAX_WARM_POOL_NAME:
        field = "metadata.name" if name else "metadata.generateName"
        raise Invalid(
            f"{field}: at most {MAX_WARM_POOL_NAME} characters for a WarmPool's name (its "
            "entries are named <pool>-w<5 characters>)",
            field=field,
        )
    _check_warm_pool_spec(store, namespace, name, obj["spec"])
    finalizers = obj["metadata"].setdefault("finalizers", [])
    if WARM_POOL_FINALIZER not in finalizers:
        finalizers.append(WARM_POOL_FINALIZER)


def _warm_pool_update(store: Store, current: Obj, updated: Obj) -> None:
    if updated["spec"].get("config") != current["spec"].get("config"):
        meta = current["metadata"]
        _check_warm_pool_spec(store, meta["namespace"], meta["name"], updated["spec"])


def _check_warm_pool_spec(store: Store, namespace: str, name: str, spec: dict[str, Any]) -> None:
    config_name = spec["config"]
    try:
        config = store.get("VMConfig", namespace, config_name)
    except NotFound:
        raise Invalid(
            f"spec.config: VMConfig {config_name!r} not found in namespace {namespace}",
            field="spec.config",
        ) from None
    if not ((config["spec"].get("access") or {}).get("secretRef") or {}).get("name"):
        raise Invalid(
            f"spec.config: VMConfig {config_name!r} sets no access.secretRef: a VM resumed from "
            "a warm pool gets its fresh identity (hostname, clock, entropy) through guest access",
            field="spec.config",
        )
    pools, _ = store.list_objects("WarmPool", namespace)
    for other in pools:
        if other["metadata"]["name"] != name and other["spec"].get("config") == config_name:
            raise Invalid(
                f"spec.config: VMConfig {config_name!r} already has WarmPool "
                f"{other['metadata']['name']!r} (one pool per VMConfig)",
                field="spec.config",
            )


def _vm_config(store: Store, obj: Obj, model: BaseModel) -> None:
    _check_template(store, obj["metadata"]["namespace"], obj["spec"])


def _check_template(
    store: Store, namespace: str, spec: dict[str, Any], inherited: dict[str, str] | None = None
) -> None:
    """The template fields admission refuses: an image that names nothing, a reference to a
    Secret that is not there. inherited says, of a field a VMConfig gave, where it
    came from."""
    inherited = inherited or {}
    _check_image(store, str(spec["image"]), inherited.get("image", ""))
    _check_secret_refs(store, namespace, spec, inherited)


def _check_secret_refs(
    store: Store,
    namespace: str,
    spec: dict[str, Any],
    inherited: dict[str, str],
    before: dict[str, Any] | None = None,
) -> None:
    """Every Secret a template refers to is in its namespace and holds the key named; the one
    for guest access is an ssh-auth Secret. Of an update, only references it did not hold before
    are checked: a Secret may be deleted while VMs refer to it (as in Kubernetes), and such a VM
    can still be labelled or stopped."""
    before = before or {}
    found: dict[str, Obj | None] = {}

    def secret(name: str, field: str, origin: str) -> Obj:
        if name not in found:
            try:
                found[name] = store.get("Secret", namespace, name)
            except NotFound:
                found[name] = None
        obj = found[name]
        if obj is None:
            raise Invalid(
                f"{field}{origin}: no Secret named {name!r} in namespace {namespace!r}",
                field=field,
            )
        return obj

    ref = (spec.get("access") or {}).get("secretRef") or {}
    held = (before.get("access") or {}).get("secretRef") or {}
    if ref.get("name") and ref != held:
        field, origin = "spec.access.secretRef.name", inherited.get("access", "")
        access_secret = secret(str(ref["name"]), field, origin)
        if access_secret.get("type") != "ssh-auth":
            raise Invalid(
                f"{field}{origin}: Secret {ref['name']!r} is of type "
                f"{access_secret.get('type')!r}; guest access takes an ssh-auth Secret "
                "(ssh-privatekey and/or password, optional username)",
                field=field,
            )
    held_keys = {
        (key_ref.get("name"), key_ref.get("key"))
        for var in before.get("env") or []
        if (key_ref := (var.get("valueFrom") or {}).get("secretKeyRef"))
    }
    origin = inherited.get("env", "")
    for index, var in enumerate(spec.get("env") or []):
        key_ref = (var.get("valueFrom") or {}).get("secretKeyRef")
        if not key_ref or (key_ref.get("name"), key_ref.get("key")) in held_keys:
            continue
        path = f"spec.env.{index}.valueFrom.secretKeyRef"
        data = secret(str(key_ref["name"]), f"{path}.name", origin).get("data") or {}
        if key_ref["key"] not in data:
            raise Invalid(
                f"{path}.key{origin}: Secret {key_ref['name']!r} has no key {key_ref['key']!r} "
                f"(its keys: {', '.join(sorted(data)) or 'none'})",
                field=f"{path}.key",
            )


def _check_script(spec: dict[str, Any], inherited: dict[str, str] | None = None) -> None:
    """A VM's startup script must be able to run: the agent needs spec.access to log into the
    guest. deleteWhenScriptExits needs a script to wait for and an ephemeral VM to delete."""
    inherited = inherited or {}
    if spec.get("startupScript") and not (spec.get("access") or {}).get("secretRef"):
        raise Invalid(
            f"spec.startupScript{inherited.get('startupScript', '')}: needs "
            "spec.access.secretRef, an ssh-auth Secret the agent logs into the guest with to "
            "run it",
            field="spec.startupScript",
        )
    if spec.get("deleteWhenScriptExits"):
        if not spec.get("startupScript"):
            raise Invalid(
                "spec.deleteWhenScriptExits: needs spec.startupScript (the script to wait for)",
                field="spec.deleteWhenScriptExits",
            )
        if not spec.get("ephemeral"):
            raise Invalid(
                "spec.deleteWhenScriptExits: needs spec.ephemeral: true (an ephemeral VM is "
                "deleted once it stops)",
                field="spec.deleteWhenScriptExits",
            )


IMAGE_SIZING = ("cpu", "memory", "disk")


def _size_from_image(store: Store, spec: dict[str, Any], given: set[str]) -> None:
    """The cpu, memory and disk an Image suggests, for a VM of that Image that does not set them
    itself (a VMConfig's own values come first, as the VM's do)."""
    if is_reference(str(spec["image"])):
        return
    suggested = store.get("Image", "", str(spec["image"]))["spec"]
    for field in IMAGE_SIZING:
        if field not in given and suggested.get(field) is not None:
            spec[field] = suggested[field]


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


def _image_cache(store: Store, obj: Obj, model: BaseModel) -> None:
    _check_image(store, obj["spec"]["image"])


def _image_cache_update(store: Store, current: Obj, updated: Obj) -> None:
    if updated["spec"]["image"] != current["spec"]["image"]:
        _check_image(store, updated["spec"]["image"])


def _template_update(store: Store, current: Obj, updated: Obj) -> None:
    """A replace or patch may not bring in an image that names nothing, a reference to a Secret
    that is not there, or a startup script that cannot run; what the object already holds (a
    Secret deleted since, say) may stay, or be removed."""
    before, after = current.get("spec") or {}, updated.get("spec") or {}
    script_fields = ("startupScript", "access", "deleteWhenScriptExits", "ephemeral")
    if current.get("kind") == "VirtualMachine" and any(
        after.get(f) != before.get(f) for f in script_fields
    ):
        _check_script(after)
    if after.get("image") and after.get("image") != before.get("image"):
        _check_image(store, str(after["image"]))
    _check_secret_refs(store, current["metadata"]["namespace"], after, {}, before)


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


def _secret(store: Store, obj: Obj, model: BaseModel) -> None:
    _check_secret_keys(obj)


def _secret_update(store: Store, current: Obj, updated: Obj) -> None:
    _check_secret_keys(updated)


def _check_secret_keys(secret: Obj) -> None:
    """The keys a Secret's type needs (ssh-auth, basic-auth); the message names the key, never
    a value."""
    problem = secret_problem(str(secret.get("type") or "opaque"), secret.get("data") or {})
    if problem is not None:
        field, message = problem
        raise Invalid(f"{field}: {message}", field=field)


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
    "Secret": _secret,
    "RunnerPool": _runner_pool,
    "WarmPool": _warm_pool,
    "ImageCache": _image_cache,
}

UPDATE_HOOKS: dict[str, UpdateHook] = {
    "VirtualMachine": _vm_update,  # its image is immutable: only the script can come in
    "VMConfig": _template_update,
    "Secret": _secret_update,
    "RunnerPool": _runner_pool_update,
    "WarmPool": _warm_pool_update,
    "ImageCache": _image_cache_update,
}
