"""Secrets over HTTP against a real controller: the verbs, validation that never echoes a value,
encryption at rest (the database files read as bytes), watch, audit Events, who may read one
(roles, and a node only for the VMs bound to it), and what VMs and VMConfigs may refer to."""

import base64
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from helpers import InProcessController, create_join_token, wait_until
from shoal.client import Client, resource_path
from shoal.errors import Forbidden
from shoal.jointoken import parse_join_token

MERGE = {"Content-Type": "application/merge-patch+json"}
PASSWORD = b"correct-horse-battery-9d1c"  # distinctive: searched for in the database files
ENCODED = base64.b64encode(PASSWORD).decode()
SSH_KEY = ed25519.Ed25519PrivateKey.generate().private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
)
LOCKED_KEY = ed25519.Ed25519PrivateKey.generate().private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.OpenSSH,
    serialization.BestAvailableEncryption(b"passphrase"),
)


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def secrets_path(namespace: str = "default", name: str | None = None) -> str:
    return resource_path("secrets", namespace, name)


def secret(name: str, type_: str = "opaque", **data: bytes) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "type": type_,
        "data": {key.replace("_", "-"): b64(value) for key, value in data.items()},
    }


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessController]:
    with InProcessController(tmp_path_factory.mktemp("secrets"), bookmark_interval=0.5) as running:
        yield running


@pytest.fixture(scope="module")
def http(controller: InProcessController) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=controller.url, headers={"Authorization": f"Bearer {controller.admin_token}"}
    ) as client:
        yield client


def status_of(response: httpx.Response, code: int) -> dict[str, Any]:
    assert response.status_code == code, response.text
    body = response.json()
    assert body["kind"] == "Status" and body["code"] == code
    return dict(body)


def test_create_get_list_update_patch_delete(http: httpx.Client) -> None:
    created = http.post(secrets_path(), json=secret("crud", password=PASSWORD))
    assert created.status_code == 201, created.text
    assert created.json()["data"] == {"password": ENCODED} and created.json()["type"] == "opaque"
    got = http.get(secrets_path(name="crud")).json()
    assert got["data"] == {"password": ENCODED} and got["kind"] == "Secret"
    listed = http.get(secrets_path()).json()
    assert listed["kind"] == "SecretList"
    assert {s["metadata"]["name"]: s["data"] for s in listed["items"]}["crud"] == got["data"]
    assert http.get(resource_path("secrets")).json()["items"]  # across namespaces (admin)

    replaced = json.loads(json.dumps(got))
    replaced["data"] = {"token": b64(b"t1"), "password": ENCODED}
    put = http.put(secrets_path(name="crud"), json=replaced)
    assert put.status_code == 200, put.text
    assert put.json()["data"] == replaced["data"]
    assert put.json()["metadata"]["generation"] == got["metadata"]["generation"] + 1
    stale = http.put(secrets_path(name="crud"), json=replaced)
    assert status_of(stale, 409)["reason"] == "Conflict"

    patched = http.patch(
        secrets_path(name="crud"), json={"data": {"token": None, "user": b64(b"ci")}}, headers=MERGE
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["data"] == {"password": ENCODED, "user": b64(b"ci")}
    assert http.get(secrets_path(name="crud")).json()["data"] == patched.json()["data"]
    immutable = http.patch(secrets_path(name="crud"), json={"type": "basic-auth"}, headers=MERGE)
    assert status_of(immutable, 422)["message"].startswith("type: is immutable")

    deleted = http.delete(secrets_path(name="crud"))
    assert deleted.status_code == 200
    assert http.get(secrets_path(name="crud")).status_code == 404


TOO_BIG = b64(b"\0" * (2**20 + 1))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"metadata": {"name": "v"}, "data": {"password": f"{PASSWORD.decode()}!"}},
            "data.password",
        ),
        ({"metadata": {"name": "v"}, "data": {"pass word": ENCODED}}, "data.pass word"),
        ({"metadata": {"name": "v"}, "data": {"password": 12345}}, "data.password"),
        ({"metadata": {"name": "v"}, "data": {"big": TOO_BIG}}, "data"),
        ({"metadata": {"name": "v"}, "type": "tls", "data": {}}, "type"),
        ({"metadata": {"name": "v"}, "data": {}, "spec": {}}, "spec"),
        (secret("v", "ssh-auth", username=b"ci"), "data"),
        (secret("v", "ssh-auth", password=PASSWORD, token=PASSWORD), "data.token"),
        (secret("v", "ssh-auth", ssh_privatekey=PASSWORD), "data.ssh-privatekey"),
        (secret("v", "ssh-auth", ssh_privatekey=LOCKED_KEY), "data.ssh-privatekey: the key is"),
        (secret("v", "ssh-auth", password=PASSWORD, username=b"two words"), "data.username"),
        (secret("v", "basic-auth", username=b"ci"), "data.password"),
        (secret("v", "basic-auth", username=b"ci", password=PASSWORD, x=PASSWORD), "data.x"),
    ],
)
def test_invalid_secrets_are_refused_naming_the_field_never_the_value(
    http: httpx.Client, body: dict[str, Any], field: str
) -> None:
    before = http.get(secrets_path()).json()["metadata"]["resourceVersion"]
    response = http.post(secrets_path(), json=body)
    status = status_of(response, 422)
    assert status["message"].startswith(field), status["message"]
    assert PASSWORD.decode() not in response.text and ENCODED not in response.text
    assert http.get(secrets_path()).json()["metadata"]["resourceVersion"] == before


