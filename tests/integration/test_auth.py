"""Tokens, roles and node credentials, driven over HTTP against a real controller."""

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers import InProcessController, create_join_token, wait_until
from shoal.client import Client, resource_path
from shoal.errors import Forbidden, Unauthorized
from shoal.jointoken import parse_join_token


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessController]:
    with InProcessController(tmp_path_factory.mktemp("auth")) as running:
        admin = running.client()
        for namespace in ("team-a", "team-b"):
            admin.create("namespaces", {"metadata": {"name": namespace}})
            admin.create("serviceaccounts", {"metadata": {"name": "ci"}}, namespace)
        admin.create(
            "virtualmachines",
            {"metadata": {"name": "secret-vm"}, "spec": {"image": "x:1"}},
            "team-b",
        )
        yield running


def sa_token(admin: Client, namespace: str, name: str, ttl: int | None = None) -> str:
    body = {"spec": {"expirationSeconds": ttl}} if ttl else None
    answer = admin.request(
        "POST", resource_path("serviceaccounts", namespace, name, "token"), body=body
    )
    return str(answer["status"]["token"])


def bind(admin: Client, namespace: str, name: str, role: str, sa_namespace: str, sa: str) -> None:
    admin.create(
        "rolebindings",
        {
            "metadata": {"name": name},
            "roleRef": {"name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": sa_namespace}],
        },
        namespace,
    )


def test_admin_token_file_is_private(controller: InProcessController) -> None:
    path = controller.plane.settings.data_dir / "admin.token"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().strip() == controller.admin_token


def test_requests_without_a_valid_token_are_refused(controller: InProcessController) -> None:
    for headers in ({}, {"Authorization": "Bearer nope.nope"}, {"Authorization": "Basic abc"}):
        response = httpx.get(controller.url + resource_path("namespaces"), headers=headers)
        assert response.status_code == 401
        assert response.json()["kind"] == "Status"
    assert httpx.get(controller.url + "/healthz").status_code == 200
    assert httpx.get(controller.url + "/version").json()["apiVersion"] == "shoal.dev/v1"


def test_no_binding_means_403_without_revealing_existence(controller: InProcessController) -> None:
    admin = controller.client()
    outsider = Client(controller.url, sa_token(admin, "team-a", "ci"))
    messages = set()
    for name in ("secret-vm", "no-such-vm"):
        with pytest.raises(Forbidden) as caught:
            outsider.get("virtualmachines", name, "team-b")
        messages.add(caught.value.message)
    assert len(messages) == 1
    assert "secret-vm" not in messages.pop()
    with pytest.raises(Forbidden):
        outsider.list("virtualmachines", "team-b")
    with pytest.raises(Forbidden):
        outsider.create(
            "virtualmachines", {"metadata": {"name": "x"}, "spec": {"image": "x:1"}}, "team-b"
        )
    with pytest.raises(Forbidden):
        outsider.delete("virtualmachines", "secret-vm", "team-b")
    assert admin.get("virtualmachines", "secret-vm", "team-b")["metadata"]["name"] == "secret-vm"


def test_roles_grant_what_they_say(controller: InProcessController) -> None:
    admin = controller.client()
    for role in ("view", "connect", "edit"):
        admin.create("serviceaccounts", {"metadata": {"name": f"as-{role}"}}, "team-a")
        bind(admin, "team-a", f"bind-{role}", role, "team-a", f"as-{role}")
    view = Client(controller.url, sa_token(admin, "team-a", "as-view"))
    connect = Client(controller.url, sa_token(admin, "team-a", "as-connect"))
    edit = Client(controller.url, sa_token(admin, "team-a", "as-edit"))

    created = edit.create(
        "virtualmachines", {"metadata": {"name": "by-edit"}, "spec": {"image": "x:1"}}, "team-a"
    )
    assert created["metadata"]["name"] == "by-edit"
    assert (
        edit.action("virtualmachines", "by-edit", "stop", "team-a")["spec"]["powerState"]
        == "Stopped"
    )
    assert [vm["metadata"]["name"] for vm in view.list("virtualmachines", "team-a")["items"]] == [
        "by-edit"
    ]
    assert connect.get("virtualmachines", "by-edit", "team-a")["metadata"]["name"] == "by-edit"
    for client in (view, connect):
        with pytest.raises(Forbidden):
            client.create(
                "virtualmachines",
                {"metadata": {"name": "nope"}, "spec": {"image": "x:1"}},
                "team-a",
            )
        with pytest.raises(Forbidden):
            client.action("virtualmachines", "by-edit", "start", "team-a")
    with pytest.raises(Forbidden):  # only admins manage bindings
        bind(edit, "team-a", "escalate", "admin", "team-a", "as-edit")
    with pytest.raises(Forbidden):  # status is the agents' and controllers' to write
        edit.patch(
            "virtualmachines", "by-edit", {"status": {"phase": "Running"}}, "team-a", sub="status"
        )
    with pytest.raises(Forbidden):  # a binding in team-a gives nothing in team-b
        edit.list("virtualmachines", "team-b")
    edit.delete("virtualmachines", "by-edit", "team-a")


