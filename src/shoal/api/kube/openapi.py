"""OpenAPI v3 as a Kubernetes API server publishes it, so stock kubectl can use shoal's schemas.

`GET /openapi/v3` lists one document per group version (`apis/shoal.dev/v1`), at a URL that
carries the document's hash; `GET /openapi/v3/apis/shoal.dev/v1` is that document: OpenAPI 3.0,
with every kind's schema under `components.schemas` and every kind route under `paths`.

What kubectl reads in it:

- `kubectl explain vm.spec.image` finds the kind by the `x-kubernetes-group-version-kind` of an
  operation on the resource's collection or item path, then the schema carrying that GVK in its
  list, then follows `properties` (through `$ref` and `allOf`) and prints `description`, `type`
  and `enum` (kubectl's pkg/explain/v2/templates/plaintext.tmpl).
- `--validate=strict` (kubectl's default) leaves validation to the server when some PATCH
  operation of the kind's GVK declares the query parameter `fieldValidation`; otherwise it
  validates on the client against OpenAPI v2, which shoal does not serve, and fails
  (cli-runtime's pkg/resource/query_param_verifier_v3.go). The parameter must sit in the
  operation's own parameters, not the path's.
- `kubectl apply` sends a strategic merge patch only when the PATCH operation lists
  `application/strategic-merge-patch+json`; shoal's does not, so it sends a JSON merge patch
  (kubectl's pkg/cmd/apply/patcher.go).

kubectl parses the document into kube-openapi's OpenAPI 3.0 types, so the pydantic schemas
(JSON Schema 2020-12) are rewritten into OpenAPI 3.0: `anyOf [X, null]` becomes X with
`nullable`, `const` an enum of one value, a `$ref` with sibling keywords an `allOf` around it
(as Kubernetes writes fields that refer to a schema), `patternProperties` a plain
`additionalProperties`.

The documents are the same for the life of the process: built once, served as bytes.
"""

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shoal import __version__
from shoal.api.docs import ERRORS as API_ERRORS
from shoal.api.docs import Status
from shoal.api.objects import SERVER_SET
from shoal.api.routes import MERGE_PATCH, PREFIX
from shoal.model.meta import API_VERSION
from shoal.model.registry import KINDS, KindInfo

GROUP, VERSION = API_VERSION.split("/")
# The key of the group version in the discovery document, and where its document is served.
GROUP_VERSION_PATH = f"apis/{GROUP}/{VERSION}"
DISCOVERY_PATH = "/openapi/v3"
DOCUMENT_PATH = f"{DISCOVERY_PATH}/{GROUP_VERSION_PATH}"
# Schema names, Kubernetes style (reverse domain, version, type): kubectl explain shows the last
# dot-separated part as a field's type.
SCHEMA_PREFIX = f"{'.'.join(reversed(GROUP.split('.')))}.{VERSION}."
REF = "#/components/schemas/"
JSON = "application/json"

# Said of the fields every kind shares, where the models say nothing of them.
TYPE_FIELDS = {
    "apiVersion": f"The versioned schema of this object: always {API_VERSION}.",
    "kind": "The kind of this object, in CamelCase; it must match the kind of the route.",
    "metadata": "The object's name, namespace and labels, and what the server keeps of it "
    "(uid, resourceVersion, generation, timestamps).",
    "spec": "What the object should be: the part a client writes. A change to it bumps "
    "metadata.generation.",
    "status": "What the object is, as shoal's controllers and agents observe it. Written "
    "through the status subresource only: writes of the object itself leave it as it is.",
}
OBJECT_META_FIELDS = {
    "name": "Unique among the objects of its kind in a namespace (or the cluster, for a "
    "cluster-scoped kind): a DNS label of at most 63 lower-case letters, digits and '-'. "
    "Required on create unless generateName is given. Cannot be changed.",
    "generateName": "A prefix from which the server makes a unique name, when name is not "
    "given on create.",
    "namespace": "The namespace of a namespaced object; defaults to the one in the request's "
    "path. Cannot be changed.",
    "uid": "Unique in time and space, set by the server on create. Read-only.",
    "resourceVersion": "The version of the object as stored, changed by every write; send it "
    "back with an update to make the update conditional on it. Read-only.",
    "generation": "A sequence number the server bumps on every change of the spec. Read-only.",
    "creationTimestamp": "When the object was created (RFC 3339, UTC). Read-only.",
    "deletionTimestamp": "When deletion was asked for, set while finalizers still hold the "
    "object. Read-only.",
    "labels": "Keys and values to organize and select objects by (label selectors).",
    "annotations": "Keys and values for tools and people: not used to select objects.",
    "finalizers": "What must still happen before the object is removed: it is deleted once "
    "this list is empty.",
}
IMMUTABLE = "Cannot be changed once set."
SERVER_WRITES = "Set by the scheduler: a client cannot write it."

