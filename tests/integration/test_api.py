"""The API over HTTP: bad input gets a 4xx naming what was wrong and changes nothing; lists,
selectors, pages, watch and conditional writes behave as documented."""

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from helpers import InProcessController
from shoal.client import resource_path

VMS = resource_path("virtualmachines", "default")


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessController]:
    with InProcessController(tmp_path_factory.mktemp("api"), bookmark_interval=0.5) as running:
        yield running


@pytest.fixture(scope="module")
def http(controller: InProcessController) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=controller.url, headers={"Authorization": f"Bearer {controller.admin_token}"}
    ) as client:
        yield client


def vm(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"image": "x:1", **spec}}


def status_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body["kind"] == "Status" and body["code"] == response.status_code
    return dict(body)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (vm("a", cpu=0), "spec.cpu"),
        (vm("a", cpu=-2), "spec.cpu"),
        (vm("a", cpu=100000), "spec.cpu"),
        (vm("a", cpu="two"), "spec.cpu"),
        (vm("a", memory="0"), "spec.memory"),
        (vm("a", memory="-1Gi"), "spec.memory"),
        (vm("a", memory="lots"), "spec.memory"),
        (vm("a", memory="5Pi"), "spec.memory"),
        (vm("a", memory="1Mi"), "spec.memory"),
        (vm("a", disk="12"), "spec.disk"),
        (vm("a", colour="blue"), "spec.colour"),
        (vm("a", ports=[{"guest": 70000}]), "spec.ports.0.guest"),
        (vm("a", ports=[{"guest": 22}, {"guest": 22}]), "spec.ports"),
        (vm("a", powerState="Sleeping"), "spec.powerState"),
        (vm("a", nodeSelector={"bad key!": "x"}), "spec.nodeSelector"),
        ({"metadata": {"name": "Upper"}, "spec": {"image": "x:1"}}, "metadata.name"),
        ({"metadata": {"name": "a" * 64}, "spec": {"image": "x:1"}}, "metadata.name"),
        ({"metadata": {"name": "-dash"}, "spec": {"image": "x:1"}}, "metadata.name"),
        ({"metadata": {"name": "a", "colour": 1}, "spec": {"image": "x:1"}}, "metadata.colour"),
        ({"metadata": {"name": "a"}, "spec": {"image": "x:1"}, "extra": 1}, "extra"),
        ({"metadata": {"name": "a"}}, "spec"),
        ({"metadata": {"name": "a"}, "spec": {}}, "spec.image"),
        ({"metadata": {}, "spec": {"image": "x:1"}}, "metadata.name"),
        ({"metadata": {"name": "a"}, "spec": {"image": "x:1", "nodeName": "n1"}}, "spec.nodeName"),
        ({"metadata": {"name": "a"}, "spec": {"config": "missing"}}, "spec.config"),
        ({"kind": "Node", "metadata": {"name": "a"}, "spec": {"image": "x:1"}}, "kind"),
    ],
)
def test_invalid_vms_are_refused_naming_the_field(
    http: httpx.Client, body: dict[str, Any], field: str
) -> None:
    before = http.get(VMS).json()["metadata"]["resourceVersion"]
    response = http.post(VMS, json=body)
    assert response.status_code == 422, response.text
    status = status_of(response)
    assert field in status["message"], status["message"]
    assert http.get(VMS).json()["metadata"]["resourceVersion"] == before  # nothing was written


