"""Who is calling (authentication) and what they may do (authorization).

Roles are bound per namespace by RoleBindings. The bootstrap user `admin` is a cluster admin. A
Node credential may touch only its own Node, the VMs bound to it, and Events, and get the Secrets
those VMs refer to (Kubernetes' node authorizer rule). Authorization is decided before any object
is read (for a node and a Secret: the VMs bound to the node are), so a 403 never tells whether an
object exists.
"""

from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

from shoal.errors import Forbidden, Unauthorized
from shoal.model.kinds import secret_names
from shoal.store.store import Store
from shoal.store.tokens import TokenStore

READ = frozenset({"get", "list", "watch"})
WRITE = frozenset({"create", "update", "patch", "delete"})

# role -> kind -> verbs. "action" covers start/stop/suspend/resume; "connect" covers tunnels.
# As in Kubernetes, view and connect cannot read Secrets.
ROLES: dict[str, dict[str, frozenset[str]]] = {
    "view": {
        "VirtualMachine": READ,
        "VMConfig": READ,
        "RunnerPool": READ,
        "Event": READ,
        "ServiceAccount": READ,
    },
    "connect": {
        "VirtualMachine": READ | {"connect"},
        "VMConfig": READ,
        "Event": READ,
    },
    "edit": {
        "VirtualMachine": READ | WRITE | {"action", "connect"},
        "VMConfig": READ | WRITE,
        "RunnerPool": READ | WRITE,
        "Secret": READ | WRITE,
        "Event": READ | WRITE,
        "ServiceAccount": READ | WRITE | {"token"},
    },
    "admin": {
        "VirtualMachine": READ | WRITE | {"action", "connect"},
        "VMConfig": READ | WRITE,
        "RunnerPool": READ | WRITE,
        "Secret": READ | WRITE,
        "Event": READ | WRITE,
        "ServiceAccount": READ | WRITE | {"token"},
        "RoleBinding": READ | WRITE,
    },
}

# Anyone with a valid credential may read these cluster-scoped kinds.
CLUSTER_READABLE = frozenset({"Node", "Namespace", "Image", "ImageCache"})


@dataclass(frozen=True)
class Principal:
    kind: str  # User, ServiceAccount, Node, Join
    namespace: str
    name: str

    @property
    def cluster_admin(self) -> bool:
        return self.kind == "User" and self.name == "admin"

    def __str__(self) -> str:
        if self.kind == "ServiceAccount":
            return f"serviceaccount {self.namespace}/{self.name}"
        return f"{self.kind.lower()} {self.name}"


def bearer(request: HTTPConnection) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    return token.strip()


def authenticate(request: HTTPConnection) -> Principal:
    """FastAPI dependency (HTTP and WebSocket routes): the caller behind the bearer token."""
    tokens: TokenStore = request.app.state.ctx.tokens
    token = bearer(request)
    record = tokens.cached(token) or tokens.verify(token)
    if record is None:
        raise Unauthorized("the token is invalid, expired or revoked")
    if record.subject_kind == "Join":
        raise Unauthorized("a join token can only be exchanged for a node credential")
    return Principal(record.subject_kind, record.subject_namespace, record.subject_name)


def roles_in(store: Store, principal: Principal, namespace: str) -> set[str]:
    bindings, _ = store.list_objects("RoleBinding", namespace)
    roles: set[str] = set()
    for binding in bindings:
        for subject in binding["subjects"]:
            if subject["kind"] != principal.kind or subject["name"] != principal.name:
                continue
            if (
                principal.kind == "ServiceAccount"
                and (subject.get("namespace") or namespace) != principal.namespace
            ):
                continue
            roles.add(binding["roleRef"]["name"])
    return roles


def authorize(
    store: Store,
    principal: Principal,
    verb: str,
    kind: str,
    namespace: str | None,
    *,
    plural: str,
    node_scope: str | None = None,
    obj: dict[str, Any] | None = None,
) -> None:
    """Raise Forbidden unless principal may do verb on kind in namespace.

    node_scope is the node a list or watch is restricted to (fieldSelector spec.nodeName=X); obj
    is the object a node credential acts on, read before this call only for node credentials.
    """
    if principal.cluster_admin:
        return
    if principal.kind == "Node":
        if kind == "Secret":
            if (
                verb == "get"
                and obj is not None
                and namespace
                and node_needs_secret(store, principal.name, namespace, obj["metadata"]["name"])
            ):
                return
            raise Forbidden(f"{principal} may only get the Secrets that VMs bound to it refer to")
        if _node_may(principal.name, verb, kind, node_scope, obj):
            return
        raise Forbidden(f"{principal} may only act on its own Node and the VMs bound to it")
    if kind in CLUSTER_READABLE and verb in READ:
        return
    where = f"in namespace {namespace}" if namespace else "at cluster scope"
    denied = Forbidden(f"{principal} cannot {verb} {plural} {where}")
    if namespace is None:
        raise denied
    for role in roles_in(store, principal, namespace):
        if verb in ROLES[role].get(kind, frozenset()):
            return
    raise denied


def node_needs_secret(store: Store, node: str, namespace: str, name: str) -> bool:
    """Whether a VM bound to node (spec.nodeName, an indexed column) refers to the Secret
    namespace/name, in spec.access.secretRef or spec.env[].valueFrom.secretKeyRef. A VM deployed
    from a VMConfig holds the config's fields in its own spec, so the VM's spec says it all."""
    vms, _ = store.list_objects("VirtualMachine", namespace, node_name=node)
    return any(name in secret_names(vm.get("spec") or {}) for vm in vms)


def _node_may(
    node: str, verb: str, kind: str, node_scope: str | None, obj: dict[str, Any] | None
) -> bool:
    if kind == "Node":
        return verb in READ or (obj is not None and obj["metadata"]["name"] == node)
    if kind == "Event":
        return verb in {"create", "get", "list", "update", "patch"}
    if kind == "VirtualMachine":
        if verb in {"list", "watch"}:
            return node_scope == node
        if verb in {"get", "update", "patch", "status"}:
            return obj is not None and (obj.get("spec") or {}).get("nodeName") == node
    if kind in ("Image", "ImageCache"):
        return verb in READ
    return False