FIELD_VALIDATION = {
    "name": "fieldValidation",
    "in": "query",
    "description": "How to treat fields of the body the kind does not have: Strict, Warn or "
    "Ignore. shoal always validates strictly: such a body is refused (422 Invalid, naming the "
    "field) whichever is given.",
    "schema": {"type": "string", "uniqueItems": True},
}
DRY_RUN = {
    "name": "dryRun",
    "in": "query",
    "description": "Not supported: any value is refused (400), so that nothing is changed by a "
    "request meant as a dry run.",
    "schema": {"type": "string", "uniqueItems": True},
}
INCLUDE_OBJECT = (
    "includeObject",
    "string",
    "With a Table answer (Accept: application/json;as=Table;v=v1;g=meta.k8s.io): what each "
    "row carries of its object: None, Metadata (the default) or Object.",
)
# The query parameters of the list routes (routes.add_list_route), in its order.
LIST_PARAMETERS = (
    ("labelSelector", "string", "Only the objects whose labels match this selector."),
    ("fieldSelector", "string", "Only the objects whose fields match this selector."),
    ("limit", "integer", "At most this many objects; continue from metadata.continue."),
    ("continue", "string", "Where the previous page of a limited list ended."),
    ("watch", "boolean", "Stream the changes as watch events (application/x-ndjson)."),
    ("resourceVersion", "string", "With watch: the changes after this version."),
    ("timeoutSeconds", "integer", "With watch: end the stream after this many seconds."),
    INCLUDE_OBJECT,
    (
        "allowWatchBookmarks",
        "boolean",
        "With watch and a Table answer: send BOOKMARK events too (JSON watches always get them).",
    ),
)


def _query(name: str, type_: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": {"type": type_}}


@dataclass(frozen=True)
class Served:
    """The documents as sent: bytes, and their hashes (as the ETag, and in the URL)."""

    discovery: bytes
    discovery_hash: str
    document: bytes
    document_hash: str


def _digest(body: bytes) -> str:
    # What kube-openapi uses for the hash and the ETag: SHA-512, upper-case hex.
    return hashlib.sha512(body).hexdigest().upper()


def _encode(document: dict[str, Any]) -> bytes:
    # Sorted keys: the same bytes (so the same hash) on every replica and every start.
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def schema_name(name: str) -> str:
    return SCHEMA_PREFIX + name


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF + schema_name(name)}


def gvk(kind: str) -> dict[str, str]:
    return {"group": GROUP, "version": VERSION, "kind": kind}


# -- Schemas: pydantic's JSON Schema rewritten as OpenAPI 3.0 -------------------------------


