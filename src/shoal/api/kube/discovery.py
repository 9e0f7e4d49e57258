"""API discovery as a Kubernetes API server answers it, so stock kubectl finds shoal's kinds.

kubectl first asks `/api` and `/apis` for the aggregated form (`apidiscovery.k8s.io/v2`): one
answer naming every group, version and resource, sent with exactly the content type it asked for
(it reads the same body sent as plain JSON as the legacy form, and fails). Older clients take the
legacy forms: `APIVersions`, `APIGroupList`, `APIGroup` and the group version's
`APIResourceList`. Everything here is derived from the kind registry, so a new kind is
discoverable by being registered.

The core group (`/api/v1`) holds one resource: the read-only `events` view of shoal.api.kube.events,
which `kubectl describe` lists for an object.
"""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from shoal import __version__, jsoncodec
from shoal.model.registry import KINDS, KindInfo

GROUP = "shoal.dev"
VERSION = "v1"
GROUP_VERSION = f"{GROUP}/{VERSION}"
AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"

# Every kind supports these (deletecollection is not served).
VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")
STATUS_VERBS = ("get", "patch", "update")
CORE_EVENT_VERBS = ("get", "list", "watch")

# The Kubernetes API level shoal's API follows (what `kubectl version` and tools that check a
# server's version see); shoal's own version rides in gitVersion's build metadata.
KUBERNETES_MAJOR, KUBERNETES_MINOR = "1", "32"


def wants_aggregated(request: Request) -> bool:
    """Whether the client asked for aggregated discovery v2 (kubectl 1.30 and later do)."""
    accept = request.headers.get("accept", "").replace(" ", "")
    return any(
        "g=apidiscovery.k8s.io" in part and "v=v2" in part.split(";")
        and "as=APIGroupDiscoveryList" in part
        for part in accept.split(",")
    )  # fmt: skip


def _json(body: Any, media_type: str = "application/json") -> Response:
    return Response(jsoncodec.dumps_bytes(body), media_type=media_type)


def _gvk(info: KindInfo) -> dict[str, str]:
    return {"group": GROUP, "version": VERSION, "kind": info.kind}


def _scope(info: KindInfo) -> str:
    return "Namespaced" if info.namespaced else "Cluster"


def resource_list() -> dict[str, Any]:
    """/apis/shoal.dev/v1: the legacy APIResourceList."""
    resources: list[dict[str, Any]] = []
    for info in KINDS:
        resource: dict[str, Any] = {
            "name": info.plural,
            "singularName": info.singular,
            "namespaced": info.namespaced,
            "kind": info.kind,
            "verbs": list(VERBS),
            "categories": list(info.categories),
        }
        if info.short_names:
            resource["shortNames"] = list(info.short_names)
        resources.append(resource)
        if info.has_status:
            resources.append(
                {
                    "name": f"{info.plural}/status",
                    "singularName": "",
                    "namespaced": info.namespaced,
                    "kind": info.kind,
                    "verbs": list(STATUS_VERBS),
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": resources,
    }


def _aggregated_resource(info: KindInfo) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resource": info.plural,
        "responseKind": _gvk(info),
        "scope": _scope(info),
        "singularResource": info.singular,
        "verbs": list(VERBS),
        "categories": list(info.categories),
    }
    if info.short_names:
        resource["shortNames"] = list(info.short_names)
    if info.has_status:
        resource["subresources"] = [
            {"subresource": "status", "responseKind": _gvk(info), "verbs": list(STATUS_VERBS)}
        ]
    return resource


def aggregated_groups() -> dict[str, Any]:
    """/apis, aggregated: the shoal.dev group and every resource in it."""
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": [
            {
                "metadata": {"name": GROUP},
                "versions": [
                    {
                        "version": VERSION,
                        "resources": [_aggregated_resource(info) for info in KINDS],
                        "freshness": "Current",
                    }
                ],
            }
        ],
    }


def _core_events() -> dict[str, Any]:
    return {
        "resource": "events",
        "responseKind": {"group": "", "version": "v1", "kind": "Event"},
        "scope": "Namespaced",
        "singularResource": "event",
        "verbs": list(CORE_EVENT_VERBS),
        "shortNames": ["ev"],
    }


def aggregated_core() -> dict[str, Any]:
    """/api, aggregated: the core group, with its one resource here (events)."""
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": [
            {
                "metadata": {"name": ""},
                "versions": [
                    {"version": "v1", "resources": [_core_events()], "freshness": "Current"}
                ],
            }
        ],
    }


def _group() -> dict[str, Any]:
    version = {"groupVersion": GROUP_VERSION, "version": VERSION}
    return {"name": GROUP, "versions": [version], "preferredVersion": version}


def version_info() -> dict[str, str]:
    """/version: Kubernetes' fields (read by kubectl and client libraries) and shoal's own."""
    return {
        "major": KUBERNETES_MAJOR,
        "minor": KUBERNETES_MINOR,
        "gitVersion": f"v{KUBERNETES_MAJOR}.{KUBERNETES_MINOR}.0+shoal.{__version__}",
        "gitCommit": "",
        "gitTreeState": "",
        "buildDate": "",
        "goVersion": "",
        "compiler": "",
        "platform": "linux/amd64",
        "version": __version__,
        "apiVersion": GROUP_VERSION,
    }


def discovery_router() -> APIRouter:
    router = APIRouter(tags=["Discovery"])

    @router.get("/api", summary="Core API versions (aggregated discovery on request)")
    def core(request: Request) -> Response:
        """`APIVersions`, or with `Accept: application/json;g=apidiscovery.k8s.io;v=v2;
        as=APIGroupDiscoveryList` the aggregated discovery of the core group (events only)."""
        if wants_aggregated(request):
            return _json(aggregated_core(), AGGREGATED)
        return _json({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})

    @router.get("/api/v1", summary="Core v1 resources")
    def core_v1() -> Response:
        resource = {
            "name": "events",
            "singularName": "event",
            "namespaced": True,
            "kind": "Event",
            "verbs": list(CORE_EVENT_VERBS),
            "shortNames": ["ev"],
        }
        return _json({"kind": "APIResourceList", "groupVersion": "v1", "resources": [resource]})

    @router.get("/apis", summary="API groups (aggregated discovery on request)")
    def groups(request: Request) -> Response:
        """`APIGroupList`, or with the aggregated Accept (see `/api`) every resource of every
        group in one answer."""
        if wants_aggregated(request):
            return _json(aggregated_groups(), AGGREGATED)
        return _json({"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group()]})

    @router.get(f"/apis/{GROUP}", summary="The shoal.dev API group")
    def group() -> Response:
        return _json({"kind": "APIGroup", "apiVersion": "v1", **_group()})

    @router.get(f"/apis/{GROUP_VERSION}", summary="The resources of shoal.dev/v1")
    def resources() -> Response:
        return _json(resource_list())

    return router