def test_malformed_requests_are_400_or_404(http: httpx.Client) -> None:
    bad_json = http.post(
        VMS, content=b'{"metadata": ', headers={"Content-Type": "application/json"}
    )
    assert bad_json.status_code == 400 and "JSON" in status_of(bad_json)["message"]
    not_object = http.post(VMS, json=[1, 2])
    assert not_object.status_code == 422
    missing_ns = http.post(resource_path("virtualmachines", "nowhere"), json=vm("a"))
    assert missing_ns.status_code == 404 and "namespace nowhere" in status_of(missing_ns)["message"]
    assert http.get(resource_path("virtualmachines", "default", "Bad_Name")).status_code == 422
    assert http.get("/apis/shoal.dev/v1/nothings").status_code == 404
    assert http.get(VMS, params={"labelSelector": "a in (b"}).status_code in (400, 422)
    assert http.get(VMS, params={"fieldSelector": "nonsense"}).status_code == 400
    assert http.get(VMS, params={"continue": "not-a-token"}).status_code == 400
    assert http.get(VMS, params={"watch": "1", "resourceVersion": "abc"}).status_code == 400
    assert http.delete(resource_path("namespaces", None, "default") + "/status").status_code == 405


def test_conflicting_write_gets_409_and_changes_nothing(http: httpx.Client) -> None:
    created = http.post(VMS, json=vm("cas")).json()
    stale = json.loads(json.dumps(created))
    fresh = http.patch(
        resource_path("virtualmachines", "default", "cas"),
        json={"metadata": {"labels": {"a": "1"}}},
        headers={"Content-Type": "application/merge-patch+json"},
    ).json()
    stale["metadata"]["labels"] = {"a": "2"}
    conflict = http.put(resource_path("virtualmachines", "default", "cas"), json=stale)
    assert conflict.status_code == 409 and status_of(conflict)["reason"] == "Conflict"
    now = http.get(resource_path("virtualmachines", "default", "cas")).json()
    assert now["metadata"]["labels"] == fresh["metadata"]["labels"] == {"a": "1"}
    assert now["spec"] == fresh["spec"]
    duplicate = http.post(VMS, json=vm("cas"))
    assert duplicate.status_code == 409 and status_of(duplicate)["reason"] == "AlreadyExists"
    stale_delete = http.delete(
        resource_path("virtualmachines", "default", "cas"),
        params={"resourceVersion": created["metadata"]["resourceVersion"]},
    )
    assert stale_delete.status_code == 409
    assert http.delete(resource_path("virtualmachines", "default", "cas")).status_code == 200


def test_immutable_fields_and_generation(http: httpx.Client) -> None:
    created = http.post(VMS, json=vm("gen")).json()
    path = resource_path("virtualmachines", "default", "gen")
    merge = {"Content-Type": "application/merge-patch+json"}
    for patch, field in (
        ({"spec": {"image": "y"}}, "spec.image"),
        ({"spec": {"nodeName": "n"}}, "spec.nodeName"),
        ({"spec": {"os": "macos"}}, "spec.os"),
    ):
        response = http.patch(path, json=patch, headers=merge)
        assert response.status_code == 422 and field in status_of(response)["message"]
    labelled = http.patch(path, json={"metadata": {"labels": {"x": "y"}}}, headers=merge).json()
    assert labelled["metadata"]["generation"] == created["metadata"]["generation"]
    resized = http.patch(path, json={"spec": {"cpu": 4}}, headers=merge).json()
    assert resized["metadata"]["generation"] == created["metadata"]["generation"] + 1
    ignored = http.patch(path, json={"status": {"phase": "Running"}}, headers=merge).json()
    assert ignored["status"]["phase"] == "Pending"  # status is written through /status only
    http.delete(path)


def create_image(http: httpx.Client, name: str) -> None:
    image = {"metadata": {"name": name}, "spec": {"source": {"oci": f"registry.test/{name}"}}}
    assert http.post(resource_path("images", None), json=image).status_code == 201


def test_generate_name_and_vmconfig_defaults(http: httpx.Client) -> None:
    create_image(http, "macos-15")
    config = {
        "metadata": {"name": "big"},
        "spec": {"image": "macos-15", "cpu": 8, "memory": "16Gi", "os": "macos"},
    }
    assert http.post(resource_path("vmconfigs", "default"), json=config).status_code == 201
    made = http.post(
        VMS, json={"metadata": {"generateName": "job-"}, "spec": {"config": "big", "memory": "8Gi"}}
    )
    assert made.status_code == 201, made.text
    spec = made.json()["spec"]
    assert made.json()["metadata"]["name"].startswith("job-")
    assert (spec["image"], spec["cpu"], spec["memory"], spec["os"]) == (
        "macos-15",
        8,
        "8Gi",
        "macos",
    )
    http.delete(resource_path("virtualmachines", "default", made.json()["metadata"]["name"]))


