"""What create, replace, patch, status and delete mean for any kind, on top of the Store.

Routes call these after authorizing; in-process controllers may call them too. Each write is one
compare-and-swap transaction; kind-specific rules live in `hooks`.
"""

import copy
import secrets
import string
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from shoal.errors import AlreadyExists, BadRequest, Forbidden, Invalid, NotFound
from shoal.model.registry import KindInfo
from shoal.selectors import lookup
from shoal.store.store import Obj, Store

SERVER_META = ("uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp")
USER_META = ("labels", "annotations", "finalizers")
# Fields only the control plane sets; a client may echo them back but not change them.
SERVER_SET: dict[str, tuple[str, ...]] = {"VirtualMachine": ("spec.nodeName",)}

CreateHook = Callable[[Store, Obj, BaseModel], None]
# Run on a replace or patch that changes the object: (store, current, updated); raises to refuse.
UpdateHook = Callable[[Store, Obj, Obj], None]


def invalid_from(error: ValidationError, prefix: str = "") -> Invalid:
    """One Invalid naming every field that failed, e.g. `spec.cpu: must be >= 1`."""
    causes = []
    for item in error.errors():
        field = ".".join(str(part) for part in (prefix, *item["loc"]) if part != "")
        message = item["msg"].removeprefix("Value error, ")
        causes.append({"field": field, "message": message})
    text = "; ".join(f"{c['field']}: {c['message']}" for c in causes)
    return Invalid(text or "invalid object", causes=causes)


def validate(info: KindInfo, data: Any) -> Obj:
    if not isinstance(data, dict):
        raise BadRequest(f"a {info.kind} must be a JSON object")
    try:
        model = info.model.model_validate(data)
    except ValidationError as error:
        raise invalid_from(error) from None
    return dump(model)