def test_a_bad_value_in_a_patch_is_refused_without_echo(http: httpx.Client) -> None:
    assert http.post(secrets_path(), json=secret("patched", password=b"x")).status_code == 201
    path = secrets_path(name="patched")
    response = http.patch(path, json={"data": {"password": PASSWORD.decode()}}, headers=MERGE)
    assert status_of(response, 422)["message"].startswith("data.password: not valid base64")
    assert PASSWORD.decode() not in response.text
    http.delete(path)


def test_values_are_never_in_the_database_in_clear_nor_in_logs(
    http: httpx.Client, controller: InProcessController, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("rest-a", "rest-b"):
        made = http.post(secrets_path(), json=secret(name, password=PASSWORD))
        assert made.status_code == 201
    http.patch(secrets_path(name="rest-a"), json={"data": {"again": ENCODED}}, headers=MERGE)
    http.delete(secrets_path(name="rest-b"))  # its tombstone is in the change log
    annotated = secret("rest-c", password=b"x")
    annotated["metadata"]["annotations"] = {"note": ENCODED}
    assert http.post(secrets_path(), json=annotated).status_code == 201
    assert http.get(secrets_path(name="rest-a")).json()["data"]["again"] == ENCODED

    data_dir = controller.plane.settings.data_dir
    files = sorted(data_dir.glob("shoal.db*"))
    assert {f.name for f in files} >= {"shoal.db", "shoal.db-wal"}
    for path in files:
        raw = path.read_bytes()
        assert PASSWORD not in raw and ENCODED.encode() not in raw, path
    store = controller.plane.store
    logged = [c for c in store.changes_since(0) if c.kind == "Secret"]
    assert logged and all(ENCODED not in c.body for c in logged)
    # the watch hub keeps whole objects of a few kinds in memory; Secrets are not among them
    assert "Secret" not in controller.plane.hub.cache.kinds
    bad = http.post(secrets_path(), json=secret("rest-d", "ssh-auth", ssh_privatekey=PASSWORD))
    assert bad.status_code == 422
    for name in ("rest-a", "rest-c"):
        http.delete(secrets_path(name=name))
    assert caplog.records  # at DEBUG, from the controller in this process and its clients
    assert PASSWORD.decode() not in caplog.text and ENCODED not in caplog.text


def test_a_watch_gives_plain_data_live_and_replayed(
    http: httpx.Client, controller: InProcessController
) -> None:
    http.post(resource_path("namespaces"), json={"metadata": {"name": "watched"}})
    path = secrets_path("watched")
    http.post(path, json=secret("old", password=PASSWORD))
    start = http.get(path).json()["metadata"]["resourceVersion"]
    seen: list[dict[str, Any]] = []
    with (
        httpx.Client(
            base_url=controller.url,
            headers={"Authorization": f"Bearer {controller.admin_token}"},
            timeout=httpx.Timeout(10, read=10),
        ) as other,
        other.stream("GET", path, params={"watch": "1", "timeoutSeconds": 3}) as stream,
    ):
        for line in stream.iter_lines():
            event = json.loads(line)
            if event["type"] != "BOOKMARK":
                seen.append(event)
            if len(seen) == 1 and event["type"] == "ADDED":
                http.post(path, json=secret("new", token=PASSWORD))
                http.patch(
                    secrets_path("watched", "old"), json={"data": {"x": ENCODED}}, headers=MERGE
                )
                http.delete(secrets_path("watched", "new"))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in seen] == [
        ("ADDED", "old"),
        ("ADDED", "new"),
        ("MODIFIED", "old"),
        ("DELETED", "new"),
    ]
    assert [e["object"]["data"] for e in seen] == [
        {"password": ENCODED},
        {"token": ENCODED},
        {"password": ENCODED, "x": ENCODED},
        {"token": ENCODED},
    ]
    assert all("sealed" not in e["object"] for e in seen)
    # replayed from the change log (the database), from a resourceVersion
    replay = http.get(path, params={"watch": "1", "resourceVersion": start, "timeoutSeconds": 1})
    events = [json.loads(line) for line in replay.text.splitlines()]
    changes = [e for e in events if e["type"] != "BOOKMARK"]
    assert [e["object"]["data"] for e in changes] == [e["object"]["data"] for e in seen[1:]]


