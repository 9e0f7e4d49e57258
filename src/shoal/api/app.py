"""The FastAPI application: routes of every kind, access, actions, health, errors as Status."""

import logging
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIWebSocketRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from shoal import __version__
from shoal.api.access import access_router
from shoal.api.actions import actions_router
from shoal.api.context import ApiContext
from shoal.api.docs import ERRORS
from shoal.api.kube.access_review import access_review_router
from shoal.api.kube.discovery import discovery_router, version_info
from shoal.api.kube.events import core_events_router
from shoal.api.kube.openapi import openapi_v3_router
from shoal.api.metrics import install_metrics
from shoal.api.origin import OriginCheck
from shoal.api.routes import add_all_kind_routes
from shoal.api.streams import streams_router
from shoal.api.usage import usage_router
from shoal.api.watchmux import watch_mux_router
from shoal.api.webhooks import webhooks_router
from shoal.errors import ApiError, BadRequest, Invalid, MethodNotAllowed, NotFound
from shoal.model.registry import BY_PLURAL
from shoal.web.site import install_site

log = logging.getLogger(__name__)


def _field(loc: tuple[Any, ...]) -> str:
    where, *rest = loc or ("body",)
    if where == "body":
        return ".".join(str(part) for part in rest) or "body"
    return ".".join(str(part) for part in rest) or str(where)


def validation_error(error: RequestValidationError) -> ApiError:
    problems = error.errors()
    if any(p.get("type") == "json_invalid" for p in problems):
        return BadRequest("the body is not valid JSON")
    causes = []
    for problem in problems:
        field = _field(tuple(problem.get("loc", ())))
        message = str(problem.get("msg", "invalid")).removeprefix("Value error, ")
        if field == "body":
            message = "must be a JSON object (sent with Content-Type: application/json)"
        causes.append({"field": field, "message": message})
    return Invalid("; ".join(f"{c['field']}: {c['message']}" for c in causes), causes=causes)


def status_of(request: Request, error: ApiError, body: dict[str, Any] | None = None) -> Any:
    """The error's Status. An Invalid one names what was refused the way Kubernetes does (the
    kind, from the route; the name, from the route or the body; each cause with its reason), so
    kubectl prints `The VirtualMachine "x" is invalid: spec.cpu: ...`."""
    status = error.status()
    if not isinstance(error, Invalid):
        return status
    details = dict(status.get("details") or {})
    plural = _plural_of(request.url.path)
    info = BY_PLURAL.get(plural or "")
    name = request.path_params.get("name") or ((body or {}).get("metadata") or {}).get("name")
    if info is not None:
        details.setdefault("group", "shoal.dev")
        details.setdefault("kind", info.kind)
    if isinstance(name, str) and name:
        details.setdefault("name", name)
    causes = details.get("causes")
    if not causes and details.get("field"):
        field = str(details["field"])
        causes = [{"field": field, "message": error.message.removeprefix(f"{field}: ")}]
    if causes:
        details["causes"] = [{"reason": "FieldValueInvalid", **cause} for cause in causes]
    status["details"] = details
    return status


def _plural_of(path: str) -> str | None:
    parts = path.strip("/").split("/")
    if parts[:3] != ["apis", "shoal.dev", "v1"] or len(parts) < 4:
        return None
    rest = parts[3:]
    if rest[0] == "namespaces" and len(rest) >= 3:
        return rest[2]
    return rest[0]


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="shoal",
        version=__version__,
        description="Ephemeral build VMs: a Kubernetes-shaped API for VMs, nodes and access.",
    )
    app.state.ctx = ctx

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(status_of(request, error), status_code=error.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        api_error = validation_error(error)
        body = error.body if isinstance(error.body, dict) else None
        return JSONResponse(status_of(request, api_error, body), status_code=api_error.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        api_error: ApiError
        if error.status_code == 404:
            api_error = NotFound(f"no route for {request.url.path}")
        elif error.status_code == 405:
            api_error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        else:
            api_error = ApiError(str(error.detail))
            api_error.code = error.status_code
            api_error.reason = "Error"
        return JSONResponse(api_error.status(), status_code=api_error.code)

    @app.exception_handler(Exception)
    async def _bug(request: Request, error: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        body = ApiError(f"internal error: {type(error).__name__}: {error}").status()
        return JSONResponse(body, status_code=500)

    @app.get(
        "/healthz",
        tags=["Health"],
        response_class=PlainTextResponse,
        summary="Is the process alive",
    )
    def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get(
        "/readyz",
        tags=["Health"],
        response_class=PlainTextResponse,
        summary="Can it serve: the store answers",
    )
    def readyz(verbose: bool = False) -> PlainTextResponse:
        """ok when the store answers; with verbose, also which replica this is and whether it
        leads (`shoal controller status` shows them all)."""
        try:
            ctx.store.current_rv()
        except Exception as error:  # the database is down: not ready, but alive
            return PlainTextResponse(f"store unavailable: {error}", status_code=503)
        if not verbose or ctx.leadership is None:
            return PlainTextResponse("ok")
        leadership = ctx.leadership
        role = f"leader (epoch {leadership.epoch})" if leadership.leading else "follower"
        return PlainTextResponse(f"ok\nstore: ok\nreplica {leadership.replica}: {role}\n")

    @app.get("/version", tags=["Health"], summary="Server version")
    def version() -> dict[str, str]:
        """Kubernetes' version fields (the API level shoal follows; `version` is shoal's own),
        and the store's dialect."""
        return {**version_info(), "store": ctx.store.dialect}

    @app.get(
        "/ca.crt",
        tags=["Health"],
        responses={200: {"content": {"application/x-pem-file": {}}}, **ERRORS},
        summary="The CA certificate, for pinning by fingerprint",
    )
    def ca_certificate() -> Response:
        if ctx.ca_pem is None:
            raise NotFound("this server does not use TLS")
        return Response(ctx.ca_pem, media_type="application/x-pem-file")

    install_metrics(app, ctx)
    app.include_router(discovery_router())
    app.include_router(core_events_router())
    app.include_router(openapi_v3_router())
    app.include_router(access_review_router())
    add_all_kind_routes(app.router)
    app.include_router(actions_router())
    app.include_router(access_router())
    app.include_router(webhooks_router())
    app.include_router(usage_router())
    streams = streams_router()
    streams.routes.extend(watch_mux_router().routes)
    app.include_router(streams)
    _document_websockets(app, streams)
    install_site(app)
    app.add_middleware(OriginCheck)
    return app


def _document_websockets(app: FastAPI, router: APIRouter) -> None:
    """OpenAPI has no WebSocket operations: list them under `x-websockets` (path → summary,
    description, parameters), so the document still names every route."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = plain()
        routes: dict[str, Any] = {}
        for route in router.routes:
            if isinstance(route, APIWebSocketRoute):
                doc = (route.endpoint.__doc__ or "").strip()
                routes[route.path] = {
                    "summary": doc.splitlines()[0] if doc else route.name,
                    "parameters": sorted(route.param_convertors),
                    "description": "WebSocket. Refusals are HTTP errors in the handshake with a "
                    "Status body; see docs/tunnels.md for frames and close codes.",
                }
        schema["x-websockets"] = routes
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