def to_openapi(node: Any) -> Any:
    """A JSON Schema (as pydantic writes it) as an OpenAPI 3.0 schema."""
    if isinstance(node, list):
        return [to_openapi(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "propertyNames"):
            continue  # noise, and no OpenAPI 3.0 keyword (key constraints are checked on write)
        if key == "properties":
            out[key] = {name: to_openapi(schema) for name, schema in value.items()}
        elif key == "patternProperties":
            if "additionalProperties" not in node and len(value) == 1:
                out["additionalProperties"] = to_openapi(next(iter(value.values())))
        elif key == "const":
            out["enum"] = [value]
        elif key == "examples":
            if value:
                out["example"] = value[0]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key in ("default", "enum", "example"):
            if value is not None:  # values, not schemas: as they are (a null default: none)
                out[key] = value
        elif key == "description" and isinstance(value, str):
            out[key] = unwrap(value)
        else:
            out[key] = to_openapi(value)
    if "anyOf" in out:
        out = _without_null(out)
    if "$ref" in out and len(out) > 1:
        # OpenAPI 3.0 ignores a $ref's siblings: Kubernetes puts the $ref in an allOf instead.
        out = {"allOf": [{"$ref": out.pop("$ref")}], **out}
    return out


def unwrap(text: str) -> str:
    """A docstring's lines joined into paragraphs: kubectl explain wraps text itself, and keeps
    every line break it is given."""
    paragraphs = (" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip()))
    return "\n\n".join(p for p in paragraphs if p)


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """anyOf [X, null] as X with nullable; several alternatives of one type get that type."""
    branches = [b for b in schema["anyOf"] if b != {"type": "null"}]
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    if len(branches) < len(schema["anyOf"]):
        rest["nullable"] = True
    if len(branches) == 1:
        (only,) = branches
        if "$ref" in only:
            return {"allOf": [only], **rest}
        return {**only, **rest}
    types = {b.get("type") for b in branches}
    if len(types) == 1 and None not in types:
        rest.setdefault("type", types.pop())
    return {"anyOf": branches, **rest}


def _set_description(field: dict[str, Any], text: str) -> None:
    field["description"] = text
    if "$ref" in field:  # a $ref with a sibling, as OpenAPI 3.0 reads it: in an allOf
        field["allOf"] = [{"$ref": field.pop("$ref")}]


def _describe(schema: dict[str, Any], descriptions: dict[str, str]) -> None:
    for name, text in descriptions.items():
        field = schema.get("properties", {}).get(name)
        if field is not None and not field.get("description"):
            _set_description(field, text)


def _note(field: dict[str, Any], note: str) -> None:
    text = field.get("description", "")
    if note not in text:
        _set_description(field, f"{text} {note}".strip())


def _field_at(schemas: dict[str, Any], kind: str, path: str) -> dict[str, Any] | None:
    """The schema of a dotted field path of a kind, following $refs; None if there is none."""
    schema: dict[str, Any] | None = schemas[schema_name(kind)]
    field: dict[str, Any] | None = None
    for part in path.split("."):
        if schema is None:
            return None
        field = schema.get("properties", {}).get(part)
        if field is None:
            return None
        schema = _resolve(schemas, field)
    return field


def _resolve(schemas: dict[str, Any], field: dict[str, Any]) -> dict[str, Any] | None:
    target = field.get("$ref") or next(
        (part["$ref"] for part in field.get("allOf", ()) if "$ref" in part), None
    )
    if target is None:
        return field
    resolved = schemas.get(str(target).removeprefix(REF))
    return resolved if isinstance(resolved, dict) else None


def _list_schema(info: KindInfo) -> dict[str, Any]:
    return {
        "description": f"A list of {info.kind} objects (what a list of {info.plural} answers).",
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": TYPE_FIELDS["apiVersion"]},
            "kind": {"type": "string", "enum": [f"{info.kind}List"]},
            "metadata": {"allOf": [ref("ListMeta")], "description": "The list's metadata."},
            "items": {
                "type": "array",
                "description": f"The {info.plural}.",
                "items": ref(info.kind),
            },
        },
        "x-kubernetes-group-version-kind": [gvk(f"{info.kind}List")],
    }


LIST_META = {
    "description": "The metadata of a list.",
    "type": "object",
    "properties": {
        "resourceVersion": {
            "type": "string",
            "description": "The version of the store the list was read at: watch from it to "
            "see every change after the list.",
        },
        "continue": {
            "type": "string",
            "description": "Set when the list was limited and more objects follow: pass it as "
            "the continue parameter to read the next page.",
        },
    },
}


def component_schemas() -> dict[str, Any]:
    """Every kind's schema and what it refers to, its list's, ListMeta and Status."""
    models: list[type[BaseModel]] = [*(info.model for info in KINDS), Status]
    _, top = models_json_schema(
        [(model, "validation") for model in models],
        ref_template=REF + SCHEMA_PREFIX + "{model}",
    )
    schemas: dict[str, Any] = {
        schema_name(name): to_openapi(schema) for name, schema in top.get("$defs", {}).items()
    }
    for info in KINDS:
        name = schema_name(info.kind)
        if name not in schemas:
            raise RuntimeError(f"no schema named {name} for the kind {info.kind}")
        schema = schemas[name]
        schema["x-kubernetes-group-version-kind"] = [gvk(info.kind)]
        _describe(schema, TYPE_FIELDS)
        for path in info.immutable:
            field = _field_at(schemas, info.kind, path)
            if field is not None:
                _note(field, IMMUTABLE)
        for path in SERVER_SET.get(info.kind, ()):
            field = _field_at(schemas, info.kind, path)
            if field is not None:
                _note(field, SERVER_WRITES)
        list_name = schema_name(f"{info.kind}List")
        if list_name in schemas:
            raise RuntimeError(f"a model is named {info.kind}List, like the kind's list")
        schemas[list_name] = _list_schema(info)
    meta = schemas.get(schema_name("ObjectMeta"))
    if meta is not None:
        _describe(meta, OBJECT_META_FIELDS)
        meta.setdefault(
            "description",
            "The metadata every object has: its name and namespace, labels and annotations, "
            "and what the server keeps of it.",
        )
    schemas.setdefault(schema_name("ListMeta"), LIST_META)
    status = schemas[schema_name("Status")]
    status.setdefault("description", "What every refused request answers, with its HTTP code.")
    return dict(sorted(schemas.items()))


# -- Paths --------------------------------------------------------------------------------


def _path_parameter(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "uniqueItems": True},
    }


