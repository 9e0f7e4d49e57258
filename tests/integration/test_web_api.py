"""What the web UI relies on, driven as a browser would drive it against a real controller and a
sim agent: many watches over one WebSocket (/watch), the token as a WebSocket subprotocol, the
Origin check on WebSocket upgrades, the rules review (checked against what the routes really
allow), the page and its files with their security headers, and the OpenAPI document."""

import base64
import json
import re
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from helpers import AgentProcess, InProcessController, create_join_token, processes, wait_until
from shoal.client import Client, resource_path

API = "/apis/shoal.dev/v1"
WATCH = f"{API}/watch"
NS_A = "web-a"
NS_B = "web-b"
NODE = "web"
# Small enough that a test can write past it; far more than the few changes made while a
# resuming test is disconnected.
RETENTION = 100
VM_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "action", "connect")
READ = ["get", "list", "watch"]
CLUSTER_READABLE = ["imagecaches", "images", "namespaces", "nodes"]
Frame = dict[str, Any]


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@dataclass
class Env:
    controller: InProcessController
    echo_port: int
    viewer: str
    editor: str

    @property
    def port(self) -> int:
        return self.controller.port

    @property
    def url(self) -> str:
        return self.controller.url

    @property
    def admin(self) -> Client:
        return self.controller.client()

    @property
    def admin_token(self) -> str:
        return self.controller.admin_token

    def http(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def sa_token(admin: Client, namespace: str, name: str) -> str:
    answer = admin.request("POST", resource_path("serviceaccounts", namespace, name, "token"))
    return str(answer["status"]["token"])


def bind(admin: Client, namespace: str, role: str, sa_namespace: str, sa: str) -> None:
    admin.create(
        "rolebindings",
        {
            "metadata": {"name": f"{sa}-{role}"},
            "roleRef": {"name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": sa_namespace}],
        },
        namespace,
    )


