"""A fake Jenkins controller, written from Jenkins' remote access API documentation and the
sources of the pages it serves (jenkinsci/jenkins: hudson.model.Queue, ComputerSet, Computer,
SlaveComputer's jenkins-agent.jnlp.jelly, CauseOfBlockage and its messages):

- Every API path wants HTTP basic auth with a user and its API token: 401 otherwise.
- `GET /queue/api/json` → `{"items": [...]}`, each `{_class, id, why, task: {name, url},
  inQueueSince (ms), buildable, blocked, stuck, url}`. `why` is what Jenkins says, in English,
  names quoted with U+2018 and U+2019 (written 'L' here): with no agent node at all "Waiting
  for next available executor"; when the label has no node "There are no nodes with the label
  'L'"; all its nodes offline "All nodes of label 'L' are offline"; otherwise "Waiting for next
  available executor on 'L'"; and when L has exactly one node N, "'N' is offline" or "Waiting
  for next available executor on 'N'".
- `GET /queue/item/{id}/api/json` → the item; once it left the queue a LeftItem with
  `cancelled` and `executable` (`{number, url, building, result}` or null); 404 for an id never
  queued (Jenkins forgets left items after 5 minutes; this fake keeps them).
- `POST /queue/cancelItem?id=N` → 204, or 404 for an item not in the queue.
- `GET /computer/api/json` → `{"computer": [...]}`: the built-in node (0 executors), then each
  agent node `{_class, displayName, offline, temporarilyOffline, idle, numExecutors,
  offlineCauseReason, assignedLabels, executors}`. `offline` is temporarily offline or not
  connected, as Computer#isOffline. `GET /computer/{name}/api/json` → one, or 404.
- `POST /computer/doCreateItem` (form: `name`, `type` = `hudson.slaves.DumbSlave`, `json` = the
  node: numExecutors, remoteFS, labelString, mode, launcher with `stapler-class` or `$class`
  `hudson.slaves.JNLPLauncher` and `webSocket`) → 302 to the node list; 400 for a name in use,
  a bad name, another type or launcher.
- `GET /computer/{name}/jenkins-agent.jnlp` (and the older `slave-agent.jnlp`) → the JNLP XML
  whose first `<argument>` is the node's secret, then its name, `-webSocket`, `-workDir`...
- `POST /computer/{name}/toggleOffline?offlineMessage=` flips "temporarily offline";
  `POST /computer/{name}/changeOfflineCause?offlineMessage=` sets it; both → 302, 404.
- `POST /computer/{name}/doDelete` → 302 (a busy node too: Jenkins does not refuse; here its
  build ends ABORTED), 404.
- GETs of POST-only paths are 405. `outage = True` makes every API path answer 503.

Assignment, as Jenkins' queue does it: a queued build for label L goes to an agent node that
carries L (its labelString or its name), is connected, not temporarily offline, and has a free
executor (one build per executor); the oldest build first, nodes in name order. It happens
whenever the fake is asked anything.

The agent side is not Jenkins' (agent.jar speaks the remoting protocol over a WebSocket): plain
HTTP endpoints stand in for it, shaped for a POSIX sh with busybox wget
(tests/fakes/jenkins_agent.sh). The node's name is in the path, its secret in the form body
(`secret=...`, never on a command line); answers are `key=value` lines:

- `POST /_fake/agent/connect` (`name`, `secret`) → `connected`; 404 no such node, 403 bad secret.
- `POST /_fake/agent/{name}/poll` (`secret`) → `build=<queue id>`, `job=`, `number=`,
  `seconds=` for the build it runs; `idle`; or `disconnected`. 404 once the node is deleted:
  an inbound agent exits when its node goes.
- `POST /_fake/agent/{name}/builds/{id}/done` (`secret`, optional `result`) → `ok`.
- `POST /_fake/agent/{name}/disconnect` (`secret`) → `ok`; a build it ran ends ABORTED.

Test-only endpoints (also Python methods): `POST /_fake/builds` (form or JSON: `label`, `job`,
`seconds`) → `{"id": <queue id>}`; `GET /_fake/builds` → `[{id, job, label, state, result,
node, number}]`; `GET /_fake/nodes` → `[{name, labels, connected, temporarilyOffline, ...}]`.
"""

