"""`kubectl auth can-i`: SelfSubjectAccessReviews, answered by the rules every route enforces.

kubectl posts `authorization.k8s.io/v1` SelfSubjectAccessReview with the resource, verb,
namespace and name it resolved through discovery; the answer says whether this token may, and
why not. The decision is shoal.api.auth.authorize itself, so it cannot differ from what the route
would do (the route decides again anyway).
"""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from shoal.api.auth import authorize
from shoal.api.kube.protobuf import ProtobufError, access_review_spec, unwrap
from shoal.api.routes import Caller, Ctx, read_json
from shoal.errors import BadRequest, Forbidden
from shoal.model.registry import BY_PLURAL

GROUP = "authorization.k8s.io"
PROTOBUF = "application/vnd.kubernetes.protobuf"
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}


def decide(ctx: Any, caller: Any, attributes: dict[str, Any]) -> tuple[bool, str]:
    """(allowed, reason) for one resourceAttributes."""
    group = str(attributes.get("group") or "")
    resource = str(attributes.get("resource") or "")
    verb = str(attributes.get("verb") or "")
    namespace = attributes.get("namespace") or None
    name = attributes.get("name") or None
    subresource = str(attributes.get("subresource") or "")
    if group != "shoal.dev":
        return False, f"shoal serves only the shoal.dev API group, not {group or 'the core group'}"
    info = BY_PLURAL.get(resource)
    if info is None:
        return False, f"shoal.dev has no resource {resource!r}"
    if verb not in VERBS and verb != "*":
        return False, f"{verb!r} is not a verb of {resource}"
    if subresource not in ("", "status"):
        return False, f"{resource} has no subresource {subresource!r}"
    if subresource == "status" and verb in ("update", "patch"):
        verb = "status"
    verbs = sorted(VERBS) if verb == "*" else [verb]
    obj = {"kind": info.kind, "metadata": {"name": name, "namespace": namespace}} if name else None
    try:
        for one in verbs:
            authorize(
                ctx.store,
                caller,
                one,
                info.kind,
                namespace if info.namespaced else None,
                plural=info.plural,
                obj=obj,
            )
    except Forbidden as refused:
        return False, refused.message
    return True, ""


def access_review_router() -> APIRouter:
    router = APIRouter(tags=["Access"])

    @router.post(
        f"/apis/{GROUP}/v1/selfsubjectaccessreviews",
        status_code=201,
        summary="May the caller do this? (kubectl auth can-i)",
    )
    async def review(request: Request, ctx: Ctx, caller: Caller) -> JSONResponse:
        """A SelfSubjectAccessReview: `spec.resourceAttributes` (group, resource, verb,
        namespace, name, subresource) answered in `status.allowed` and `status.reason`.
        Non-resource URLs are not reviewed (allowed is false, with the reason)."""
        if request.headers.get("content-type", "").startswith(PROTOBUF):
            try:
                _version, kind, raw = unwrap(await request.body())
                if kind != "SelfSubjectAccessReview":
                    raise ProtobufError(f"a {kind or 'message'} is not a SelfSubjectAccessReview")
                body: Any = {"spec": access_review_spec(raw)}
            except ProtobufError as error:
                raise BadRequest(f"the protobuf body cannot be read: {error}") from None
        else:
            body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("spec"), dict):
            raise BadRequest("a SelfSubjectAccessReview needs a spec", field="spec")
        spec = body["spec"]
        attributes = spec.get("resourceAttributes")
        if isinstance(attributes, dict):
            allowed, reason = decide(ctx, caller, attributes)
        elif isinstance(spec.get("nonResourceAttributes"), dict):
            allowed, reason = False, "shoal does not review non-resource URLs"
        else:
            raise BadRequest(
                "spec needs resourceAttributes or nonResourceAttributes",
                field="spec.resourceAttributes",
            )
        status: dict[str, Any] = {"allowed": allowed}
        if reason:
            status["reason"] = reason
        return JSONResponse(
            {
                "apiVersion": f"{GROUP}/v1",
                "kind": "SelfSubjectAccessReview",
                "metadata": {},
                "spec": spec,
                "status": status,
            },
            status_code=201,
        )

    return router