def test_audit_events_of_secret_mutations_carry_no_value(http: httpx.Client) -> None:
    http.post(secrets_path(), json=secret("audited", password=PASSWORD))
    http.patch(secrets_path(name="audited"), json={"data": {"b": ENCODED}}, headers=MERGE)
    http.delete(secrets_path(name="audited"))
    events = http.get(
        resource_path("events", "default"), params={"fieldSelector": "involvedObject.name=audited"}
    )
    items = events.json()["items"]
    assert {e["reason"] for e in items} >= {"Created", "Updated", "Deleted"}
    assert all(e["involvedObject"]["kind"] == "Secret" for e in items)
    assert PASSWORD.decode() not in events.text and ENCODED not in events.text


# -- who may read a Secret -------------------------------------------------------------------


def sa_client(controller: InProcessController, namespace: str, name: str, role: str) -> Client:
    admin = controller.client()
    admin.create("serviceaccounts", {"metadata": {"name": name}}, namespace)
    admin.create(
        "rolebindings",
        {
            "metadata": {"name": f"{name}-{role}"},
            "roleRef": {"name": role},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
        namespace,
    )
    answer = admin.request(
        "POST", resource_path("serviceaccounts", namespace, name, "token"), body=None
    )
    return Client(controller.url, answer["status"]["token"])


def test_admin_and_edit_read_and_write_view_and_connect_may_not(
    controller: InProcessController,
) -> None:
    admin = controller.client()
    admin.create("namespaces", {"metadata": {"name": "roles"}})
    admin.create("secrets", secret("shared", password=PASSWORD), "roles")
    for role in ("admin", "edit"):
        client = sa_client(controller, "roles", f"as-{role}", role)
        made = client.create("secrets", secret(f"by-{role}", password=PASSWORD), "roles")
        assert made["data"] == {"password": ENCODED}
        assert client.get("secrets", "shared", "roles")["data"] == {"password": ENCODED}
        assert len(client.list("secrets", "roles")["items"]) >= 2
        client.patch("secrets", f"by-{role}", {"data": {"more": ENCODED}}, "roles")
        client.delete("secrets", f"by-{role}", "roles")
        with pytest.raises(Forbidden):  # a binding in one namespace gives nothing elsewhere
            client.list("secrets", "default")
    for role in ("view", "connect"):
        client = sa_client(controller, "roles", f"as-{role}", role)
        assert client.list("virtualmachines", "roles")["kind"] == "VirtualMachineList"
        for attempt in (
            lambda c=client: c.get("secrets", "shared", "roles"),
            lambda c=client: c.get("secrets", "no-such-secret", "roles"),
            lambda c=client: c.list("secrets", "roles"),
            lambda c=client: list(c.watch("secrets", "roles", timeout=1)),
            lambda c=client: c.create("secrets", secret("nope", password=b"x"), "roles"),
            lambda c=client: c.delete("secrets", "shared", "roles"),
        ):
            with pytest.raises(Forbidden):
                attempt()


def node_credential(controller: InProcessController, node: str) -> Client:
    join = parse_join_token(create_join_token(controller.client()))
    response = httpx.post(
        controller.url + resource_path("nodes", None, node, "credentials"),
        headers={"Authorization": f"Bearer {join.bearer}"},
    )
    assert response.status_code == 201, response.text
    return Client(controller.url, response.json()["status"]["token"])


def test_a_node_gets_only_the_secrets_of_the_vms_bound_to_it(
    controller: InProcessController, make_node: Callable[..., dict[str, Any]]
) -> None:
    admin = controller.client()
    admin.create("namespaces", {"metadata": {"name": "nodes"}})
    admin.create("secrets", secret("login", "ssh-auth", ssh_privatekey=SSH_KEY), "nodes")
    admin.create("secrets", secret("ci-token", token=PASSWORD), "nodes")
    admin.create("secrets", secret("config-token", token=PASSWORD), "nodes")
    admin.create("secrets", secret("unused", token=PASSWORD), "nodes")

    node_a, node_b = node_credential(controller, "node-a"), node_credential(controller, "node-b")
    with pytest.raises(Forbidden):  # no VM is bound to node-a yet
        node_a.get("secrets", "login", "nodes")
    for node, name in ((node_a, "node-a"), (node_b, "node-b")):
        node.create("nodes", {"metadata": {"name": name}})
    # only node-a reports capacity: the scheduler binds the VMs there
    status = make_node("node-a")["status"]
    node_a.request("PUT", resource_path("nodes", None, "node-a", "status"), body={"status": status})

    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "ci-token", "key": "token"}}}]
    admin.create(
        "virtualmachines",
        {
            "metadata": {"name": "job"},
            "spec": {"image": "x:1", "access": {"secretRef": {"name": "login"}}, "env": env},
        },
        "nodes",
    )
    # a VM deployed from a VMConfig holds the config's references in its own spec
    config_env = [
        {"name": "T", "valueFrom": {"secretKeyRef": {"name": "config-token", "key": "token"}}}
    ]
    admin.create(
        "vmconfigs",
        {"metadata": {"name": "c"}, "spec": {"image": "x:1", "env": config_env}},
        "nodes",
    )
    admin.create(
        "virtualmachines", {"metadata": {"name": "from-c"}, "spec": {"config": "c"}}, "nodes"
    )
    wait_until(
        lambda: all(
            admin.get("virtualmachines", vm, "nodes")["spec"].get("nodeName") == "node-a"
            for vm in ("job", "from-c")
        ),
        timeout=30,
        what="both VMs bound to node-a",
    )

    assert node_a.get("secrets", "login", "nodes")["data"] == {"ssh-privatekey": b64(SSH_KEY)}
    assert node_a.get("secrets", "ci-token", "nodes")["data"] == {"token": ENCODED}
    assert node_a.get("secrets", "config-token", "nodes")["data"] == {"token": ENCODED}
    for attempt in (
        lambda: node_a.get("secrets", "unused", "nodes"),
        lambda: node_a.get("secrets", "login", "default"),
        lambda: node_b.get("secrets", "login", "nodes"),  # not its VM
        lambda: node_a.list("secrets", "nodes"),
        lambda: node_a.list("secrets", "nodes", fieldSelector="spec.nodeName=node-a"),
        lambda: node_a.list("secrets"),
        lambda: list(node_a.watch("secrets", "nodes", timeout=1)),
        lambda: node_a.create("secrets", secret("mine", token=b"x"), "nodes"),
        lambda: node_a.patch("secrets", "login", {"metadata": {"labels": {"a": "b"}}}, "nodes"),
        lambda: node_a.delete("secrets", "login", "nodes"),
    ):
        with pytest.raises(Forbidden):
            attempt()

    # once the VM is gone, so is its node's access (the test releases the VM's agent finalizer,
    # as node-a's agent would: no agent runs here)
    admin.delete("virtualmachines", "job", "nodes")
    node_a.patch("virtualmachines", "job", {"metadata": {"finalizers": []}}, "nodes")
    assert not admin.list("virtualmachines", "nodes", fieldSelector="metadata.name=job")["items"]
    with pytest.raises(Forbidden):
        node_a.get("secrets", "login", "nodes")
    assert node_a.get("secrets", "config-token", "nodes")["data"] == {"token": ENCODED}


