"""The OpenAPI v3 documents kubectl reads (/openapi/v3 and its group version's document): their
shape, the way kubectl looks things up in them (explain, the fieldValidation check, the patch
type of apply), that they name every kind route the app serves and nothing it does not, and
that the schemas hold real objects and refuse broken ones."""

import asyncio
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from shoal.api.kube import openapi
from shoal.api.routes import PREFIX, add_all_kind_routes
from shoal.model.registry import BY_KIND, KINDS
from shoal.server import ControllerSettings, ControlPlane

Doc = dict[str, Any]
GROUP_VERSION = "apis/shoal.dev/v1"
METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """The real app, not served (these routes need no store)."""
    data_dir: Path = tmp_path_factory.mktemp("openapi")
    plane = ControlPlane(ControllerSettings(data_dir=data_dir, tls=False))
    app: FastAPI = plane.app
    return app


class Http:
    """GETs straight into the app (ASGI, no server), without a token: these documents are
    readable without one."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def get(self, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
        async def get() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://shoal") as client:
                return await client.get(url, headers=headers)

        return asyncio.run(get())


@pytest.fixture(scope="module")
def http(app: FastAPI) -> Http:
    return Http(app)


@pytest.fixture(scope="module")
def document(http: Http) -> Doc:
    url = http.get("/openapi/v3").json()["paths"][GROUP_VERSION]["serverRelativeURL"]
    answer = http.get(url)
    assert answer.status_code == 200
    body: Doc = answer.json()
    return body


def gvk(kind: str) -> dict[str, str]:
    return {"group": "shoal.dev", "version": "v1", "kind": kind}


def resolve(doc: Doc, schema: Doc) -> Doc:
    """A schema with its $ref (or a one-$ref allOf) followed, as kubectl explain does."""
    target = schema.get("$ref") or next(
        (part["$ref"] for part in schema.get("allOf", ()) if "$ref" in part), None
    )
    if target is None:
        return schema
    assert target.startswith("#/components/schemas/"), target
    found: Doc = doc["components"]["schemas"][target.removeprefix("#/components/schemas/")]
    return found


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Doc]]:
    """Every schema object under node (properties, items, additionalProperties, allOf, anyOf)."""
    if not isinstance(node, dict):
        return
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from walk(node[key], f"{path}[{key}]")
    for key in ("allOf", "anyOf", "oneOf"):
        for index, sub in enumerate(node.get(key, ())):
            yield from walk(sub, f"{path}.{key}[{index}]")


def kind_routes() -> set[tuple[str, str]]:
    """(path, method) of every kind route, as routes.add_all_kind_routes makes them."""
    router = APIRouter()
    add_all_kind_routes(router)
    return {
        (route.path, method.lower())
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }


# -- Discovery and serving ------------------------------------------------------------------


def test_discovery_names_the_group_version_document_by_its_hash(http: Http) -> None:
    answer = http.get("/openapi/v3")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    paths = answer.json()["paths"]
    assert list(paths) == [GROUP_VERSION]  # no api/v1 (yet)
    url = paths[GROUP_VERSION]["serverRelativeURL"]
    assert url.startswith("/openapi/v3/apis/shoal.dev/v1?hash=")
    digest = url.split("hash=", 1)[1]

    served = http.get(url)
    assert served.status_code == 200
    assert served.headers["content-type"] == "application/json"
    # The hash is the served document's (as kube-openapi: SHA-512 of the bytes, upper-case hex).
    assert hashlib.sha512(served.content).hexdigest().upper() == digest
    assert served.headers["etag"] == f'"{digest}"'
    assert served.headers["cache-control"] == "public, immutable"

    # The same bytes without the hash (not cacheable for good then), and on every call.
    plain = http.get("/openapi/v3/apis/shoal.dev/v1")
    assert plain.content == served.content
    assert "cache-control" not in plain.headers
    assert http.get("/openapi/v3").json() == answer.json()


def test_a_stale_hash_is_redirected_and_an_etag_revalidates(http: Http) -> None:
    url = http.get("/openapi/v3").json()["paths"][GROUP_VERSION]["serverRelativeURL"]
    stale = http.get("/openapi/v3/apis/shoal.dev/v1?hash=0123ABCD")  # redirects not followed
    assert stale.status_code == 301
    assert stale.headers["location"] == url
    etag = http.get(url).headers["etag"]
    again = http.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and not again.content
    other = http.get("/openapi/v3", headers={"If-None-Match": etag})
    assert other.status_code == 200  # the discovery document has its own ETag


def test_unknown_group_versions_are_not_found(http: Http) -> None:
    answer = http.get("/openapi/v3/api/v1")
    assert answer.status_code == 404
    assert answer.json()["kind"] == "Status"


def test_the_documents_are_built_once(http: Http) -> None:
    assert openapi.served() is openapi.served()
    first = http.get("/openapi/v3/apis/shoal.dev/v1").content
    assert http.get("/openapi/v3/apis/shoal.dev/v1").content == first
    assert json.loads(first)["openapi"].startswith("3.0")


# -- Schemas --------------------------------------------------------------------------------


def test_every_kind_and_its_list_have_a_schema_with_their_gvk(document: Doc) -> None:
    schemas = document["components"]["schemas"]
    owners: dict[str, list[str]] = {}
    for name, schema in schemas.items():
        assert name.startswith("dev.shoal.v1."), name
        for entry in schema.get("x-kubernetes-group-version-kind", ()):
            owners.setdefault(entry["kind"], []).append(name)
    for info in KINDS:
        schema = schemas[f"dev.shoal.v1.{info.kind}"]
        assert schema["x-kubernetes-group-version-kind"] == [gvk(info.kind)]
        assert schema["type"] == "object"
        assert (
            resolve(document, schema["properties"]["metadata"])
            is schemas["dev.shoal.v1.ObjectMeta"]
        )
        assert schema["properties"]["kind"]["enum"] == [info.kind]
        listed = schemas[f"dev.shoal.v1.{info.kind}List"]
        assert listed["x-kubernetes-group-version-kind"] == [gvk(f"{info.kind}List")]
        assert resolve(document, listed["properties"]["items"]["items"]) is schema
        # kubectl explain takes the first schema carrying the GVK: there must be only one.
        assert owners[info.kind] == [f"dev.shoal.v1.{info.kind}"]
        assert owners[f"{info.kind}List"] == [f"dev.shoal.v1.{info.kind}List"]
    assert "name" in schemas["dev.shoal.v1.ObjectMeta"]["properties"]


def test_schemas_are_openapi_3_0(document: Doc) -> None:
    """What kube-openapi's Go types parse: no JSON Schema 2020-12 keywords, no null type, a $ref
    alone in its object, and every $ref resolving."""
    schemas = document["components"]["schemas"]
    for name, schema in schemas.items():
        for path, node in walk(schema, name):
            assert not {"const", "$defs", "patternProperties", "propertyNames", "examples"} & set(
                node
            ), path
            assert node.get("type") != "null", path
            assert not isinstance(node.get("type"), list), path
            for key in ("exclusiveMinimum", "exclusiveMaximum"):
                assert isinstance(node.get(key, False), bool), path
            if "$ref" in node:
                assert set(node) == {"$ref"}, path
                assert node["$ref"].removeprefix("#/components/schemas/") in schemas, path
            for branch in node.get("anyOf", ()):
                assert branch != {"type": "null"}, path


def test_field_descriptions_come_through(document: Doc) -> None:
    """Field(description=...) and docstrings reach the schema (as kubectl explain prints them),
    a described field that refers to a schema inside an allOf; hard line breaks are gone."""

    class Inner(BaseModel):
        """An inner
        model."""

        size: int = Field(default=1, description="How big.")

    class Outer(BaseModel):
        inner: Inner = Field(description="The inner part.")
        maybe: Inner | None = Field(default=None, description="Perhaps.")
        plain: str | None = Field(default=None, description="Some text.")

    _, top = models_json_schema(
        [(Outer, "validation")], ref_template="#/components/schemas/{model}"
    )
    defs = {name: openapi.to_openapi(schema) for name, schema in top["$defs"].items()}
    outer = defs["Outer"]["properties"]
    assert outer["inner"] == {
        "allOf": [{"$ref": "#/components/schemas/Inner"}],
        "description": "The inner part.",
    }
    assert outer["maybe"]["description"] == "Perhaps." and outer["maybe"]["nullable"] is True
    assert outer["maybe"]["allOf"] == [{"$ref": "#/components/schemas/Inner"}]
    assert outer["plain"] == {"type": "string", "nullable": True, "description": "Some text."}
    assert defs["Inner"]["description"] == "An inner model."
    assert defs["Inner"]["properties"]["size"]["description"] == "How big."

    # The real kinds: docstrings, and what the registry says of fields.
    schemas = document["components"]["schemas"]
    assert schemas["dev.shoal.v1.GuestAccess"]["description"].startswith("How the agent gets")
    assert "\n" not in schemas["dev.shoal.v1.GuestAccess"]["description"]
    image = schemas["dev.shoal.v1.VirtualMachineSpec"]["properties"]["image"]
    assert "Cannot be changed once set." in image["description"]


# -- Paths ----------------------------------------------------------------------------------


def test_every_kind_route_is_in_the_document_and_nothing_else(app: FastAPI, document: Doc) -> None:
    routes = kind_routes()
    served = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    assert routes <= served  # the app serves these very routes
    documented = {
        (path, method)
        for path, item in document["paths"].items()
        for method in METHODS
        if method in item
    }
    assert documented == routes
    for info in KINDS:
        plural = info.plural
        collection = (
            f"{PREFIX}/namespaces/{{namespace}}/{plural}"
            if info.namespaced
            else f"{PREFIX}/{plural}"
        )
        item = f"{collection}/{{name}}"
        assert (collection, "post") in documented and (item, "patch") in documented
        assert ((item + "/status", "patch") in documented) == info.has_status
        if info.namespaced:
            assert (f"{PREFIX}/{plural}", "get") in documented


def test_operations_carry_their_action_and_gvk(document: Doc) -> None:
    for path, item in document["paths"].items():
        plural = path.removesuffix("/status").removesuffix("/{name}").rsplit("/", 1)[1]
        info = next(info for info in KINDS if info.plural == plural)
        for method in METHODS:
            if method not in item:
                continue
            operation = item[method]
            # An operation's GVK is one object (a schema's is a list).
            assert operation["x-kubernetes-group-version-kind"] == gvk(info.kind), path
            listing = method == "get" and not path.endswith(("{name}", "/status"))
            expected = "list" if listing else method
            assert operation["x-kubernetes-action"] == expected, (path, method)
            for parameter in [*operation.get("parameters", ()), *item.get("parameters", ())]:
                assert parameter["in"] in ("query", "path"), (path, parameter)
        for name in ("namespace", "name"):
            declared = [p["name"] for p in item.get("parameters", ())]
            assert (f"{{{name}}}" in path) == (name in declared), path


def supports_query_param(doc: Doc, kind: str, param: str) -> bool:
    """kubectl's check (cli-runtime query_param_verifier_v3.go): the first PATCH operation with
    the GVK decides, by its own parameters; the paths are a map, so any may come first."""
    verdicts = [
        any(p["name"] == param and p["in"] == "query" for p in item["patch"].get("parameters", ()))
        for item in doc["paths"].values()
        if "patch" in item and item["patch"]["x-kubernetes-group-version-kind"] == gvk(kind)
    ]
    assert verdicts, f"no PATCH operation for {kind}"
    return all(verdicts)


def test_writes_declare_field_validation_so_kubectl_validates_on_the_server(
    document: Doc,
) -> None:
    for info in KINDS:
        assert supports_query_param(document, info.kind, "fieldValidation"), info.kind
    for path, item in document["paths"].items():
        for method in ("post", "put", "patch"):
            if method in item:
                names = [p["name"] for p in item[method]["parameters"]]
                assert "fieldValidation" in names, (path, method)


def test_patches_are_json_merge_patches_only(document: Doc) -> None:
    """kubectl apply sends a strategic merge patch only where the PATCH operation lists that
    type (kubectl's apply/patcher.go); shoal takes JSON merge patches."""
    for path, item in document["paths"].items():
        if "patch" in item:
            content = item["patch"]["requestBody"]["content"]
            assert "application/merge-patch+json" in content, path
            assert not {
                "application/strategic-merge-patch+json",
                "application/apply-patch+yaml",
                "application/json-patch+json",
            } & set(content), path


def test_query_parameters_are_the_routes_own(app: FastAPI, document: Doc) -> None:
    """Every query parameter a kind route takes is declared, and only those."""
    real = app.openapi()["paths"]
    for path, item in document["paths"].items():
        for method in METHODS:
            if method not in item:
                continue
            ours = {p["name"] for p in item[method].get("parameters", ()) if p["in"] == "query"}
            theirs = {
                p["name"] for p in real[path][method].get("parameters", ()) if p["in"] == "query"
            }
            assert ours == theirs, (path, method)


# -- kubectl explain ------------------------------------------------------------------------


def explain(doc: Doc, plural: str, field_path: str) -> Doc:
    """What kubectl explain (templates/plaintext.tmpl) does: the GVK from an operation on the
    resource's paths, the schema carrying it, then the fields one by one."""
    found: dict[str, str] | None = None
    for path in (
        f"/apis/shoal.dev/v1/{plural}",
        f"/apis/shoal.dev/v1/{plural}/{{name}}",
        f"/apis/shoal.dev/v1/namespaces/{{namespace}}/{plural}",
        f"/apis/shoal.dev/v1/namespaces/{{namespace}}/{plural}/{{name}}",
    ):
        for method in METHODS:
            found = found or doc["paths"].get(path, {}).get(method, {}).get(
                "x-kubernetes-group-version-kind"
            )
    assert found is not None, plural
    schema = next(
        s
        for s in doc["components"]["schemas"].values()
        if found in s.get("x-kubernetes-group-version-kind", ())
    )
    for name in filter(None, field_path.split(".")):
        schema = resolve(doc, schema)
        while "properties" not in schema and (
            "items" in schema or "additionalProperties" in schema
        ):
            schema = resolve(doc, schema.get("items") or schema["additionalProperties"])
        schema = schema["properties"][name]
    assert isinstance(schema, dict)
    return schema


def test_explain_finds_vm_spec_image(document: Doc) -> None:
    vm = explain(document, "virtualmachines", "")
    assert vm["x-kubernetes-group-version-kind"] == [gvk("VirtualMachine")]
    spec = explain(document, "virtualmachines", "spec")
    assert spec["description"]
    assert "image" in resolve(document, spec)["properties"]
    image = explain(document, "virtualmachines", "spec.image")
    assert image["type"] == "string" and image["description"]
    assert explain(document, "virtualmachines", "spec.access.secretRef.name")["type"] == "string"
    assert explain(document, "virtualmachines", "metadata.labels")["type"] == "object"
    assert explain(document, "virtualmachines", "status.conditions.type")["type"] == "string"
    assert explain(document, "nodes", "status.capacity.memory")["type"] == "string"
    assert explain(document, "secrets", "data")["additionalProperties"] == {"type": "string"}
    for info in KINDS:
        assert explain(document, info.plural, "metadata.name")["type"] == "string"


# -- Validation of real objects ----------------------------------------------------------------


def validator(doc: Doc, kind: str) -> Any:
    """A Draft 4 validator (OpenAPI 3.0's schemas extend Draft 4's) of the kind's schema."""
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    root = {"$ref": f"#/components/schemas/dev.shoal.v1.{kind}", "components": doc["components"]}
    return jsonschema_rs.Draft4Validator(root)


def test_the_schemas_hold_real_objects_and_refuse_broken_ones(
    document: Doc, make_vm: Callable[..., Doc], make_node: Callable[..., Doc]
) -> None:
    vm = make_vm("web-1", "team-a", ports=[{"guest": 22}], nodeSelector={"zone": "a"})
    vm["metadata"].update(uid="u-1", resourceVersion="12", generation=1)
    vm["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00.000000Z"
    vms = validator(document, "VirtualMachine")
    assert vms.is_valid(vm), list(vms.iter_errors(vm))
    nodes = validator(document, "Node")
    node = make_node("n1")
    assert nodes.is_valid(node), list(nodes.iter_errors(node))

    typo = json.loads(json.dumps(vm))
    typo["spec"]["cpus"] = 2
    assert not vms.is_valid(typo)  # unknown fields are refused, as the server refuses them
    wrong = json.loads(json.dumps(vm))
    wrong["spec"]["cpu"] = "two"
    assert not vms.is_valid(wrong)
    phase = json.loads(json.dumps(vm))
    phase["status"] = {"phase": "Exploded"}
    assert not vms.is_valid(phase)

    secret = {
        "apiVersion": "shoal.dev/v1",
        "kind": "Secret",
        "metadata": {"name": "s", "namespace": "team-a"},
        "type": "basic-auth",
        "data": {"username": "dTE=", "password": "cA=="},
    }
    assert validator(document, "Secret").is_valid(secret)
    rolebinding = {
        "apiVersion": "shoal.dev/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "rb", "namespace": "team-a"},
        "roleRef": {"name": "view"},
        "subjects": [{"kind": "User", "name": "ann"}],
    }
    assert validator(document, "RoleBinding").is_valid(rolebinding)
    listed = {
        "apiVersion": "shoal.dev/v1",
        "kind": "VirtualMachineList",
        "metadata": {"resourceVersion": "12"},
        "items": [vm],
    }
    assert validator(document, "VirtualMachineList").is_valid(listed)
    assert BY_KIND["VirtualMachine"].model.model_validate(vm)  # and the server takes it too