def _answer(schema: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": ref(schema)}}}


ERRORS = {
    "401": {"description": "Unauthorized"},
    "default": {"description": "Refused: a Status", "content": {JSON: {"schema": ref("Status")}}},
}


def _operation(
    info: KindInfo, action: str, operation_id: str, description: str, **extra: Any
) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "description": description,
        "tags": [f"{GROUP}_{VERSION}"],
        **extra,
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(info.kind),
    }


def _body(info: KindInfo) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": ref(info.kind)}}}


def _patch_body() -> dict[str, Any]:
    # The content types the patch routes read (a JSON merge patch), as they declare them.
    content = MERGE_PATCH["requestBody"]["content"]
    assert isinstance(content, dict)
    return {
        "required": True,
        "content": {media: {"schema": {"type": "object"}} for media in content},
    }


def _list_operation(info: KindInfo, operation_id: str, description: str) -> dict[str, Any]:
    parameters = [_query(*parameter) for parameter in LIST_PARAMETERS]
    return _operation(
        info,
        "list",
        operation_id,
        description,
        parameters=parameters,
        responses={
            "200": {
                "description": "OK",
                "content": {
                    JSON: {"schema": ref(f"{info.kind}List")},
                    "application/x-ndjson": {"schema": {"type": "string"}},
                },
            },
            **ERRORS,
        },
    )


def kind_paths(info: KindInfo) -> dict[str, dict[str, Any]]:
    """The path items of one kind, as routes.add_kind_routes serves them."""
    kind = info.kind
    scope = "Namespaced" if info.namespaced else ""
    ident = f"{_camel(GROUP)}{VERSION.capitalize()}{scope}{kind}"
    collection = (
        f"{PREFIX}/namespaces/{{namespace}}/{info.plural}"
        if info.namespaced
        else f"{PREFIX}/{info.plural}"
    )
    item = collection + "/{name}"
    namespace = [_path_parameter("namespace", "The namespace.")] if info.namespaced else []
    name = _path_parameter("name", f"The name of the {kind}.")
    written = {"parameters": [FIELD_VALIDATION, DRY_RUN]}
    paths: dict[str, dict[str, Any]] = {
        collection: {
            "parameters": namespace,
            "get": _list_operation(info, f"list{ident}", f"list or watch {info.plural}"),
            "post": _operation(
                info,
                "post",
                f"create{ident}",
                f"create a {kind}",
                **written,
                requestBody=_body(info),
                responses={"200": _answer(kind), "201": _answer(kind, "Created"), **ERRORS},
            ),
        },
        item: {
            "parameters": [name, *namespace],
            "get": _operation(
                info,
                "get",
                f"read{ident}",
                f"read the {kind}",
                parameters=[_query(*INCLUDE_OBJECT)],
                responses={"200": _answer(kind), **ERRORS},
            ),
            "put": _operation(
                info,
                "put",
                f"replace{ident}",
                f"replace the {kind}",
                **written,
                requestBody=_body(info),
                responses={"200": _answer(kind), **ERRORS},
            ),
            "patch": _operation(
                info,
                "patch",
                f"patch{ident}",
                f"partially update the {kind} (JSON merge patch)",
                **written,
                requestBody=_patch_body(),
                responses={"200": _answer(kind), **ERRORS},
            ),
            "delete": _operation(
                info,
                "delete",
                f"delete{ident}",
                f"delete the {kind}",
                parameters=[
                    _query(
                        "resourceVersion",
                        "string",
                        "Delete only if the object is at this version.",
                    ),
                    DRY_RUN,
                ],
                responses={"200": _answer(kind), **ERRORS},
            ),
        },
    }
    if info.namespaced:
        paths[f"{PREFIX}/{info.plural}"] = {
            "parameters": [],
            "get": _list_operation(
                info,
                f"list{_camel(GROUP)}{VERSION.capitalize()}{kind}ForAllNamespaces",
                f"list or watch {info.plural} in all namespaces",
            ),
        }
    if info.has_status:
        paths[item + "/status"] = {
            "parameters": [name, *namespace],
            "get": _operation(
                info,
                "get",
                f"read{ident}Status",
                f"read the status of the {kind}",
                responses={"200": _answer(kind), **ERRORS},
            ),
            "put": _operation(
                info,
                "put",
                f"replace{ident}Status",
                f"replace the status of the {kind}",
                **written,
                requestBody=_body(info),
                responses={"200": _answer(kind), **ERRORS},
            ),
            "patch": _operation(
                info,
                "patch",
                f"patch{ident}Status",
                f"partially update the status of the {kind} (JSON merge patch)",
                **written,
                requestBody=_patch_body(),
                responses={"200": _answer(kind), **ERRORS},
            ),
        }
    for path_item in paths.values():
        if not path_item["parameters"]:
            del path_item["parameters"]
    return paths