# -- what VMs and VMConfigs may refer to -----------------------------------------------------


def refused(response: httpx.Response, field: str) -> str:
    message = str(status_of(response, 422)["message"])
    assert message.startswith(field), message
    return message


def test_references_to_missing_secrets_keys_and_wrong_types_are_refused(
    http: httpx.Client,
) -> None:
    vms, configs = (
        resource_path("virtualmachines", "default"),
        resource_path("vmconfigs", "default"),
    )
    http.post(secrets_path(), json=secret("ssh", "ssh-auth", password=PASSWORD, username=b"ci"))
    http.post(secrets_path(), json=secret("tokens", token=PASSWORD))

    def access(name: str) -> dict[str, Any]:
        return {"access": {"user": "ci", "secretRef": {"name": name}}}

    def env(name: str, key: str) -> dict[str, Any]:
        return {"env": [{"name": "A", "value": "1"}, ref_var(name, key)]}

    def ref_var(name: str, key: str) -> dict[str, Any]:
        return {"name": "T", "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}

    for path, kind_body in ((vms, "vm"), (configs, "config")):
        for spec, field, text in (
            (
                access("missing"),
                "spec.access.secretRef.name",
                "no Secret named 'missing' in namespace 'default'",
            ),
            (access("tokens"), "spec.access.secretRef.name", "is of type 'opaque'"),
            (
                env("missing", "token"),
                "spec.env.1.valueFrom.secretKeyRef.name",
                "no Secret named 'missing'",
            ),
            (
                env("tokens", "nokey"),
                "spec.env.1.valueFrom.secretKeyRef.key",
                "Secret 'tokens' has no key 'nokey' (its keys: token)",
            ),
        ):
            body = {"metadata": {"name": f"ref-{kind_body}"}, "spec": {"image": "x:1", **spec}}
            message = refused(http.post(path, json=body), field)
            assert text in message, message
            assert http.get(f"{path}/ref-{kind_body}").status_code == 404

    good = {"image": "x:1", **access("ssh"), **env("tokens", "token")}
    made = http.post(vms, json={"metadata": {"name": "good"}, "spec": good})
    assert made.status_code == 201, made.text
    assert made.json()["spec"]["access"]["secretRef"] == {"name": "ssh"}
    config = http.post(configs, json={"metadata": {"name": "good"}, "spec": good})
    assert config.status_code == 201, config.text

    # an update may not bring in a bad reference
    config_path = f"{configs}/good"
    bad_patch = {"spec": {"env": [ref_var("tokens", "nope")]}}
    refused(
        http.patch(config_path, json=bad_patch, headers=MERGE),
        "spec.env.0.valueFrom.secretKeyRef.key",
    )
    refused(
        http.patch(f"{vms}/good", json={"spec": access("tokens")}, headers=MERGE),
        "spec.access.secretRef.name",
    )

    # a Secret may be deleted while VMs refer to it (as in Kubernetes) ...
    assert http.delete(secrets_path(name="tokens")).status_code == 200
    # ... and what refers to it can still be changed otherwise
    labelled = http.patch(f"{vms}/good", json={"metadata": {"labels": {"a": "b"}}}, headers=MERGE)
    assert labelled.status_code == 200, labelled.text
    assert http.patch(config_path, json={"spec": {"cpu": 3}}, headers=MERGE).status_code == 200
    # but a VM deployed from the config now would name a Secret that is not there
    message = refused(
        http.post(vms, json={"metadata": {"name": "from-good"}, "spec": {"config": "good"}}),
        "spec.env.1.valueFrom.secretKeyRef.name (from VMConfig 'good')",
    )
    assert "no Secret named 'tokens'" in message
    http.delete(f"{vms}/good")
    http.delete(config_path)
    http.delete(secrets_path(name="ssh"))