import base64
import binascii
import json
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

DUMB_SLAVE_TYPES = frozenset({"hudson.slaves.DumbSlave", "hudson.slaves.DumbSlave$DescriptorImpl"})
JNLP_LAUNCHER = "hudson.slaves.JNLPLauncher"
BAD_NAME_CHARACTERS = set("?*/\\%!@#$^&|<>[]:;")
Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class FakeBuild:
    """A build from the moment it is queued: queued → running → done | aborted, or cancelled."""

    queue_id: int
    job: str
    label: str
    seconds: float
    queued_at: int  # epoch milliseconds
    state: str = "queued"
    number: int | None = None
    node: str | None = None
    result: str | None = None


@dataclass
class FakeNode:
    name: str
    label_string: str
    num_executors: int
    mode: str
    remote_fs: str
    web_socket: bool
    description: str
    secret: str = field(default_factory=lambda: secrets.token_hex(32))
    connected: bool = False
    temporarily_offline: bool = False
    offline_message: str = ""

    @property
    def labels(self) -> set[str]:
        return {*self.label_string.split(), self.name}

    @property
    def offline(self) -> bool:
        return self.temporarily_offline or not self.connected


class FakeJenkins:
    """A Jenkins controller in memory. `app` is its ASGI app; users maps a user to its API
    token. old_jnlp: serve the agent's JNLP file only as slave-agent.jnlp (Jenkins < 2.264)."""

    def __init__(self, users: Mapping[str, str] | None = None, *, old_jnlp: bool = False) -> None:
        self.users = dict(users or {"shoal": "11aa22bb33cc44dd55ee66ff77889900aa"})
        self.old_jnlp = old_jnlp
        self.outage = False
        self._lock = threading.Lock()
        self._nodes: dict[str, FakeNode] = {}
        self._builds: dict[int, FakeBuild] = {}
        self._next_queue_id = 100
        self._numbers: dict[str, int] = {}
        self.app = Starlette(routes=self._routes())

    # --- test-side Python API ---

    def queue_build(self, label: str, job: str = "job", seconds: float = 0.0) -> int:
        """Queue a build of job that needs label; returns its queue id."""
        with self._lock:
            queue_id = self._next_queue_id
            self._next_queue_id += 1
            self._builds[queue_id] = FakeBuild(
                queue_id, job, label, seconds, int(time.time() * 1000)
            )
            self._maintain()
            return queue_id

    def cancel(self, queue_id: int) -> bool:
        """Cancel a queued build (as POST /queue/cancelItem); False when it is not queued."""
        with self._lock:
            build = self._builds.get(queue_id)
            if build is None or build.state != "queued":
                return False
            build.state = "cancelled"
            return True

    def builds(self) -> list[dict[str, Any]]:
        with self._lock:
            self._maintain()
            return [_build_summary(build) for build in self._builds.values()]

    def build(self, queue_id: int) -> dict[str, Any]:
        with self._lock:
            self._maintain()
            return _build_summary(self._builds[queue_id])

    def nodes(self) -> list[dict[str, Any]]:
        with self._lock:
            return [_node_summary(node) for node in self._nodes.values()]

    def node(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            node = self._nodes.get(name)
            return None if node is None else _node_summary(node)

    def count_nodes(self) -> int:
        with self._lock:
            return len(self._nodes)

    def secret_of(self, name: str) -> str:
        with self._lock:
            return self._nodes[name].secret

    # --- the queue ---

    def _running_on(self, node: FakeNode) -> list[FakeBuild]:
        return [b for b in self._builds.values() if b.state == "running" and b.node == node.name]

    def _maintain(self) -> None:
        """Give queued builds to free executors, oldest first (the caller holds the lock)."""
        for build in sorted(self._builds.values(), key=lambda b: b.queue_id):
            if build.state != "queued":
                continue
            for node in sorted(self._nodes.values(), key=lambda n: n.name):
                if (
                    build.label in node.labels
                    and not node.offline
                    and len(self._running_on(node)) < node.num_executors
                ):
                    self._numbers[build.job] = self._numbers.get(build.job, 0) + 1
                    build.state, build.node = "running", node.name
                    build.number = self._numbers[build.job]
                    break

    def _why(self, build: FakeBuild) -> str:
        """Queue.BuildableItem#getCauseOfBlockage, for a build that waits for a label."""
        if not self._nodes:  # no agent node at all: Jenkins does not talk about labels
            return "Waiting for next available executor"
        of_label = [node for node in self._nodes.values() if build.label in node.labels]
        if all(node.offline for node in of_label):
            if len(of_label) == 1:
                return f"\u2018{of_label[0].name}\u2019 is offline"
            if not of_label:
                return f"There are no nodes with the label \u2018{build.label}\u2019"
            return f"All nodes of label \u2018{build.label}\u2019 are offline"
        name = of_label[0].name if len(of_label) == 1 else build.label
        return f"Waiting for next available executor on \u2018{name}\u2019"

    def _abort_on(self, node: FakeNode) -> None:
        for build in self._running_on(node):
            build.state, build.result = "aborted", "ABORTED"

    # --- JSON shapes ---

    def _task(self, build: FakeBuild, base: str) -> dict[str, Any]:
        return {
            "_class": "hudson.model.FreeStyleProject",
            "name": build.job,
            "url": f"{base}/job/{build.job}/",
            "color": "notbuilt",
        }

    def _executable(self, build: FakeBuild, base: str) -> dict[str, Any]:
        return {
            "_class": "hudson.model.FreeStyleBuild",
            "number": build.number,
            "url": f"{base}/job/{build.job}/{build.number}/",
            "building": build.state == "running",
            "result": build.result,
        }

    def _queue_item(self, build: FakeBuild, base: str) -> dict[str, Any]:
        item: dict[str, Any] = {
            "actions": [],
            "blocked": False,
            "id": build.queue_id,
            "inQueueSince": build.queued_at,
            "params": "",
            "task": self._task(build, base),
            "url": f"queue/item/{build.queue_id}/",
        }
        if build.state == "queued":
            of_label = [n for n in self._nodes.values() if build.label in n.labels]
            return {
                "_class": "hudson.model.Queue$BuildableItem",
                **item,
                "buildable": True,
                "stuck": all(node.offline for node in of_label),
                "why": self._why(build),
                "buildableStartMilliseconds": build.queued_at,
                "pending": False,
            }
        cancelled = build.state == "cancelled"
        return {
            "_class": "hudson.model.Queue$LeftItem",
            **item,
            "buildable": False,
            "stuck": False,
            "why": None,
            "cancelled": cancelled,
            "executable": None if cancelled else self._executable(build, base),
        }

    def _computer(self, node: FakeNode, base: str) -> dict[str, Any]:
        running = self._running_on(node)
        executors = [
            {
                "currentExecutable": self._executable(running[i], base)
                if i < len(running)
                else None,
                "idle": i >= len(running),
                "number": i,
            }
            for i in range(node.num_executors)
        ]
        return {
            "_class": "hudson.slaves.SlaveComputer",
            "displayName": node.name,
            "description": node.description,
            "assignedLabels": [{"name": label} for label in sorted(node.labels)],
            "executors": executors,
            "idle": not running,
            "jnlpAgent": True,
            "launchSupported": True,
            "manualLaunchAllowed": True,
            "numExecutors": node.num_executors,
            "offline": node.offline,
            "offlineCauseReason": node.offline_message if node.temporarily_offline else "",
            "oneOffExecutors": [],
            "temporarilyOffline": node.temporarily_offline,
        }

    def _jnlp(self, node: FakeNode, base: str) -> str:
        arguments = [node.secret, node.name]
        if node.web_socket:
            arguments.append("-webSocket")
        arguments += ["-workDir", node.remote_fs, "-internalDir", "remoting", "-url", base + "/"]
        lines = "".join(f"    <argument>{escape(a)}</argument>\n" for a in arguments)
        return f"<jnlp>\n  <application-desc>\n{lines}  </application-desc>\n</jnlp>\n"

    # --- routes ---

    def _routes(self) -> list[Route]:
        api = self._api
        agent = self._agent
        jnlp = self._jnlp_route
        return [
            Route("/queue/api/json", api(self._get_queue)),
            Route("/queue/item/{id:int}/api/json", api(self._get_queue_item)),
            Route("/queue/cancelItem", api(self._cancel_item), methods=["POST"]),
            Route("/computer/api/json", api(self._get_computers)),
            Route("/computer/doCreateItem", api(self._create_node), methods=["POST"]),
            Route("/computer/{name}/api/json", api(self._get_computer)),
            Route("/computer/{name}/jenkins-agent.jnlp", api(jnlp("jenkins-agent.jnlp"))),
            Route("/computer/{name}/slave-agent.jnlp", api(jnlp("slave-agent.jnlp"))),
            Route("/computer/{name}/toggleOffline", api(self._toggle_offline), methods=["POST"]),
            Route(
                "/computer/{name}/changeOfflineCause",
                api(self._change_offline_cause),
                methods=["POST"],
            ),
            Route("/computer/{name}/doDelete", api(self._delete_node), methods=["POST"]),
            Route("/_fake/agent/connect", self._agent_connect, methods=["POST"]),
            Route("/_fake/agent/{name}/poll", agent(self._agent_poll), methods=["POST"]),
            Route(
                "/_fake/agent/{name}/builds/{id:int}/done",
                agent(self._agent_done),
                methods=["POST"],
            ),
            Route(
                "/_fake/agent/{name}/disconnect", agent(self._agent_disconnect), methods=["POST"]
            ),
            Route("/_fake/builds", self._fake_builds, methods=["GET", "POST"]),
            Route("/_fake/nodes", self._fake_nodes),
        ]

    def _api(self, handler: Callable[[Request, str], Response]) -> Handler:
        """A Jenkins API route: basic auth, the outage switch, the lock, the queue kept up."""

        async def route(request: Request) -> Response:
            if self.outage:
                return PlainTextResponse("Service Unavailable", status_code=503)
            if not self._authenticated(request):
                return PlainTextResponse(
                    "Invalid password/token",
                    status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="Jenkins"'},
                )
            form = await _form(request)
            base = str(request.base_url).rstrip("/")
            with self._lock:
                self._maintain()
                request.state.form = form
                return handler(request, base)

        return route

    def _authenticated(self, request: Request) -> bool:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, token = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        expected = self.users.get(user)
        return expected is not None and secrets.compare_digest(expected, token)

    def _get_queue(self, request: Request, base: str) -> Response:
        queued = sorted(
            (b for b in self._builds.values() if b.state == "queued"), key=lambda b: b.queue_id
        )
        return JSONResponse(
            {
                "_class": "hudson.model.Queue",
                "discoverableItems": [],
                "items": [self._queue_item(build, base) for build in queued],
            }
        )

    def _get_queue_item(self, request: Request, base: str) -> Response:
        build = self._builds.get(int(request.path_params["id"]))
        if build is None:
            return PlainTextResponse("Not Found", status_code=404)
        return JSONResponse(self._queue_item(build, base))

    def _cancel_item(self, request: Request, base: str) -> Response:
        try:
            build = self._builds.get(int(request.state.form.get("id", "")))
        except ValueError:
            build = None
        if build is None or build.state != "queued":
            return PlainTextResponse("Provided id not found", status_code=404)
        build.state = "cancelled"
        return Response(status_code=204)

    def _get_computers(self, request: Request, base: str) -> Response:
        computers = [self._computer(node, base) for node in self._nodes.values()]
        return JSONResponse(
            {
                "_class": "hudson.model.ComputerSet",
                "busyExecutors": sum(1 for b in self._builds.values() if b.state == "running"),
                "computer": [_BUILT_IN, *computers],
                "displayName": "Nodes",
                "totalExecutors": sum(n.num_executors for n in self._nodes.values()),
            }
        )

    def _get_computer(self, request: Request, base: str) -> Response:
        node = self._nodes.get(request.path_params["name"])
        if node is None:
            return PlainTextResponse("Not Found", status_code=404)
        return JSONResponse(self._computer(node, base))

    def _create_node(self, request: Request, base: str) -> Response:
        form: dict[str, str] = request.state.form
        name = form.get("name", "").strip()
        problem = self._creation_problem(name, form)
        if problem:
            return PlainTextResponse(problem, status_code=400)
        spec = json.loads(form["json"])
        launcher = spec["launcher"]
        self._nodes[name] = FakeNode(
            name=name,
            label_string=str(spec.get("labelString") or ""),
            num_executors=int(spec.get("numExecutors") or 1),
            mode=str(spec.get("mode") or "NORMAL"),
            remote_fs=str(spec.get("remoteFS") or ""),
            web_socket=bool(launcher.get("webSocket")),
            description=str(spec.get("nodeDescription") or ""),
        )
        return _redirect(f"{base}/computer/")

    def _creation_problem(self, name: str, form: Mapping[str, str]) -> str:
        if not name:
            return "Query parameter 'name' is required"
        if set(name) & BAD_NAME_CHARACTERS or name in (".", ".."):
            return f"\u2018{name}\u2019 is an unsafe name"
        if name in self._nodes:
            return f"Agent called \u2018{name}\u2019 already exists"
        if form.get("type") not in DUMB_SLAVE_TYPES:
            return "this fake makes permanent agents (hudson.slaves.DumbSlave) only"
        try:
            spec = json.loads(form.get("json", ""))
            launcher = spec["launcher"]
            launcher_class = launcher.get("stapler-class") or launcher.get("$class")
            executors = int(spec.get("numExecutors") or 1)
        except (ValueError, KeyError, TypeError, AttributeError):
            return "json: not a node's configuration"
        if launcher_class != JNLP_LAUNCHER:
            return "this fake launches inbound agents (hudson.slaves.JNLPLauncher) only"
        if executors < 1:
            return f"Invalid agent configuration for {name}. Invalid # of executors."
        return ""

    def _jnlp_route(self, file_name: str) -> Callable[[Request, str], Response]:
        def route(request: Request, base: str) -> Response:
            node = self._nodes.get(request.path_params["name"])
            served = "slave-agent.jnlp" if self.old_jnlp else file_name
            if node is None or file_name != served:
                return PlainTextResponse("Not Found", status_code=404)
            return Response(self._jnlp(node, base), media_type="application/x-java-jnlp-file")

        return route

    def _toggle_offline(self, request: Request, base: str) -> Response:
        node = self._nodes.get(request.path_params["name"])
        if node is None:
            return PlainTextResponse("Not Found", status_code=404)
        node.temporarily_offline = not node.temporarily_offline
        node.offline_message = request.state.form.get("offlineMessage", "").strip()
        return _redirect(f"{base}/computer/{node.name}/")

    def _change_offline_cause(self, request: Request, base: str) -> Response:
        node = self._nodes.get(request.path_params["name"])
        if node is None:
            return PlainTextResponse("Not Found", status_code=404)
        node.temporarily_offline = True
        node.offline_message = request.state.form.get("offlineMessage", "").strip()
        return _redirect(f"{base}/computer/{node.name}/")

    def _delete_node(self, request: Request, base: str) -> Response:
        node = self._nodes.pop(request.path_params["name"], None)
        if node is None:
            return PlainTextResponse("Not Found", status_code=404)
        self._abort_on(node)
        return _redirect(f"{base}/computer/")

    # --- the agent side ---

    def _agent(self, handler: Callable[[FakeNode, Request], str]) -> Handler:
        """An agent route: the node of the path, its secret checked, the lock held."""

        async def route(request: Request) -> Response:
            form = await _form(request)
            with self._lock:
                node = self._nodes.get(request.path_params["name"])
                if node is None:
                    return PlainTextResponse("no such node\n", status_code=404)
                if not secrets.compare_digest(form.get("secret", ""), node.secret):
                    return PlainTextResponse("bad secret\n", status_code=403)
                self._maintain()
                request.state.form = form
                return PlainTextResponse(handler(node, request) + "\n")

        return route

    async def _agent_connect(self, request: Request) -> Response:
        form = await _form(request)
        with self._lock:
            node = self._nodes.get(form.get("name", ""))
            if node is None:
                return PlainTextResponse("no such node\n", status_code=404)
            if not secrets.compare_digest(form.get("secret", ""), node.secret):
                return PlainTextResponse("bad secret\n", status_code=403)
            node.connected = True
            self._maintain()
        return PlainTextResponse("connected\n")

    def _agent_poll(self, node: FakeNode, request: Request) -> str:
        if not node.connected:
            return "disconnected"
        running = self._running_on(node)
        if not running:
            return "idle"
        build = running[0]
        return (
            f"build={build.queue_id}\njob={build.job}\nnumber={build.number}\n"
            f"seconds={build.seconds:g}"
        )

    def _agent_done(self, node: FakeNode, request: Request) -> str:
        build = self._builds.get(int(request.path_params["id"]))
        if build is None or build.state != "running" or build.node != node.name:
            return "not running here"
        build.state = "done"
        build.result = request.state.form.get("result") or "SUCCESS"
        self._maintain()
        return "ok"

    def _agent_disconnect(self, node: FakeNode, request: Request) -> str:
        node.connected = False
        self._abort_on(node)
        return "ok"

    # --- test-only endpoints ---

    async def _fake_builds(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(self.builds())
        body = await request.body()
        fields: Mapping[str, Any] = (
            json.loads(body) if body.startswith(b"{") else await _form(request)
        )
        queue_id = self.queue_build(
            str(fields["label"]), str(fields.get("job") or "job"), float(fields.get("seconds") or 0)
        )
        return JSONResponse({"id": queue_id})

    async def _fake_nodes(self, request: Request) -> Response:
        return JSONResponse(self.nodes())


_BUILT_IN: dict[str, Any] = {
    "_class": "hudson.model.Hudson$MasterComputer",
    "displayName": "Built-In Node",
    "executors": [],
    "idle": True,
    "numExecutors": 0,
    "offline": False,
    "offlineCauseReason": "",
    "temporarilyOffline": False,
}


async def _form(request: Request) -> dict[str, str]:
    """Query parameters and a form-encoded body together, as Stapler's @QueryParameter sees
    them (no multipart here)."""
    fields = dict(request.query_params)
    if request.method == "POST" and "json" not in request.headers.get("content-type", ""):
        body = (await request.body()).decode()
        fields.update({key: values[-1] for key, values in parse_qs(body).items()})
    return fields


def _redirect(location: str) -> Response:
    return Response(status_code=302, headers={"Location": location})


def _build_summary(build: FakeBuild) -> dict[str, Any]:
    return {
        "id": build.queue_id,
        "job": build.job,
        "label": build.label,
        "state": build.state,
        "result": build.result,
        "node": build.node,
        "number": build.number,
    }


def _node_summary(node: FakeNode) -> dict[str, Any]:
    return {
        "name": node.name,
        "labels": sorted(node.labels),
        "labelString": node.label_string,
        "numExecutors": node.num_executors,
        "mode": node.mode,
        "remoteFS": node.remote_fs,
        "webSocket": node.web_socket,
        "description": node.description,
        "connected": node.connected,
        "temporarilyOffline": node.temporarily_offline,
        "offlineMessage": node.offline_message,
    }
