"""Jenkins: one inbound agent (a permanent node with one executor) per queued build of the
pool's label, driven through Jenkins' REST API alone; nothing to install on the Jenkins side.

- Auth: HTTP basic with `username` and `apiToken` from the credentials Secret. A request made
  with an API token needs no CSRF crumb, so none is asked for. The user needs Agent/Create,
  Delete, Connect and Disconnect, and Overall/Read and Job/Read to see the queue.
- Demand: `GET /queue/api/json`. Jenkins does not export the label a queued item waits for
  (Queue.Item#getAssignedLabel has no @Exported), so it is read from the item's `why`, which
  core builds from the label (hudson.model.Queue.BuildableItem#getCauseOfBlockage, messages
  Queue.WaitingForNextAvailableExecutorOn, Queue.AllNodesOffline, Queue.LabelHasNoNodes,
  Queue.NodeOffline): "Waiting for next available executor on 'L'", "All nodes of label 'L'
  are offline", "There are no nodes with the label 'L'", and, when L has exactly one node N,
  the same sentences naming N instead of L (Jenkins quotes with U+2018 and U+2019 since 2.125,
  not at all before). Requests ask for English (`Accept-Language: en`).
  Two cases name no useful label: a Jenkins with no agent node at all says only "Waiting for
  next available executor", and one whose only node of L is someone else's names that node.
  So the pool keeps one node of its own that carries the label and never connects, its *label
  node* `<namespace>.<pool>.label`: L always has a node of the pool, and every item waiting
  for L names L or a node of the pool.
- A runner: `POST /computer/doCreateItem` creates a permanent node (`hudson.slaves.DumbSlave`:
  one executor, mode EXCLUSIVE, the pool's label, an inbound launcher over WebSocket, retention
  Always), then its secret is the first `<argument>` of `GET /computer/<name>/jenkins-agent.jnlp`
  (`slave-agent.jnlp` before Jenkins 2.264). The VM gets JENKINS_URL, JENKINS_AGENT_NAME and
  JENKINS_SECRET and runs agent.jar with them.
- One build per node: once a node is seen busy it is marked temporarily offline
  (`POST /computer/<name>/changeOfflineCause`), so Jenkins gives it no other build; its build
  goes on. Removing a node marks it offline first, then deletes it only if it is idle: Jenkins
  itself would delete a busy node (`doDelete` does not refuse).
"""

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from shoal.ci.runners.provider import (
    CiRunner,
    PoolIdentity,
    ProviderError,
    QueuedJob,
    Registration,
    credential,
)

TIMEOUT = 10.0
DUMB_SLAVE = "hudson.slaves.DumbSlave"
JNLP_LAUNCHER = "hudson.slaves.JNLPLauncher"
ALWAYS = "hudson.slaves.RetentionStrategy$Always"
# The node's remote root, relative to the directory agent.jar runs in (the default command
# starts it in $HOME): the VM's user may not write to any absolute path we could name.
REMOTE_FS = "jenkins-agent"
JNLP_FILES = ("jenkins-agent.jnlp", "slave-agent.jnlp")
DONE = (200, 201, 204, 302, 303)  # Jenkins answers a form POST with a redirect
DEFAULT_COMMAND = """\
set -eu
cd "${HOME:-/tmp}"
mkdir -p jenkins-agent
jar="${JENKINS_URL%/}/jnlpJars/agent.jar"
if command -v curl >/dev/null 2>&1; then
    curl -fsS -o jenkins-agent/agent.jar "$jar"
else
    wget -q -O jenkins-agent/agent.jar "$jar"
fi
(umask 077 && printf '%s\\n' "$JENKINS_SECRET" >jenkins-agent/secret)
exec java ${JAVA_OPTS:-} -jar jenkins-agent/agent.jar -url "$JENKINS_URL" \\
    -name "$JENKINS_AGENT_NAME" -secret @jenkins-agent/secret \\
    -webSocket -workDir jenkins-agent -noReconnect
"""

_QUOTED = "\u2018(?P<quoted>.+)\u2019"
_BARE = r"(?P<bare>\S+)"  # Jenkins before 2.125 did not quote
_WHY = [
    re.compile(rf"Waiting for next available executor on (?:{_QUOTED}|{_BARE})"),
    re.compile(rf"All nodes of label (?:{_QUOTED}|{_BARE}) are offline"),
    re.compile(rf"There are no nodes with the label (?:{_QUOTED}|{_BARE})"),
    re.compile(rf"(?:{_QUOTED}|{_BARE}) is offline"),
]
_SECRET = re.compile(r"<application-desc\b[^>]*>\s*<argument>\s*([0-9A-Fa-f]+)\s*</argument>")


