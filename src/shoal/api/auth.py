"""Who is calling (authentication) and what they may do (authorization).

Roles are bound per namespace by RoleBindings. The bootstrap user `admin` is a cluster admin. A
Node credential may touch only its own Node, the VMs bound to it, and Events. Authorization is
decided before any object is read, so a 403 never tells whether an object exists.
"""

from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

from shoal.errors import Forbidden, Unauthorized
from shoal.store.store import Store
from shoal.store.tokens import TokenStore

READ = frozenset({"get", "list", "watch"})
WRITE = frozenset({"create", "update", "patch", "delete"})

# role -> kind -> verbs. "action" covers start/stop/suspend/resume; "connect" covers tunnels.
ROLES: dict[str, dict[str, frozenset[str]]] = {
    "view": {
        "VirtualMachine": READ,
        "VMConfig": READ,
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
        "Event": READ | WRITE,
        "ServiceAccount": READ | WRITE | {"token"},
    },
    "admin": {
        "VirtualMachine": READ | WRITE | {"action", "connect"},
        "VMConfig": READ | WRITE,
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