def vm(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "spec": {"image": "sim:1"}}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("web")
    echo = _Server(("127.0.0.1", 0), _Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    with InProcessController(
        base / "controller", bookmark_interval=0.5, change_retention=RETENTION
    ) as controller:
        admin = controller.client()
        for namespace in (NS_A, NS_B):
            admin.create("namespaces", {"metadata": {"name": namespace}})
        for name, role in (("viewer", "view"), ("editor", "edit")):
            admin.create("serviceaccounts", {"metadata": {"name": name}}, NS_A)
            bind(admin, NS_A, role, NS_A, name)
        agent = AgentProcess(
            controller.url,
            create_join_token(admin),
            NODE,
            base / "agent",
            extra_args=[
                "--sim-ports-to-host",
                "--sim-boot-delay", "0",
                "--heartbeat-interval", "0.5",
                "--sim-cpu", "256",
                "--sim-memory", "1Ti",
                "--sim-vms", "100",
            ],
        )  # fmt: skip
        agent.start()
        try:
            with processes(agent):
                wait_until(lambda: admin.list("nodes")["items"], what="the agent's node")
                admin.create("virtualmachines", vm("box"), NS_A)
                admin.create("virtualmachines", vm("box"), NS_B)
                wait_until(
                    lambda: (
                        admin.get("virtualmachines", "box", NS_A)["status"]["phase"] == "Running"
                    ),
                    what="VM box running",
                )
                yield Env(
                    controller,
                    echo.server_address[1],
                    sa_token(admin, NS_A, "viewer"),
                    sa_token(admin, NS_A, "editor"),
                )
        finally:
            echo.shutdown()


# --- WebSocket helpers ---------------------------------------------------------------------------


def token_protocol(token: str) -> str:
    return "bearer.shoal.dev." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def open_socket(
    env: Env,
    path: str,
    *,
    protocols: list[str] | None = None,
    header_token: str | None = None,
    origin: str | None = None,
) -> ClientConnection:
    """A WebSocket to path, no proxy, with the subprotocols, Authorization and Origin given."""
    return connect(
        f"ws://127.0.0.1:{env.port}{path}",
        subprotocols=protocols,  # type: ignore[arg-type]
        additional_headers={"Authorization": f"Bearer {header_token}"} if header_token else None,
        origin=origin,  # type: ignore[arg-type]
        proxy=None,
        open_timeout=30,
    )


def browser_socket(env: Env, path: str, token: str, origin: str | None = None) -> ClientConnection:
    """What the web UI opens: the token as a subprotocol next to shoal.dev."""
    return open_socket(env, path, protocols=["shoal.dev", token_protocol(token)], origin=origin)


def refusal(open_it: Callable[[], ClientConnection]) -> tuple[int, dict[str, Any] | None]:
    """The status (and Status body, when there is one) of a handshake that must be refused."""
    with pytest.raises(InvalidStatus) as refused:
        open_it().close()
    response = refused.value.response
    body = response.body or b""
    return response.status_code, json.loads(body) if body.strip() else None


class Mux:
    """A client of /watch: sends watch and cancel frames, reads the tagged events."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    def __enter__(self) -> "Mux":
        self.connection.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.connection.close()

    def send(self, frame: Frame | str | bytes) -> None:
        self.connection.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    def watch(self, watch_id: str, resource: str, **fields: str) -> None:
        self.send({"op": "watch", "id": watch_id, "resource": resource, **fields})

    def cancel(self, watch_id: str) -> None:
        self.send({"op": "cancel", "id": watch_id})

    def until(
        self, done: Callable[[list[Frame]], bool], what: str, timeout: float = 30
    ) -> list[Frame]:
        """The frames received until done(all of them so far) holds."""
        frames: list[Frame] = []
        deadline = time.monotonic() + timeout
        while not done(frames):
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                message = self.connection.recv(timeout=remaining)
            except TimeoutError:
                summary = [(f["id"], f["type"], name_of(f)) for f in frames][-20:]
                raise AssertionError(
                    f"timed out waiting for {what}; last frames: {summary}"
                ) from None
            assert isinstance(message, str), "the watch socket sends text frames only"
            frames.append(json.loads(message))
        return frames

    def error(self, watch_id: str | None, what: str) -> tuple[list[Frame], Frame]:
        frames = self.until(lambda fs: bool(errors(fs, watch_id)), what)
        return frames, errors(frames, watch_id)[0]


def name_of(frame: Frame) -> str:
    return str((frame.get("object") or {}).get("metadata", {}).get("name", ""))


def rv_of(frame: Frame) -> int:
    return int(frame["object"]["metadata"]["resourceVersion"])


def errors(frames: list[Frame], watch_id: str | None) -> list[Frame]:
    return [f for f in frames if f["type"] == "ERROR" and f["id"] == watch_id]


def events(frames: list[Frame], watch_id: str, kind: str | None = None) -> list[Frame]:
    """The object events (not bookmarks or errors) of one watch, optionally of one type."""
    return [
        f
        for f in frames
        if f["id"] == watch_id
        and f["type"] in ("ADDED", "MODIFIED", "DELETED")
        and (kind is None or f["type"] == kind)
    ]


def has_event(frames: list[Frame], watch_id: str, kind: str, name: str) -> bool:
    return any(name_of(f) == name for f in events(frames, watch_id, kind))


def list_rv(http: httpx.Client, path: str) -> str:
    return str(http.get(path).raise_for_status().json()["metadata"]["resourceVersion"])


def node_rv(env: Env) -> int:
    return int(env.admin.get("nodes", NODE)["metadata"]["resourceVersion"])


# --- 1. Many watches over one socket -------------------------------------------------------------


def test_one_socket_carries_tagged_vm_and_node_watches_and_cancel_ends_only_one(
    env: Env,
) -> None:
    vms = resource_path("virtualmachines", NS_A)
    with env.http(env.admin_token) as http, Mux(browser_socket(env, WATCH, env.admin_token)) as mux:
        mux.watch("vms", "virtualmachines", namespace=NS_A, resourceVersion=list_rv(http, vms))
        mux.watch("nodes", "nodes")
        http.post(vms, json=vm("mux-1")).raise_for_status()

        def seen_all(frames: list[Frame]) -> bool:
            added = events(frames, "nodes", "ADDED")
            running = [
                f
                for f in events(frames, "vms", "MODIFIED")
                if name_of(f) == "mux-1"
                and (f["object"].get("status") or {}).get("phase") == "Running"
            ]
            heartbeats = [
                f
                for f in events(frames, "nodes", "MODIFIED")
                if added and rv_of(f) > rv_of(added[0])
            ]
            return has_event(frames, "vms", "ADDED", "mux-1") and bool(running and heartbeats)

        frames = mux.until(seen_all, "mux-1 ADDED, then Running, and a node heartbeat")
        assert {f["id"] for f in frames} == {"vms", "nodes"}
        assert not [f for f in frames if f["type"] == "ERROR"]
        for frame in events(frames, "vms"):
            assert frame["object"]["kind"] == "VirtualMachine"
            assert frame["object"]["metadata"]["namespace"] == NS_A
        for frame in events(frames, "nodes"):
            assert frame["object"]["kind"] == "Node"
            assert frame["object"]["metadata"]["name"] == NODE
        # The VM watch started from the list's version: mux-1 is ADDED first, then MODIFIED.
        mux_1 = [f["type"] for f in events(frames, "vms") if name_of(f) == "mux-1"]
        assert mux_1[0] == "ADDED" and set(mux_1[1:]) == {"MODIFIED"}
        vm_rvs = [rv_of(f) for f in events(frames, "vms")]
        assert vm_rvs == sorted(set(vm_rvs))  # in order, each change once

        mux.cancel("nodes")
        # Frames are handled in order: once this later watch's answer is back, the cancel took
        # effect, and any node event sent before it is already ahead of it on the socket.
        mux.watch("sync", "gizmos")
        mux.error("sync", "the ERROR of the sync watch")
        after = node_rv(env)
        wait_until(lambda: node_rv(env) > after, what="a heartbeat after the cancel")
        after = node_rv(env)
        wait_until(lambda: node_rv(env) > after, what="a second heartbeat after the cancel")
        http.post(vms, json=vm("mux-2")).raise_for_status()
        frames = mux.until(lambda fs: has_event(fs, "vms", "ADDED", "mux-2"), "mux-2 ADDED")
        assert not [f for f in frames if f["id"] == "nodes"], "events of a cancelled watch"
        assert {f["id"] for f in frames} == {"vms"}


def test_resuming_from_a_resource_version_yields_exactly_the_changes_after_it(env: Env) -> None:
    vms = resource_path("virtualmachines", NS_A)
    store = env.controller.plane.store
    with env.http(env.admin_token) as http:
        with Mux(browser_socket(env, WATCH, env.admin_token)) as mux:
            mux.watch("vms", "virtualmachines", namespace=NS_A, resourceVersion=list_rv(http, vms))
            http.post(vms, json=vm("resume-1")).raise_for_status()
            frames = mux.until(lambda fs: has_event(fs, "vms", "ADDED", "resume-1"), "ADDED")
            resume_from = rv_of(events(frames, "vms")[-1])

        # Disconnected: what a tab misses while its socket is down.
        http.post(vms, json=vm("resume-2")).raise_for_status()
        http.patch(
            resource_path("virtualmachines", NS_A, "resume-1"),
            json={"metadata": {"labels": {"seen": "later"}}},
            headers={"Content-Type": "application/merge-patch+json"},
        ).raise_for_status()
        http.delete(resource_path("virtualmachines", NS_A, "resume-2")).raise_for_status()
        cutoff = store.current_rv()

        # What the change log holds for this watch: the oracle the resumed watch must match.
        expected = [
            (c.rv, c.type, c.name)
            for c in store.changes_since(resume_from)
            if c.kind == "VirtualMachine" and c.namespace == NS_A and c.rv <= cutoff
        ]
        names = {(kind, name) for _, kind, name in expected}
        assert {("ADDED", "resume-2"), ("MODIFIED", "resume-1")} <= names

        with Mux(browser_socket(env, WATCH, env.admin_token)) as mux:
            mux.watch("vms", "virtualmachines", namespace=NS_A, resourceVersion=str(resume_from))
            frames = mux.until(
                lambda fs: any(rv_of(f) >= expected[-1][0] for f in events(fs, "vms")),
                "the resumed watch to reach the last change made",
            )
    got = [(rv_of(f), f["type"], name_of(f)) for f in events(frames, "vms") if rv_of(f) <= cutoff]
    assert got == expected  # no gap, no duplicate, nothing from before resume_from
    labelled = [f for f in events(frames, "vms", "MODIFIED") if name_of(f) == "resume-1"]
    assert any(f["object"]["metadata"]["labels"].get("seen") == "later" for f in labelled)


def test_bad_watches_and_frames_get_an_error_for_their_id_only(env: Env) -> None:
    vms = resource_path("virtualmachines", NS_A)
    configs = resource_path("vmconfigs", NS_A)
    store = env.controller.plane.store
    with env.http(env.admin_token) as http, Mux(browser_socket(env, WATCH, env.admin_token)) as mux:
        old = list_rv(http, vms)
        mux.watch("live", "virtualmachines", namespace=NS_A, resourceVersion=old)
        # Write past the change log's retention, then compact it as the controller's GC does
        # (it does so once a minute): the version `old` is no longer in the log.
        churn = {"metadata": {"name": "churn"}, "spec": {"image": "x:1"}}
        http.post(configs, json=churn).raise_for_status()
        for i in range(RETENTION + 20):
            http.patch(
                resource_path("vmconfigs", NS_A, "churn"),
                json={"metadata": {"labels": {"n": str(i)}}},
                headers={"Content-Type": "application/merge-patch+json"},
            ).raise_for_status()
        assert store.compact() > int(old)

        mux.watch("old", "virtualmachines", namespace=NS_A, resourceVersion=old)
        _, gone = mux.error("old", "410 for a compacted version")
        assert gone["object"]["kind"] == "Status" and gone["object"]["code"] == 410
        assert "too old" in gone["object"]["message"]

        mux.watch("garbage", "virtualmachines", namespace=NS_A, resourceVersion="abc")
        _, garbage = mux.error("garbage", "400 for a version that is no number")
        assert garbage["object"]["code"] == 400 and "'abc'" in garbage["object"]["message"]

        mux.watch("gizmos", "gizmos", namespace=NS_A)
        _, unknown = mux.error("gizmos", "400 for an unknown resource")
        assert unknown["object"]["code"] == 400 and "gizmos" in unknown["object"]["message"]

        malformed_frames: list[str | bytes] = [
            "not json",
            '{"op": "watch"}',
            '{"op": "explode", "id": "x"}',
            "[]",
            b'{"op": "watch", "id": "binary", "resource": "virtualmachines"}',  # text only
        ]
        for malformed in malformed_frames:
            mux.send(malformed)
            frames, bad = mux.error(None, f"an ERROR with id null for {malformed!r}")
            assert bad["object"]["code"] == 400 and "bad request" in bad["object"]["message"]
            assert not [f for f in frames if f["type"] == "ERROR" and f["id"] is not None]

        # The socket is still usable: the live watch goes on and a new one starts.
        mux.watch("configs", "vmconfigs", namespace=NS_A)
        http.post(vms, json=vm("after-errors")).raise_for_status()
        frames = mux.until(
            lambda fs: (
                has_event(fs, "live", "ADDED", "after-errors")
                and has_event(fs, "configs", "ADDED", "churn")
            ),
            "the live watch's ADDED and the new watch's listing",
        )
        assert not [f for f in frames if f["type"] == "ERROR"]
        assert {f["id"] for f in frames} <= {"live", "configs"}


def test_a_view_token_watches_its_namespace_and_gets_the_apis_403_for_another(
    env: Env,
) -> None:
    with env.http(env.viewer) as viewer_http, env.http(env.admin_token) as admin_http:
        refused = viewer_http.get(resource_path("virtualmachines", NS_B), params={"watch": "1"})
        assert refused.status_code == 403
        start = list_rv(viewer_http, resource_path("virtualmachines", NS_A))
        with Mux(browser_socket(env, WATCH, env.viewer)) as mux:
            mux.watch("a", "virtualmachines", namespace=NS_A, resourceVersion=start)
            mux.watch("b", "virtualmachines", namespace=NS_B)
            frames, forbidden = mux.error("b", "403 for namespace B")
            assert forbidden["object"]["code"] == 403
            assert forbidden["object"]["message"] == refused.json()["message"]
            assert "cannot watch virtualmachines" in forbidden["object"]["message"]
            admin_http.post(
                resource_path("virtualmachines", NS_A), json=vm("seen-by-viewer")
            ).raise_for_status()
            frames += mux.until(
                lambda fs: has_event(fs, "a", "ADDED", "seen-by-viewer"), "the ADDED in A"
            )
    assert [f for f in frames if f["id"] == "b"] == [forbidden]
    assert all(f["object"]["metadata"]["namespace"] == NS_A for f in events(frames, "a"))


# --- 2. Tokens on WebSockets ---------------------------------------------------------------------


def test_websocket_handshakes_take_the_token_from_a_subprotocol_or_the_header(env: Env) -> None:
    code, body = refusal(lambda: open_socket(env, WATCH))
    assert code == 401 and body is not None and body["code"] == 401
    code, _ = refusal(lambda: open_socket(env, WATCH, protocols=["shoal.dev"]))
    assert code == 401
    code, body = refusal(lambda: open_socket(env, WATCH, protocols=["bearer.shoal.dev.a"]))
    assert code == 401 and body is not None and "base64url" in body["message"]
    code, _ = refusal(lambda: open_socket(env, WATCH, protocols=["bearer.shoal.dev._w"]))
    assert code == 401  # base64 of a byte that is no UTF-8
    code, body = refusal(lambda: browser_socket(env, WATCH, "nope.nope"))
    assert code == 401 and body is not None and "invalid" in body["message"]

    def sees_default(connection: ClientConnection) -> None:
        with Mux(connection) as mux:
            mux.watch("ns", "namespaces")
            mux.until(lambda fs: has_event(fs, "ns", "ADDED", "default"), "namespace default")

    by_protocol = browser_socket(env, WATCH, env.admin_token)
    assert by_protocol.subprotocol == "shoal.dev"
    sees_default(by_protocol)
    # Offering only the token: the server picks no subprotocol, and the token still counts.
    only_token = open_socket(env, WATCH, protocols=[token_protocol(env.viewer)])
    assert only_token.subprotocol is None
    sees_default(only_token)
    # The CLI's way: the Authorization header, no subprotocol offered, none selected.
    by_header = open_socket(env, WATCH, header_token=env.admin_token)
    assert by_header.subprotocol is None
    sees_default(by_header)


# --- 3. Origin -----------------------------------------------------------------------------------


def port_forward(env: Env, namespace: str = NS_A, name: str = "box") -> str:
    return f"{API}/namespaces/{namespace}/virtualmachines/{name}/portforward?port={env.echo_port}"


def assert_echoes(connection: ClientConnection) -> None:
    with connection:
        assert json.loads(connection.recv(timeout=30)) == {"ready": True}
        connection.send(b"ping over the tunnel")
        assert connection.recv(timeout=30) == b"ping over the tunnel"


def test_cross_origin_websockets_are_refused_and_same_origin_and_tools_are_not(
    env: Env,
) -> None:
    own = f"http://127.0.0.1:{env.port}"
    console = resource_path("virtualmachines", NS_A, "box", "console")
    for path in (WATCH, port_forward(env), console):
        for origin in (
            "http://evil.example",
            f"http://evil.example:{env.port}",
            f"http://127.0.0.1:{env.port + 1}",
            f"http://localhost:{env.port}",
            "null",
        ):
            code, _ = refusal(partial(browser_socket, env, path, env.admin_token, origin=origin))
            assert code == 403, (path, origin)
        # Refused before any token is looked at: 403 (not 401) without one.
        code, _ = refusal(partial(open_socket, env, path, origin="http://evil.example"))
        assert code == 403

    with Mux(browser_socket(env, WATCH, env.admin_token, origin=own)) as mux:
        mux.watch("ns", "namespaces")
        mux.until(lambda fs: has_event(fs, "ns", "ADDED", "default"), "namespace default")
    tunnel = browser_socket(env, port_forward(env), env.admin_token, origin=own)
    assert tunnel.subprotocol == "shoal.dev"
    assert_echoes(tunnel)
    # Tools send no Origin: the header token, no subprotocol (as `shoal port-forward` does).
    tool = open_socket(env, port_forward(env), header_token=env.admin_token)
    assert tool.subprotocol is None
    assert_echoes(tool)


# --- 4. Rules review -----------------------------------------------------------------------------


def review(env: Env, token: str | None, namespace: str | None) -> httpx.Response:
    body = {"spec": {"namespace": namespace}} if namespace else None
    with env.http(token) as http:
        return http.post(f"{API}/selfsubjectrulesreviews", json=body)


def rules_of(env: Env, token: str, namespace: str | None) -> dict[str, list[str]]:
    response = review(env, token, namespace)
    assert response.status_code == 201, response.text
    status = response.json()["status"]
    rules: dict[str, list[str]] = {}
    for rule in status["resourceRules"]:
        for resource in rule["resources"]:
            rules[resource] = rule["verbs"]
    return rules


def attempt(env: Env, token: str, namespace: str, verb: str) -> httpx.Response | int:
    """Use verb on VirtualMachines in namespace through its real route; the answer (for connect,
    the handshake's status: 101 when the tunnel opened)."""
    vms = resource_path("virtualmachines", namespace)
    box = resource_path("virtualmachines", namespace, "box")
    merge = {"Content-Type": "application/merge-patch+json"}
    with env.http(token) as http:
        if verb == "get":
            return http.get(box)
        if verb == "list":
            return http.get(vms)
        if verb == "watch":
            with http.stream("GET", vms, params={"watch": "1"}) as response:
                return response.status_code
        if verb == "create":
            return http.post(vms, json=vm(f"made-{time.monotonic_ns()}"))
        if verb == "update":
            current = env.admin.get("virtualmachines", "box", namespace)
            current["metadata"]["labels"] = {"updated": "yes"}
            return http.put(box, json=current)
        if verb == "patch":
            return http.patch(box, json={"metadata": {"labels": {"patched": "yes"}}}, headers=merge)
        if verb == "delete":
            name = f"doomed-{time.monotonic_ns()}"
            env.admin.create("virtualmachines", vm(name), namespace)
            return http.delete(resource_path("virtualmachines", namespace, name))
        if verb == "action":
            return http.post(f"{box}/start")
        assert verb == "connect"
        try:
            tunnel = browser_socket(env, port_forward(env, namespace), token)
        except InvalidStatus as refused:
            return refused.response.status_code
        assert_echoes(tunnel)
        return 101


def code_of(answer: httpx.Response | int) -> int:
    return answer if isinstance(answer, int) else answer.status_code


def test_rules_review_says_who_the_caller_is_and_what_it_may_do(env: Env) -> None:
    assert review(env, None, None).status_code == 401
    assert review(env, None, NS_A).json()["code"] == 401

    admin = review(env, env.admin_token, NS_A).json()["status"]
    assert admin["clusterAdmin"] is True
    assert admin["user"]["name"] == "admin" and admin["display"] == "user admin"
    assert admin["resourceRules"] == [{"resources": ["*"], "verbs": ["*"]}]

    viewer = review(env, env.viewer, NS_A).json()
    assert viewer["spec"] == {"namespace": NS_A}
    assert viewer["status"]["clusterAdmin"] is False
    assert viewer["status"]["user"] == {
        "kind": "ServiceAccount",
        "name": "viewer",
        "namespace": NS_A,
    }
    assert viewer["status"]["display"] == f"serviceaccount {NS_A}/viewer"
    in_a = rules_of(env, env.viewer, NS_A)
    assert in_a["virtualmachines"] == READ
    # At cluster scope (no body at all): only the kinds everyone may read, and only read them.
    assert rules_of(env, env.viewer, None) == {kind: READ for kind in CLUSTER_READABLE}
    assert rules_of(env, env.editor, NS_B) == {kind: READ for kind in CLUSTER_READABLE}
    editor = rules_of(env, env.editor, NS_A)["virtualmachines"]
    assert {"create", "delete", "action", "connect"} <= set(editor)


@pytest.mark.parametrize(
    ("who", "namespace"),
    [("viewer", NS_A), ("viewer", NS_B), ("editor", NS_A), ("editor", NS_B)],
)
def test_what_the_review_refuses_the_routes_refuse_and_what_it_allows_they_allow(
    env: Env, who: str, namespace: str
) -> None:
    token = env.viewer if who == "viewer" else env.editor
    allowed = set(rules_of(env, token, namespace).get("virtualmachines", []))
    for verb in VM_VERBS:
        answer = attempt(env, token, namespace, verb)
        code = code_of(answer)
        if verb in allowed:
            assert code < 400 or code in (404, 409), (who, namespace, verb, code)
        else:
            assert code == 403, (who, namespace, verb, code)
            if isinstance(answer, httpx.Response) and verb != "watch":
                assert f"cannot {verb} virtualmachines" in answer.json()["message"]


def test_a_view_token_is_refused_writes_with_messages_naming_the_verb(env: Env) -> None:
    with env.http(env.viewer) as http:
        created = http.post(resource_path("virtualmachines", NS_A), json=vm("by-viewer"))
        assert created.status_code == 403
        assert created.json()["message"] == (
            f"serviceaccount {NS_A}/viewer cannot create virtualmachines in namespace {NS_A}"
        )
        started = http.post(resource_path("virtualmachines", NS_A, "box", "start"))
        assert started.status_code == 403 and "cannot action" in started.json()["message"]
        # At cluster scope it may read what everyone may read, and change none of it.
        assert http.get(resource_path("nodes")).status_code == 200
        assert http.get(resource_path("namespaces")).status_code == 200
        made = http.post(resource_path("namespaces"), json={"metadata": {"name": "by-viewer"}})
        assert made.status_code == 403 and "cannot create namespaces" in made.json()["message"]


# --- 5. The page ---------------------------------------------------------------------------------


def test_the_page_and_its_files_are_served_with_security_headers(env: Env) -> None:
    with env.http(None) as http:
        page = http.get("/")
        script = http.get("/ui/js/app.js")
        missing = http.get("/ui/nope.js")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for response in (page, script):
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "default-src 'none'" in policy and "connect-src 'self'" in policy
        assert response.headers["x-content-type-options"] == "nosniff"
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert "import" in script.text
    assert missing.status_code == 404

    html = page.text
    for url in re.findall(r"""[a-z][a-z0-9+.-]*://[^\s"'<>)]+""", html, re.IGNORECASE):
        assert urlsplit(url).netloc == f"127.0.0.1:{env.port}", f"the page names {url}"
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", html)
    assert references  # the page does load its scripts and styles
    for reference in references:
        assert reference.startswith(("/ui/", "#")), f"the page loads {reference}"
    for token in (env.admin_token, env.viewer, env.editor):
        for part in token.split("."):
            assert part not in html


# --- 6. OpenAPI ----------------------------------------------------------------------------------


def test_openapi_names_the_rules_review_and_the_watch_websocket(env: Env) -> None:
    with env.http(None) as http:
        document = http.get("/openapi.json").raise_for_status().json()
    assert "post" in document["paths"][f"{API}/selfsubjectrulesreviews"]
    assert WATCH in document["x-websockets"]
    assert document["x-websockets"][WATCH]["summary"].startswith("Many watches")


def test_a_revoked_token_starts_no_more_watches_on_its_open_socket(env: Env) -> None:
    """The socket authenticated once; each new watch asks again, so a token revoked while a tab
    is open stops there (closed with 4401) instead of watching on."""
    admin = env.admin
    admin.create("serviceaccounts", {"metadata": {"name": "leaving"}}, NS_A)
    bind(admin, NS_A, "view", NS_A, "leaving")
    issued = admin.request("POST", resource_path("serviceaccounts", NS_A, "leaving", "token"))
    token, token_id = issued["status"]["token"], issued["status"]["id"]
    with Mux(browser_socket(env, WATCH, token)) as mux:
        mux.watch("a", "virtualmachines", namespace=NS_A)
        mux.until(lambda frames: any(f["id"] == "a" for f in frames), "the first watch's events")
        admin.request(
            "DELETE", resource_path("serviceaccounts", NS_A, "leaving", f"tokens/{token_id}")
        )
        # The controller trusts a token it checked for a few seconds; then the next watch asks.
        deadline = time.monotonic() + 30
        closed = None
        while closed is None and time.monotonic() < deadline:
            try:
                mux.watch("b", "nodes")
                mux.connection.recv(timeout=0.5)
            except TimeoutError:
                continue
            except ConnectionClosed as error:
                closed = error
        assert closed is not None and closed.rcvd is not None
        assert closed.rcvd.code == 4401 and "revoked" in closed.rcvd.reason