def waited_for(why: str | None) -> str | None:
    """The label or node a queued item's `why` says it waits for; None when it names none."""
    for pattern in _WHY:
        match = pattern.fullmatch((why or "").strip())
        if match:
            return match.group("quoted") or match.group("bare")
    return None


def agent_secret(jnlp: str) -> str | None:
    """The agent secret in a node's JNLP file: the first argument of its application-desc."""
    match = _SECRET.search(jnlp)
    return match.group(1) if match else None


def _without_userinfo(url: str) -> str:
    """The URL to show in messages: any user:password@ in it dropped."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _node_path(name: str) -> str:
    return f"/computer/{quote(name, safe='')}"


def _runner(computer: Mapping[str, Any]) -> CiRunner:
    """A node as /computer/api/json lists it: `offline` is temporarily offline or not
    connected (Computer#isOffline), `idle` that no executor runs anything."""
    name = str(computer["displayName"])
    return CiRunner(
        name=name,
        id=name,
        online=not computer.get("offline", True),
        busy=not computer.get("idle", True),
    )


class JenkinsProvider:
    registers_ahead = True
    binds_jobs = False
    default_command = DEFAULT_COMMAND
    # Jenkins gives an idle node the next build of its label: while a node of the pool has not
    # taken its build, the pool looks every second, to mark it offline once it has.
    claim_interval = 1.0

    def __init__(
        self, identity: PoolIdentity, target: Mapping[str, Any], credentials: Mapping[str, bytes]
    ) -> None:
        self.identity = identity
        self.url = str(target["url"]).rstrip("/")
        self.shown_url = _without_userinfo(self.url)
        self.label = str(target["label"])
        self.label_node = f"{identity.namespace}.{identity.pool}.label"
        auth = (credential(credentials, "username"), credential(credentials, "apiToken"))
        self.http = httpx.AsyncClient(auth=auth, timeout=TIMEOUT, headers={"Accept-Language": "en"})

    async def close(self) -> None:
        await self.http.aclose()

    # --- requests ---

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> httpx.Response:
        try:
            answer = await self.http.request(method, self.url + path, params=params, data=data)
        except httpx.HTTPError as error:
            raise ProviderError(
                "Unreachable", f"Jenkins at {self.shown_url}: {type(error).__name__}: {error}"
            ) from None
        if answer.status_code in ok:
            return answer
        raise self._error(answer.status_code, method, path)

    def _error(self, status: int, method: str, path: str) -> ProviderError:
        where = f"Jenkins at {self.shown_url} answered {status} to {method} {path}"
        if status in (401, 403):
            return ProviderError(
                "BadCredentials",
                f"{where}: check username and apiToken (an API token, not a password) and that "
                "the user may create, delete, connect and disconnect agents",
            )
        if status == 404:
            return ProviderError("NotFound", f"{where}: is spec.jenkins.url Jenkins' root URL?")
        if status >= 500:
            return ProviderError("Unreachable", where)
        if status in (301, 302, 303, 307, 308):
            return ProviderError("Invalid", f"{where} (a redirect): use Jenkins' root URL")
        return ProviderError("Invalid", where)

    async def _json(
        self, path: str, tree: str, *, missing_ok: bool = False
    ) -> dict[str, Any] | None:
        """GET path's JSON API, pruned to tree; None for a 404 when missing_ok."""
        answer = await self._send(
            "GET", path, params={"tree": tree}, ok=(200, 404) if missing_ok else (200,)
        )
        if answer.status_code == 404:
            return None
        try:
            body = answer.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ProviderError("Invalid", f"{self.shown_url}{path} is not Jenkins' JSON API")
        return body

    async def _found(self, path: str, tree: str) -> dict[str, Any]:
        return await self._json(path, tree) or {}

    # --- nodes ---

    def _node_json(self, name: str, description: str) -> dict[str, Any]:
        """A permanent node as the "New node" form submits it (ComputerSet#doDoCreateItem)."""
        return {
            "name": name,
            "nodeDescription": description,
            "numExecutors": "1",
            "remoteFS": REMOTE_FS,
            "labelString": self.label,
            "mode": "EXCLUSIVE",
            "type": DUMB_SLAVE,
            "launcher": {
                "stapler-class": JNLP_LAUNCHER,
                "$class": JNLP_LAUNCHER,
                "webSocket": True,
            },
            "retentionStrategy": {"stapler-class": ALWAYS, "$class": ALWAYS},
            "nodeProperties": {"stapler-class-bag": "true"},
        }

    async def _exists(self, name: str) -> bool:
        node = await self._json(_node_path(name) + "/api/json", "displayName", missing_ok=True)
        return node is not None

    async def _create_node(self, name: str, description: str) -> None:
        """Create the node; one that exists already (a retry) is left as it is."""
        form = {
            "name": name,
            "type": DUMB_SLAVE,
            "json": json.dumps(self._node_json(name, description)),
        }
        answer = await self._send("POST", "/computer/doCreateItem", data=form, ok=(*DONE, 400))
        if answer.status_code == 400 and not await self._exists(name):
            raise ProviderError(
                "Invalid", f"Jenkins at {self.shown_url} refused to create node {name} (400)"
            )

    async def _ensure_label_node(self) -> None:
        if not await self._exists(self.label_node):
            pool = f"{self.identity.namespace}/{self.identity.pool}"
            await self._create_node(
                self.label_node,
                f"shoal RunnerPool {pool}: keeps label {self.label} known to the build queue; "
                "never connects, runs nothing",
            )

    async def _secret(self, name: str) -> str:
        for jnlp in JNLP_FILES:
            answer = await self._send("GET", f"{_node_path(name)}/{jnlp}", ok=(200, 404))
            if answer.status_code == 200:
                secret = agent_secret(answer.text)
                if secret is None:
                    break
                return secret
        raise ProviderError(
            "Invalid", f"Jenkins at {self.shown_url} gave no agent secret for node {name}"
        )

    async def _take_offline(self, name: str, why: str) -> bool:
        """Mark the node temporarily offline (idempotent); False when it does not exist."""
        answer = await self._send(
            "POST",
            _node_path(name) + "/changeOfflineCause",
            data={"offlineMessage": why},
            ok=(*DONE, 404),
        )
        return answer.status_code != 404

    # --- Provider ---

    async def queued_jobs(self) -> list[QueuedJob]:
        await self._ensure_label_node()
        queue = await self._found("/queue/api/json", "items[id,why,inQueueSince,task[name]]")
        jobs = [self._queued_job(item) for item in queue.get("items") or []]
        return [job for job in jobs if job is not None]

    def _queued_job(self, item: Mapping[str, Any]) -> QueuedJob | None:
        """The item as a job of the pool, when its why names the pool's label, or a node of the
        pool (Jenkins names the node when it is the label's only one)."""
        waits_for = waited_for(item.get("why"))
        ours = waits_for in (self.label, self.label_node) or (
            waits_for is not None and self.identity.owns(waits_for)
        )
        if not ours or "id" not in item:
            return None
        since = item.get("inQueueSince")
        return QueuedJob(
            id=str(item["id"]),
            labels=frozenset({self.label}),
            queued_at=since / 1000 if isinstance(since, int | float) else None,
        )

    async def runners(self) -> list[CiRunner]:
        """The pool's nodes, and its label node (a runner of no VM, so the pool's plan leaves
        it alone; listed so that a pool being deleted removes it too)."""
        listed = await self._found("/computer/api/json", "computer[displayName,offline,idle]")
        return [
            _runner(computer)
            for computer in listed.get("computer") or []
            if self.identity.owns(str(computer.get("displayName")))
            or computer.get("displayName") == self.label_node
        ]

    async def register(self, name: str, job: QueuedJob | None) -> Registration:
        pool = f"{self.identity.namespace}/{self.identity.pool}"
        await self._create_node(name, f"shoal RunnerPool {pool}: runs one build, then goes")
        return Registration(
            id=name,
            env={
                "JENKINS_URL": self.url + "/",
                "JENKINS_AGENT_NAME": name,
                "JENKINS_SECRET": await self._secret(name),
            },
        )

    async def claimed(self, runner: CiRunner) -> None:
        await self._take_offline(runner.name, "shoal: runs one build, then is removed")

    async def remove(self, runner: CiRunner) -> bool:
        # Offline first, so that no build is given to it between the look and the delete.
        if not await self._take_offline(runner.name, "shoal: being removed"):
            return True
        node = await self._json(_node_path(runner.name) + "/api/json", "idle", missing_ok=True)
        if node is None:
            return True
        if not node.get("idle", False):
            return False  # it ends its build, and takes no other
        await self._send("POST", _node_path(runner.name) + "/doDelete", ok=(*DONE, 404))
        return True

    async def job_active(self, job_id: str) -> bool:
        """Queued, or started and still building. Jenkins keeps an item that left the queue
        (cancelled, or started: `executable`) for 5 minutes, then answers 404: gone."""
        item = await self._json(
            f"/queue/item/{quote(job_id, safe='')}/api/json",
            "cancelled,executable[building]",
            missing_ok=True,
        )
        if item is None:
            return False
        if "cancelled" not in item:  # only an item that left the queue has it
            return True
        executable = item.get("executable")
        if item.get("cancelled") or not isinstance(executable, dict):
            return False
        return bool(executable.get("building", True))


def from_pool(
    identity: PoolIdentity, spec: Mapping[str, Any], credentials: Mapping[str, bytes]
) -> JenkinsProvider:
    return JenkinsProvider(identity, spec["jenkins"], credentials)