def test_an_images_sizes_are_the_default_of_its_vms(http: httpx.Client) -> None:
    image = {
        "metadata": {"name": "sized"},
        "spec": {"source": {"oci": "registry.test/sized"}, "cpu": 1, "memory": "512Mi",
                 "disk": "3Gi"},
    }  # fmt: skip
    assert http.post(resource_path("images", None), json=image).status_code == 201
    plain = http.post(VMS, json={"metadata": {"name": "sized-1"}, "spec": {"image": "sized"}})
    assert plain.status_code == 201, plain.text
    spec = plain.json()["spec"]
    assert (spec["cpu"], spec["memory"], spec["disk"]) == (1, "512Mi", "3Gi")
    own = http.post(
        VMS, json={"metadata": {"name": "sized-2"}, "spec": {"image": "sized", "cpu": 3}}
    ).json()["spec"]
    assert (own["cpu"], own["memory"], own["disk"]) == (3, "512Mi", "3Gi")
    for name in ("sized-1", "sized-2"):
        http.delete(resource_path("virtualmachines", "default", name))


def test_selectors_and_pages(http: httpx.Client) -> None:
    http.post(resource_path("namespaces"), json={"metadata": {"name": "paging"}})
    path = resource_path("vmconfigs", "paging")
    for i in range(25):
        labels = {"tier": "web" if i % 2 else "db", "index": str(i)}
        http.post(
            path,
            json={
                "metadata": {"name": f"c-{i:02d}", "labels": labels},
                "spec": {"image": "x:1", "cpu": 1 + i % 3},
            },
        )
    names: list[str] = []
    cont = None
    while True:
        page = http.get(path, params={"limit": 10, **({"continue": cont} if cont else {})}).json()
        names += [o["metadata"]["name"] for o in page["items"]]
        cont = page["metadata"].get("continue")
        if not cont:
            break
    assert names == [f"c-{i:02d}" for i in range(25)]
    web = http.get(path, params={"labelSelector": "tier=web"}).json()["items"]
    assert len(web) == 12
    some = http.get(path, params={"labelSelector": "tier=db,index in (0,2,3)"}).json()["items"]
    assert [o["metadata"]["name"] for o in some] == ["c-00", "c-02"]
    cpu3 = http.get(path, params={"fieldSelector": "spec.cpu=3"}).json()["items"]
    assert len(cpu3) == 8
    filtered_pages = http.get(path, params={"labelSelector": "tier=web", "limit": 5}).json()
    assert len(filtered_pages["items"]) == 5 and filtered_pages["metadata"]["continue"]


def test_watch_lists_then_follows_with_bookmarks(
    http: httpx.Client, controller: InProcessController
) -> None:
    http.post(resource_path("namespaces"), json={"metadata": {"name": "watched"}})
    path = resource_path("vmconfigs", "watched")
    http.post(path, json={"metadata": {"name": "old"}, "spec": {"image": "x:1"}})
    seen: list[tuple[str, str]] = []
    with (
        httpx.Client(
            base_url=controller.url,
            headers={"Authorization": f"Bearer {controller.admin_token}"},
            timeout=httpx.Timeout(10, read=10),
        ) as other,
        other.stream("GET", path, params={"watch": "1", "timeoutSeconds": 3}) as stream,
    ):
        assert stream.headers["content-type"].startswith("application/x-ndjson")
        for line in stream.iter_lines():
            event = json.loads(line)
            seen.append((event["type"], event["object"]["metadata"].get("name", "")))
            if len(seen) == 1:
                http.post(path, json={"metadata": {"name": "new"}, "spec": {"image": "x:1"}})
                http.delete(resource_path("vmconfigs", "watched", "old"))
    kinds = [t for t, _ in seen]
    assert seen[:3] == [("ADDED", "old"), ("ADDED", "new"), ("DELETED", "old")]
    assert "BOOKMARK" in kinds  # quiet spells are bookmarked (interval 0.5 s here)


