"""Who is calling (authentication) and what they may do (authorization).

Roles are bound per namespace by RoleBindings. The bootstrap user `admin` is a cluster admin. A
Node credential may touch only its own Node, the VMs bound to it, and Events, and get the Secrets
those VMs refer to (Kubernetes' node authorizer rule). Authorization is decided before any object
is read (for a node and a Secret: the VMs bound to the node are), so a 403 never tells whether an
object exists.
"""

import base64
import binascii
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
        "WarmPool": READ,
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
        "WarmPool": READ | WRITE,
        "Secret": READ | WRITE,
        "Event": READ | WRITE,
        "ServiceAccount": READ | WRITE | {"token"},
    },
    "admin": {
        "VirtualMachine": READ | WRITE | {"action", "connect"},
        "VMConfig": READ | WRITE,
        "RunnerPool": READ | WRITE,
        "WarmPool": READ | WRITE,
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


# Browsers cannot set headers on a WebSocket: they offer the token as a subprotocol,
# `bearer.shoal.dev.<base64url of the token, unpadded>`, next to WEBSOCKET_PROTOCOL, which the
# server then picks (a browser refuses a handshake that picks none of what it offered).
WEBSOCKET_PROTOCOL = "shoal.dev"
TOKEN_PROTOCOL_PREFIX = "bearer.shoal.dev."


def offered_protocols(request: HTTPConnection) -> list[str]:
    header = request.headers.get("sec-websocket-protocol", "")
    return [part.strip() for part in header.split(",") if part.strip()]


def websocket_protocol(request: HTTPConnection) -> str | None:
    """The subprotocol to accept a WebSocket with: shoal.dev when the client offered it."""
    return WEBSOCKET_PROTOCOL if WEBSOCKET_PROTOCOL in offered_protocols(request) else None


def _protocol_token(request: HTTPConnection) -> str | None:
    for protocol in offered_protocols(request):
        if protocol.startswith(TOKEN_PROTOCOL_PREFIX):
            encoded = protocol.removeprefix(TOKEN_PROTOCOL_PREFIX)
            try:
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise Unauthorized("the bearer subprotocol does not hold base64url text") from None
    return None


def bearer(request: HTTPConnection) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if request.scope["type"] == "websocket":
        offered = _protocol_token(request)
        if offered and offered.strip():
            return offered.strip()
    raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")


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


def allowed_verbs(store: Store, principal: Principal, namespace: str | None) -> dict[str, set[str]]:
    """Kind -> the verbs principal may use on it in namespace (None: at cluster scope), decided
    by the same tables as authorize(), for clients that offer only what may be done.
    A cluster admin gets {"*": {"*"}}."""
    if principal.cluster_admin:
        return {"*": {"*"}}
    if principal.kind == "Node":  # as _node_may: its own Node and VMs, Events, images
        return {
            "Node": set(READ),
            "Image": set(READ),
            "ImageCache": set(READ),
            "Event": {"create", "get", "list", "update", "patch"},
        }
    allowed: dict[str, set[str]] = {kind: set(READ) for kind in CLUSTER_READABLE}
    if namespace is None:
        return allowed
    for role in roles_in(store, principal, namespace):
        for kind, verbs in ROLES[role].items():
            allowed.setdefault(kind, set()).update(verbs)
    return allowed


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