def _camel(group: str) -> str:
    return "".join(part.capitalize() for part in group.replace("-", ".").split("."))


# -- Documents ------------------------------------------------------------------------------


def group_document() -> dict[str, Any]:
    """The OpenAPI 3.0 document of shoal.dev/v1."""
    paths: dict[str, Any] = {}
    for info in KINDS:
        paths.update(kind_paths(info))
    return {
        "openapi": "3.0.0",
        "info": {"title": "shoal", "version": __version__},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": component_schemas()},
    }


def discovery_document(document_hash: str) -> dict[str, Any]:
    """/openapi/v3: where each group version's document is, its hash in the URL."""
    url = f"{DOCUMENT_PATH}?hash={document_hash}"
    return {"paths": {GROUP_VERSION_PATH: {"serverRelativeURL": url}}}


@functools.cache
def served() -> Served:
    document = _encode(group_document())
    document_hash = _digest(document)
    discovery = _encode(discovery_document(document_hash))
    return Served(discovery, _digest(discovery), document, document_hash)


def _send(request: Request, body: bytes, etag: str, **headers: str) -> Response:
    quoted = f'"{etag}"'
    if quoted in (part.strip() for part in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers={"ETag": quoted, **headers})
    return Response(body, media_type=JSON, headers={"ETag": quoted, **headers})


DOCUMENT_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"content": {JSON: {"schema": {"type": "object"}}}, "description": "the document"},
    301: {"description": "the hash is not the current document's: where that is"},
    304: {"description": "unchanged since the ETag given in If-None-Match"},
    422: API_ERRORS[422],
}


def openapi_v3_router() -> APIRouter:
    """GET /openapi/v3 and GET /openapi/v3/apis/shoal.dev/v1. Like /version and discovery they
    need no token: they describe the API (as /openapi.json does), not anything in it."""
    router = APIRouter(tags=["Discovery"])

    @router.get(
        DISCOVERY_PATH,
        summary="OpenAPI v3 discovery: the document of each group version",
        responses=DOCUMENT_ANSWERS,
    )
    def openapi_v3(request: Request) -> Response:
        """Kubernetes' OpenAPI v3 discovery: `paths` maps `apis/shoal.dev/v1` to the URL of its
        document, with the document's hash in it (a new hash: a new document)."""
        docs = served()
        return _send(request, docs.discovery, docs.discovery_hash)

    @router.get(
        DOCUMENT_PATH,
        summary=f"The OpenAPI v3 document of {API_VERSION}, as kubectl reads it",
        responses=DOCUMENT_ANSWERS,
    )
    def openapi_v3_group(
        request: Request,
        hash_: Annotated[
            str | None,
            Query(alias="hash", max_length=256, description="The hash /openapi/v3 gives"),
        ] = None,
    ) -> Response:
        """Every kind's schema (with its `x-kubernetes-group-version-kind`) and routes. With the
        current hash the answer may be cached for good; with another, a redirect to the
        current one."""
        docs = served()
        if hash_ and hash_ != docs.document_hash:
            return RedirectResponse(f"{DOCUMENT_PATH}?hash={docs.document_hash}", 301)
        if not hash_:
            return _send(request, docs.document, docs.document_hash)
        expires = format_datetime(datetime.now(UTC) + timedelta(days=365), usegmt=True)
        return _send(
            request,
            docs.document,
            docs.document_hash,
            **{"Cache-Control": "public, immutable", "Expires": expires, "Vary": "Accept"},
        )

    return router