def test_the_openapi_document_names_every_route_websockets_included(
    http: httpx.Client,
) -> None:
    document = http.get("/openapi.json").json()
    websockets = document["x-websockets"]
    prefix = "/apis/shoal.dev/v1/namespaces/{namespace}/virtualmachines/{name}"
    for tunnel in ("portforward", "vnc", "console"):
        assert f"{prefix}/{tunnel}" in websockets
        assert websockets[f"{prefix}/{tunnel}"]["summary"]
    assert "/apis/shoal.dev/v1/nodes/{name}/tunnel" in websockets
    assert f"{prefix}/log" in document["paths"]


def refused(response: httpx.Response, field: str) -> str:
    """The 422 Status's message, which names field first."""
    assert response.status_code == 422, response.text
    status = status_of(response)
    assert status["status"] == "Failure" and status["reason"] == "Invalid"
    assert status["message"].startswith(f"{field}"), status["message"]
    return str(status["message"])


def test_a_startup_script_is_admitted_only_when_it_can_run(http: httpx.Client) -> None:
    """A script the agent could never run (no way into the guest) would fail on the node, or
    silently never run: it is refused, on create and on update, from a VMConfig too."""
    message = refused(
        http.post(VMS, json=vm("scripted", startupScript="echo hi")), "spec.startupScript"
    )
    assert "needs spec.access.secretRef" in message
    assert http.get(resource_path("virtualmachines", "default", "scripted")).status_code == 404
    key = base64.b64encode(b"not really a key").decode()
    secret = {"metadata": {"name": "way-in"}, "type": "ssh-auth", "data": {"password": key}}
    secrets = resource_path("secrets", "default")
    assert http.post(secrets, json=secret).status_code == 201
    access = {"secretRef": {"name": "way-in"}}
    ok = http.post(VMS, json=vm("scripted", startupScript="echo hi", access=access))
    assert ok.status_code == 201, ok.text
    path = resource_path("virtualmachines", "default", "scripted")
    merge = {"Content-Type": "application/merge-patch+json"}
    refused(http.patch(path, json={"spec": {"access": None}}, headers=merge), "spec.startupScript")
    assert http.get(path).json()["spec"]["access"] == {"secretRef": {"name": "way-in"}}
    http.delete(path)

    one_shot = {"startupScript": "echo hi", "access": access, "deleteWhenScriptExits": True}
    message = refused(http.post(VMS, json=vm("once", **one_shot)), "spec.deleteWhenScriptExits")
    assert "needs spec.ephemeral: true" in message
    message = refused(
        http.post(VMS, json=vm("once", deleteWhenScriptExits=True, ephemeral=True)),
        "spec.deleteWhenScriptExits",
    )
    assert "needs spec.startupScript" in message
    ok = http.post(VMS, json=vm("once", ephemeral=True, **one_shot))
    assert ok.status_code == 201, ok.text
    http.delete(resource_path("virtualmachines", "default", "once"))

    # from a VMConfig: the script is the config's, the access may come from either
    configs = resource_path("vmconfigs", "default")
    scripted_config = {
        "metadata": {"name": "scripted"},
        "spec": {"image": "x:1", "startupScript": "x"},
    }
    assert http.post(configs, json=scripted_config).status_code == 201
    message = refused(
        http.post(VMS, json={"metadata": {"name": "from-config"}, "spec": {"config": "scripted"}}),
        "spec.startupScript (from VMConfig 'scripted')",
    )
    assert "needs spec.access.secretRef" in message
    from_config = {
        "metadata": {"name": "from-config"},
        "spec": {"config": "scripted", "access": access},
    }
    assert http.post(VMS, json=from_config).status_code == 201
    http.delete(resource_path("virtualmachines", "default", "from-config"))
    http.delete(resource_path("vmconfigs", "default", "scripted"))
    http.delete(resource_path("secrets", "default", "way-in"))