def dump(model: BaseModel) -> Obj:
    data = model.model_dump(mode="json", exclude_none=True)
    head: Obj = {key: data.pop(key) for key in ("apiVersion", "kind", "metadata") if key in data}
    return {**head, **data}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch. The result shares nothing with the inputs."""
    if not isinstance(patch, dict):
        return _copy(patch)
    base = target if isinstance(target, dict) else {}
    result = {}
    for key, value in base.items():
        if key not in patch:
            result[key] = _copy(value)
        elif patch[key] is not None:
            result[key] = merge_patch(value, patch[key])
    for key, value in patch.items():
        if key not in base and value is not None:
            result[key] = merge_patch(None, value)
    return result


def _copy(value: Any) -> Any:
    return copy.deepcopy(value) if isinstance(value, dict | list) else value


def _set_path(obj: Obj, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        obj = obj.setdefault(part, {})
    if value in ("", None):
        obj.pop(last, None)
    else:
        obj[last] = value


def _default_status(info: KindInfo) -> Obj | None:
    if not info.has_status:
        return None
    field = info.model.model_fields["status"]
    assert field.default_factory is not None
    status = field.default_factory()  # type: ignore[call-arg]
    assert isinstance(status, BaseModel)
    return dump(status)


def apply_user_fields(info: KindInfo, current: Obj, incoming: Obj) -> Obj | None:
    """current with the client-writable parts of incoming; None when nothing changed."""
    result = copy.deepcopy(current)
    for field in info.spec_fields:
        if field in incoming:
            result[field] = incoming[field]
        else:
            result.pop(field, None)
    for field in USER_META:
        result["metadata"][field] = incoming.get("metadata", {}).get(field) or (
            {} if field != "finalizers" else []
        )
    for path in SERVER_SET.get(info.kind, ()):
        wanted, held = lookup(incoming, path), lookup(current, path)
        if wanted and wanted != held:
            raise Invalid(f"{path}: is set by the scheduler and cannot be written", field=path)
        _set_path(result, path, held)
    for path in info.immutable:
        before, after = lookup(current, path), lookup(result, path)
        if before and after != before:
            raise Invalid(f"{path}: is immutable (it is {before!r})", field=path)
    if result == current:
        return None
    if any(result.get(f) != current.get(f) for f in info.spec_fields):
        result["metadata"]["generation"] = int(current["metadata"].get("generation") or 1) + 1
    return result


def _random_suffix() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(5))


class Objects:
    def __init__(
        self,
        store: Store,
        hooks: dict[str, CreateHook] | None = None,
        update_hooks: dict[str, UpdateHook] | None = None,
    ) -> None:
        self.store = store
        self.hooks = hooks or {}
        self.update_hooks = update_hooks or {}
        # Told of each status written: (kind, the status before, the object after).
        self.status_observers: list[Callable[[str, Obj | None, Obj], None]] = []

    def _update(self, info: KindInfo, current: Obj, incoming: Obj) -> Obj | None:
        """current with incoming's user fields, as the kind's update hook admits it."""
        updated = apply_user_fields(info, current, incoming)
        hook = self.update_hooks.get(info.kind)
        if updated is not None and hook is not None:
            hook(self.store, current, updated)
        return updated

    def require_namespace(self, namespace: str) -> None:
        try:
            ns = self.store.get("Namespace", "", namespace)
        except NotFound:
            raise NotFound(
                f"namespace {namespace} not found", kind="Namespace", name=namespace
            ) from None
        if ns["metadata"].get("deletionTimestamp"):
            raise Forbidden(
                f"namespace {namespace} is being deleted: nothing new can be created in it"
            )

    def create(self, info: KindInfo, namespace: str | None, model: BaseModel) -> Obj:
        obj = dump(model)
        meta = obj.setdefault("metadata", {})
        for field in SERVER_META:
            meta.pop(field, None)
        if info.namespaced:
            assert namespace is not None
            if meta.get("namespace") not in (None, namespace):
                raise BadRequest(
                    f"metadata.namespace {meta['namespace']!r} does not match the namespace "
                    f"in the path {namespace!r}",
                    field="metadata.namespace",
                )
            meta["namespace"] = namespace
            self.require_namespace(namespace)
        elif meta.pop("namespace", None):
            raise BadRequest(f"a {info.kind} is cluster-scoped: metadata.namespace must be empty")
        if info.has_status:
            obj["status"] = _default_status(info)
        hook = self.hooks.get(info.kind)
        if hook is not None:
            hook(self.store, obj, model)
        if meta.get("name"):
            meta.pop("generateName", None)
            return self.store.create(obj)
        prefix = meta.pop("generateName", None)
        if not prefix:
            raise Invalid(
                "metadata.name: required (or metadata.generateName)", field="metadata.name"
            )
        for _ in range(8):
            meta["name"] = prefix + _random_suffix()
            try:
                return self.store.create(copy.deepcopy(obj))
            except AlreadyExists:
                continue
        raise AlreadyExists(f"could not find a free name for generateName {prefix!r}")

    def _check_name(self, info: KindInfo, incoming: Obj, namespace: str | None, name: str) -> None:
        meta = incoming.get("metadata", {})
        if meta.get("name") not in (None, name):
            raise BadRequest(
                f"metadata.name {meta['name']!r} does not match the name in the path {name!r}",
                field="metadata.name",
            )
        if info.namespaced and meta.get("namespace") not in (None, namespace):
            raise BadRequest(
                f"metadata.namespace {meta['namespace']!r} does not match the path",
                field="metadata.namespace",
            )

    def replace(self, info: KindInfo, namespace: str | None, name: str, model: BaseModel) -> Obj:
        incoming = dump(model)
        self._check_name(info, incoming, namespace, name)
        return self.store.mutate(
            info.kind,
            namespace or "",
            name,
            lambda current: self._update(info, current, incoming),
            expect_rv=incoming.get("metadata", {}).get("resourceVersion"),
        )

    def patch(self, info: KindInfo, namespace: str | None, name: str, patch: Any) -> Obj:
        if not isinstance(patch, dict):
            raise BadRequest("a merge patch must be a JSON object")
        self._check_name(info, patch, namespace, name)
        expect_rv = (patch.get("metadata") or {}).get("resourceVersion")

        def change(current: Obj) -> Obj | None:
            merged = merge_patch(current, patch)
            merged["status"] = current.get("status")
            if merged["status"] is None:
                merged.pop("status")
            return self._update(info, current, validate(info, merged))

        return self.store.mutate(info.kind, namespace or "", name, change, expect_rv=expect_rv)

    def write_status(
        self, info: KindInfo, namespace: str | None, name: str, body: Any, *, is_patch: bool
    ) -> Obj:
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        self._check_name(info, body, namespace, name)
        expect_rv = (body.get("metadata") or {}).get("resourceVersion")

        previous: list[Obj | None] = []

        def change(current: Obj) -> Obj | None:  # current is the caller's own copy
            before = current.get("status")
            previous[:] = [before]
            if is_patch:
                current["status"] = merge_patch(before or {}, body.get("status") or {})
            else:
                current["status"] = body.get("status") or {}
            checked = validate(info, current).get("status")
            if checked == before:
                return None
            current["status"] = checked
            return current

        written = self.store.mutate(info.kind, namespace or "", name, change, expect_rv=expect_rv)
        if previous and previous[0] != written.get("status"):
            for observe in self.status_observers:
                observe(info.kind, previous[0], written)
        return written

    def delete(
        self, info: KindInfo, namespace: str | None, name: str, *, expect_rv: str | None = None
    ) -> tuple[Obj, bool]:
        def mark(obj: Obj) -> None:
            if info.kind in ("Namespace", "VirtualMachine"):
                obj.setdefault("status", {})["phase"] = "Terminating"

        return self.store.delete(
            info.kind, namespace or "", name, expect_rv=expect_rv, on_mark=mark
        )