def test_tokens_are_listed_revoked_and_expire(controller: InProcessController) -> None:
    admin = controller.client()
    admin.create("serviceaccounts", {"metadata": {"name": "rotating"}}, "team-a")
    bind(admin, "team-a", "bind-rotating", "view", "team-a", "rotating")
    token = sa_token(admin, "team-a", "rotating")
    other = sa_token(admin, "team-a", "rotating", ttl=3600)
    listed = admin.get("serviceaccounts", "rotating", "team-a")["status"]["tokens"]
    assert len(listed) == 2
    assert [t for t in listed if "expiresAt" in t]
    token_id = token.split(".")[0]
    assert token_id in {t["id"] for t in listed}
    assert (
        Client(controller.url, token).list("virtualmachines", "team-a")["kind"]
        == "VirtualMachineList"
    )
    admin.request(
        "DELETE", resource_path("serviceaccounts", "team-a", "rotating", f"tokens/{token_id}")
    )
    with pytest.raises(Unauthorized):
        Client(controller.url, token).list("virtualmachines", "team-a")
    assert (
        Client(controller.url, other).list("virtualmachines", "team-a")["kind"]
        == "VirtualMachineList"
    )
    stored = controller.plane.store
    with stored.read_engine.connect() as conn:
        raw = repr(conn.exec_driver_sql("select * from tokens").fetchall())
    assert (
        token.split(".")[1] not in raw and other.split(".")[1] not in raw
    )  # only hashes are stored


def test_node_credentials_touch_only_their_own_node_and_vms(
    controller: InProcessController,
) -> None:
    admin = controller.client()
    join = parse_join_token(create_join_token(admin))
    assert join.ca_fingerprint is None  # plain HTTP: nothing to pin
    with pytest.raises(Unauthorized):  # a join token is no API credential
        Client(controller.url, join.bearer).list("nodes")

    def credential(node: str) -> Client:
        response = httpx.post(
            controller.url + resource_path("nodes", None, node, "credentials"),
            headers={"Authorization": f"Bearer {join.bearer}"},
        )
        assert response.status_code == 201, response.text
        return Client(controller.url, response.json()["status"]["token"])

    node_a, node_b = credential("node-a"), credential("node-b")
    node_a.create("nodes", {"metadata": {"name": "node-a"}})
    node_b.create("nodes", {"metadata": {"name": "node-b"}})
    with pytest.raises(Forbidden):
        node_a.patch("nodes", "node-b", {"spec": {"unschedulable": True}})
    with pytest.raises(Forbidden):
        node_a.create("nodes", {"metadata": {"name": "node-c"}})
    with pytest.raises(Forbidden):  # all VMs: only with its own node's field selector
        node_a.list("virtualmachines")
    assert node_a.list("virtualmachines", fieldSelector="spec.nodeName=node-a")["items"] == []
    with pytest.raises(Forbidden):
        node_a.list("virtualmachines", fieldSelector="spec.nodeName=node-b")
    with pytest.raises(Forbidden):  # an unbound VM is no node's
        node_a.get("virtualmachines", "secret-vm", "team-b")
    with pytest.raises(Forbidden):
        node_a.create("namespaces", {"metadata": {"name": "evil"}})


def test_expired_join_token_is_refused(controller: InProcessController) -> None:
    record_token, record = controller.plane.tokens.issue("Join", "", "join", ttl_seconds=0.5)
    expires_at = record.expires_at
    assert expires_at is not None
    wait_until(lambda: time.time() > expires_at, what="the join token's expiry")
    response = httpx.post(
        controller.url + resource_path("nodes", None, "late", "credentials"),
        headers={"Authorization": f"Bearer {record_token}"},
    )
    assert response.status_code == 401
    assert "join token" in response.json()["message"]


def test_every_mutation_leaves_an_audit_event(controller: InProcessController) -> None:
    admin = controller.client()
    admin.create("vmconfigs", {"metadata": {"name": "audited"}, "spec": {"image": "x:1"}}, "team-a")
    admin.delete("vmconfigs", "audited", "team-a")
    reasons = {
        e["reason"]
        for e in admin.list("events", "team-a", fieldSelector="involvedObject.name=audited")[
            "items"
        ]
    }
    assert {"Created", "Deleted"} <= reasons


def test_tls_material_is_made_once_and_kept_private(tmp_path: Path) -> None:
    from shoal.tls import ensure_server_tls, fingerprint_of

    tls = ensure_server_tls(tmp_path)
    assert tls.fingerprint == fingerprint_of(tls.ca_pem)
    assert stat.S_IMODE(os.stat(tls.key_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "ca.key").st_mode) == 0o600
    again = ensure_server_tls(tmp_path)
    assert again.fingerprint == tls.fingerprint