def test_image_must_name_an_image_or_be_an_oci_reference(http: httpx.Client) -> None:
    message = refused(http.post(VMS, json=vm("nope", image="nope")), "spec.image")
    assert message == (
        "spec.image: no Image named 'nope', and 'nope' is not an OCI reference "
        "(registry/repository:tag or @digest)"
    )
    assert http.get(resource_path("virtualmachines", "default", "nope")).status_code == 404
    for bad in ("team/vm", "Ubuntu:1", "x:not a tag"):  # no host nor tag, or does not parse
        refused(http.post(VMS, json=vm("bad", image=bad)), "spec.image")
    assert http.get(resource_path("virtualmachines", "default", "bad")).status_code == 404

    create_image(http, "ubuntu-24")
    digest = "sha256:" + "0" * 64
    for name, image in (
        ("named", "ubuntu-24"),
        ("by-host", "localhost:5000/x"),
        ("by-tag", "localhost:5000/x:1"),
        ("by-digest", f"x@{digest}"),
    ):
        made = http.post(VMS, json=vm(name, image=image))
        assert made.status_code == 201, made.text
        assert made.json()["spec"]["image"] == image
        http.delete(resource_path("virtualmachines", "default", name))

    # the image a VMConfig gives is checked the same way, on the VMConfig and on the VM
    configs = resource_path("vmconfigs", "default")
    refused(
        http.post(configs, json={"metadata": {"name": "c"}, "spec": {"image": "nope"}}),
        "spec.image",
    )
    assert (
        http.post(
            configs, json={"metadata": {"name": "c"}, "spec": {"image": "ubuntu-24"}}
        ).status_code
        == 201
    )
    config_path = resource_path("vmconfigs", "default", "c")
    merge = {"Content-Type": "application/merge-patch+json"}
    refused(http.patch(config_path, json={"spec": {"image": "nope"}}, headers=merge), "spec.image")
    assert http.get(config_path).json()["spec"]["image"] == "ubuntu-24"
    from_config = http.post(VMS, json={"metadata": {"name": "from-c"}, "spec": {"config": "c"}})
    assert from_config.status_code == 201, from_config.text
    http.delete(resource_path("virtualmachines", "default", "from-c"))
    # an Image deleted after the VMConfig was made: the VM deployed from it says where it came from
    assert http.delete(resource_path("images", None, "ubuntu-24")).status_code == 200
    message = refused(
        http.post(VMS, json={"metadata": {"name": "from-c"}, "spec": {"config": "c"}}), "spec.image"
    )
    assert message.startswith("spec.image (from VMConfig 'c'): no Image named 'ubuntu-24'")
    assert http.get(resource_path("virtualmachines", "default", "from-c")).status_code == 404
    http.delete(config_path)


def test_an_image_cache_of_an_image_that_names_nothing_is_refused(http: httpx.Client) -> None:
    """As for a VM: neither an Image's name nor an OCI reference would only fail on the nodes."""
    path = resource_path("imagecaches")
    body = {"metadata": {"name": "nothing"}, "spec": {"image": "Not A Reference", "allNodes": True}}
    refused = http.post(path, json=body)
    assert refused.status_code == 422
    assert status_of(refused)["details"]["field"] == "spec.image"
    assert "no Image named 'Not A Reference'" in status_of(refused)["message"]
    assert http.get(resource_path("imagecaches", None, "nothing")).status_code == 404
    body["spec"]["image"] = "registry.example:5000/team/base:1"
    assert http.post(path, json=body).status_code == 201
    patched = http.patch(
        resource_path("imagecaches", None, "nothing"),
        json={"spec": {"image": "nope nope"}},
        headers={"content-type": "application/merge-patch+json"},
    )
    assert patched.status_code == 422
    assert http.delete(resource_path("imagecaches", None, "nothing")).status_code == 200
