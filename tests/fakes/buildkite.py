"""A fake Buildkite, written from Buildkite's public documentation (buildkite.com/docs):

- Agent API metrics (docs/apis/agent-api/metrics): `GET /v3/metrics` with `Authorization: Token
  <agent registration token>` answers `agents` (idle, busy, total, queues), `jobs` (scheduled,
  running, waiting, total, queues) and `organization` (slug). A queue appears when it has
  unfinished jobs or connected agents.
- REST API agents (docs/apis/rest-api/agents), `Authorization: Bearer <API access token>`:
  `GET /v2/organizations/{org}/agents` lists connected agents only (page/per_page, default 30,
  at most 100, a `Link` header with rel="next" and rel="prev"), scope read_agents;
  `GET .../agents/{id}` returns any agent, scope read_agents;
  `PUT .../agents/{id}/stop` with `{"force": bool}` (default true: a running job is canceled)
  answers 204, or 400 `{"message": "Can only stop connected agents"}`, scope write_agents.
  A bad token is a 401, a token without the scope a 403, an unknown organization a 404.

The agent side is not Buildkite's (its agent protocol is internal): test-only endpoints stand in
for what `buildkite-agent start` does, shaped so that a POSIX sh with busybox wget can speak them
(tests/fakes/buildkite_agent.sh). Credentials travel in the POST body (wget takes headers only on
its command line, where `ps` shows them); answers are `key=value` lines.

- `POST /_fake/agent/register` `{"token", "name", "tags": "queue=x,os=linux", "acquire_job"}` →
  `id=...` and `access_token=...`; the agent is connected. A queue tag missing means `default`.
- `POST /_fake/agent/{id}/ping` `{"access_token"}` → `job=<id>` (the job it runs: the one it
  acquires, or the oldest scheduled job of its queue; a job is given to one agent only, once),
  `idle`, or `stop` (it was stopped, its acquired job is gone, or it already ran its one job);
  an agent told to stop is `stopped`.
- `POST /_fake/agent/{id}/jobs/{job}/finish` `{"access_token", "exit_status"}` → `ok`.
- `POST /_fake/agent/{id}/disconnect` `{"access_token"}` → `ok`; the agent is `disconnected`
  (`stopped` when it was told to stop) and no longer listed.

Test-only job endpoints (also Python methods): `POST /_fake/jobs` `{"queue"}` → `{"id"}`,
`POST /_fake/jobs/{id}/cancel`, `GET /_fake/jobs` → `[{"id", "queue", "state", "agent"}]`.
`outage = True` makes every API answer 503.

Agents are one-shot here, as the pool runs them (`--disconnect-after-job`): after its job an
agent gets `stop`.
"""

import json
import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

READ_AGENTS = "read_agents"
WRITE_AGENTS = "write_agents"
RUNNING_STATES = frozenset({"assigned", "accepted", "running"})
UNFINISHED_STATES = RUNNING_STATES | {"scheduled", "waiting"}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


@dataclass
class FakeJob:
    id: str
    queue: str
    state: str = "scheduled"  # scheduled → running → passed/failed, or canceled
    agent_id: str | None = None
    agent_name: str | None = None
    scheduled_at: str = field(default_factory=_now)
    started_at: str | None = None
    finished_at: str | None = None
    exit_status: int | None = None


@dataclass
class FakeAgent:
    id: str
    name: str
    meta_data: list[str]
    queue: str
    access_token: str
    acquire_job: str | None = None
    connection_state: str = "connected"
    job_id: str | None = None
    jobs_run: int = 0
    stop_requested: bool = False
    created_at: str = field(default_factory=_now)
    last_job_finished_at: str | None = None


class BuildkiteFake:
    """A Buildkite organization in memory. `app` is its ASGI app."""

    def __init__(
        self,
        organization: str = "acme",
        agent_token: str = "agent-token-0123456789",
        api_tokens: Mapping[str, frozenset[str]] | None = None,
        max_per_page: int = 100,
    ) -> None:
        self.organization = organization
        self.agent_token = agent_token
        self.api_tokens = dict(
            api_tokens or {"api-token-0123456789": frozenset({READ_AGENTS, WRITE_AGENTS})}
        )
        self.max_per_page = max_per_page
        self.outage = False
        self._lock = threading.Lock()
        self._jobs: dict[str, FakeJob] = {}
        self._agents: dict[str, FakeAgent] = {}
        self.app = Starlette(routes=self._routes())

    # Test-side Python API

    def schedule(self, queue: str) -> str:
        """A new job on queue, scheduled (waiting for an agent); returns its id."""
        job = FakeJob(id=str(uuid.uuid4()), queue=queue)
        with self._lock:
            self._jobs[job.id] = job
        return job.id

    def cancel(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs[job_id]
            if job.state in UNFINISHED_STATES:
                job.state = "canceled"
                job.finished_at = _now()

    def jobs(self) -> list[FakeJob]:
        with self._lock:
            return [FakeJob(**vars(job)) for job in self._jobs.values()]

    def agents(self) -> list[FakeAgent]:
        with self._lock:
            return [FakeAgent(**vars(agent)) for agent in self._agents.values()]

    # Routes

    def _routes(self) -> list[Route]:
        org = "/v2/organizations/{org}/agents"
        return [
            Route("/v3/metrics", self._metrics),
            Route(org, self._list_agents),
            Route(org + "/{id}", self._get_agent),
            Route(org + "/{id}/stop", self._stop_agent, methods=["PUT"]),
            Route("/_fake/jobs", self._fake_jobs, methods=["GET", "POST"]),
            Route("/_fake/jobs/{id}/cancel", self._fake_cancel, methods=["POST"]),
            Route("/_fake/agent/register", self._agent_register, methods=["POST"]),
            Route("/_fake/agent/{id}/ping", self._agent_ping, methods=["POST"]),
            Route("/_fake/agent/{id}/jobs/{job}/finish", self._agent_finish, methods=["POST"]),
            Route("/_fake/agent/{id}/disconnect", self._agent_disconnect, methods=["POST"]),
        ]

    # Agent API: metrics

    async def _metrics(self, request: Request) -> Response:
        if self.outage:
            return _message(503, "Service Unavailable")
        if request.headers.get("authorization") != f"Token {self.agent_token}":
            return _message(401, "Authentication required. Please supply a valid Agent Token")
        with self._lock:
            body = {
                "agents": self._agent_counts(),
                "jobs": self._job_counts(),
                "organization": {"slug": self.organization},
            }
        return JSONResponse(body)

    def _agent_counts(self) -> dict[str, Any]:
        queues: dict[str, dict[str, int]] = {}
        for agent in self._listed_agents():
            counts = queues.setdefault(agent.queue, {"idle": 0, "busy": 0, "total": 0})
            counts["busy" if agent.job_id else "idle"] += 1
            counts["total"] += 1
        return {**_sum(queues, ("idle", "busy", "total")), "queues": queues}

    def _job_counts(self) -> dict[str, Any]:
        queues: dict[str, dict[str, int]] = {}
        for job in self._jobs.values():
            if job.state not in UNFINISHED_STATES:
                continue
            counts = queues.setdefault(
                job.queue, {"scheduled": 0, "running": 0, "waiting": 0, "total": 0}
            )
            counts["running" if job.state in RUNNING_STATES else job.state] += 1
            counts["total"] += 1
        return {**_sum(queues, ("scheduled", "running", "waiting", "total")), "queues": queues}

    # REST API: agents

    def _rest_denied(self, request: Request, scope: str) -> Response | None:
        if self.outage:
            return _message(503, "Service Unavailable")
        header = request.headers.get("authorization", "")
        scopes = (
            self.api_tokens.get(header.removeprefix("Bearer "))
            if header.startswith("Bearer ")
            else None
        )
        if scopes is None:
            return _message(401, "Authentication required. Please supply a valid API Access Token")
        if scope not in scopes:
            return _message(403, f"Your access token is missing the {scope} scope")
        if request.path_params["org"] != self.organization:
            return _message(404, "No organization found")
        return None

    async def _list_agents(self, request: Request) -> Response:
        if denied := self._rest_denied(request, READ_AGENTS):
            return denied
        try:
            page = max(1, int(request.query_params.get("page", "1")))
            per_page = min(
                self.max_per_page, max(1, int(request.query_params.get("per_page", "30")))
            )
        except ValueError:
            return _message(400, "page and per_page must be numbers")
        name = request.query_params.get("name")
        with self._lock:
            listed = [self._agent_json(a) for a in self._listed_agents() if name in (None, a.name)]
        start = (page - 1) * per_page
        links = _links(request, page, per_page, len(listed))
        headers = {"Link": links} if links else {}
        return JSONResponse(listed[start : start + per_page], headers=headers)

    async def _get_agent(self, request: Request) -> Response:
        if denied := self._rest_denied(request, READ_AGENTS):
            return denied
        with self._lock:
            agent = self._agents.get(request.path_params["id"])
            body = self._agent_json(agent) if agent else None
        return JSONResponse(body) if body else _message(404, "No agent found")

    async def _stop_agent(self, request: Request) -> Response:
        if denied := self._rest_denied(request, WRITE_AGENTS):
            return denied
        raw = await request.body()
        try:
            force = bool(json.loads(raw).get("force", True)) if raw else True
        except (ValueError, AttributeError):
            return _message(400, "Body must be a JSON object")
        with self._lock:
            agent = self._agents.get(request.path_params["id"])
            if agent is None:
                return _message(404, "No agent found")
            if agent.connection_state != "connected":
                return _message(400, "Can only stop connected agents")
            agent.stop_requested = True
            agent.connection_state = "stopping"
            job = self._jobs.get(agent.job_id or "")
            if force and job is not None and job.state in UNFINISHED_STATES:
                job.state, job.finished_at = "canceled", _now()
        return Response(status_code=204)

    def _listed_agents(self) -> list[FakeAgent]:
        alive = ("connected", "stopping")
        return [a for a in self._agents.values() if a.connection_state in alive]

    def _agent_json(self, agent: FakeAgent) -> dict[str, Any]:
        job = self._jobs.get(agent.job_id or "")
        base = f"https://api.buildkite.com/v2/organizations/{self.organization}"
        return {
            "id": agent.id,
            "url": f"{base}/agents/{agent.id}",
            "web_url": f"https://buildkite.com/organizations/{self.organization}/agents/{agent.id}",
            "name": agent.name,
            "connection_state": agent.connection_state,
            "hostname": agent.name,
            "ip_address": "10.0.2.15",
            "user_agent": "buildkite-agent/3.0.0 (linux; amd64)",
            "version": "3.0.0",
            "creator": None,
            "created_at": agent.created_at,
            "job": self._job_json(job) if job else None,
            "last_job_finished_at": agent.last_job_finished_at,
            "priority": None,
            "meta_data": list(agent.meta_data),
        }

    def _job_json(self, job: FakeJob) -> dict[str, Any]:
        return {
            "id": job.id,
            "type": "script",
            "name": "fake job",
            "agent_query_rules": [f"queue={job.queue}"],
            "state": job.state,
            "command": "echo fake job",
            "exit_status": job.exit_status,
            "scheduled_at": job.scheduled_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
        }

    # Test-only endpoints: jobs

    async def _fake_jobs(self, request: Request) -> Response:
        if request.method == "POST":
            queue = str((await _json_body(request)).get("queue") or "default")
            return JSONResponse({"id": self.schedule(queue)}, status_code=201)
        rows = [
            {"id": j.id, "queue": j.queue, "state": j.state, "agent": j.agent_name}
            for j in self.jobs()
        ]
        return JSONResponse(rows)

    async def _fake_cancel(self, request: Request) -> Response:
        try:
            self.cancel(request.path_params["id"])
        except KeyError:
            return _message(404, "No job found")
        return PlainTextResponse("ok\n")

    # Test-only endpoints: the agent's side

    async def _agent_register(self, request: Request) -> Response:
        body = await _json_body(request)
        if self.outage:
            return PlainTextResponse("unavailable\n", status_code=503)
        if body.get("token") != self.agent_token:
            return PlainTextResponse("bad registration token\n", status_code=401)
        tags = [t.strip() for t in str(body.get("tags") or "").split(",") if t.strip()]
        queues = [t.partition("=")[2] for t in tags if t.startswith("queue=")]
        agent = FakeAgent(
            id=str(uuid.uuid4()),
            name=str(body.get("name") or "agent"),
            meta_data=tags if queues else [*tags, "queue=default"],
            queue=queues[0] if queues else "default",
            access_token=secrets.token_hex(16),
            acquire_job=str(body.get("acquire_job") or "") or None,
        )
        with self._lock:
            self._agents[agent.id] = agent
        return PlainTextResponse(f"id={agent.id}\naccess_token={agent.access_token}\n")

    async def _agent_ping(self, request: Request) -> Response:
        body = await _json_body(request)
        with self._lock:
            agent, denied = self._calling_agent(request, body)
            if agent is None:
                return denied
            return PlainTextResponse(self._next_for(agent) + "\n")

    def _next_for(self, agent: FakeAgent) -> str:
        """What a ping answers; called with the lock held."""
        if agent.job_id and self._jobs[agent.job_id].state in UNFINISHED_STATES:
            return f"job={agent.job_id}"
        if agent.stop_requested or agent.jobs_run or agent.connection_state != "connected":
            if agent.connection_state in ("connected", "stopping"):
                agent.connection_state = "stopped"
            return "stop"
        job = self._job_for(agent)
        if job is None:
            return "stop" if agent.acquire_job else "idle"
        job.state, job.started_at = "running", _now()
        job.agent_id, job.agent_name = agent.id, agent.name
        agent.job_id = job.id
        agent.jobs_run += 1
        return f"job={job.id}"

    def _job_for(self, agent: FakeAgent) -> FakeJob | None:
        if agent.acquire_job:
            job = self._jobs.get(agent.acquire_job)
            ok = job is not None and job.state == "scheduled" and job.queue == agent.queue
            return job if ok else None
        waiting = [j for j in self._jobs.values() if j.state == "scheduled"]
        return next((j for j in waiting if j.queue == agent.queue), None)

    async def _agent_finish(self, request: Request) -> Response:
        body = await _json_body(request)
        with self._lock:
            agent, denied = self._calling_agent(request, body)
            if agent is None:
                return denied
            job = self._jobs.get(request.path_params["job"])
            if job is None or job.agent_id != agent.id:
                return PlainTextResponse("not your job\n", status_code=422)
            if job.state in UNFINISHED_STATES:
                job.exit_status = int(body.get("exit_status") or 0)
                job.state = "passed" if job.exit_status == 0 else "failed"
                job.finished_at = _now()
            agent.job_id = None
            agent.last_job_finished_at = _now()
        return PlainTextResponse("ok\n")

    async def _agent_disconnect(self, request: Request) -> Response:
        body = await _json_body(request)
        with self._lock:
            agent, denied = self._calling_agent(request, body)
            if agent is None:
                return denied
            stopped = agent.stop_requested or agent.connection_state == "stopped"
            agent.connection_state = "stopped" if stopped else "disconnected"
            job = self._jobs.get(agent.job_id or "")
            if job is not None and job.state in UNFINISHED_STATES:
                job.state, job.finished_at = "failed", _now()  # lost with its agent
            agent.job_id = None
        return PlainTextResponse("ok\n")

    def _calling_agent(
        self, request: Request, body: dict[str, Any]
    ) -> tuple[FakeAgent | None, Response]:
        """The agent a call is from, or None and the answer that refuses it. Called with the
        lock held: the body is read before (no await under a threading lock)."""
        if self.outage:
            return None, PlainTextResponse("unavailable\n", status_code=503)
        agent = self._agents.get(request.path_params["id"])
        if agent is None or body.get("access_token") != agent.access_token:
            return None, PlainTextResponse("unknown agent\n", status_code=401)
        return agent, Response(status_code=200)


def _message(status: int, text: str) -> Response:
    return JSONResponse({"message": text}, status_code=status)


def _sum(queues: dict[str, dict[str, int]], keys: tuple[str, ...]) -> dict[str, int]:
    return {key: sum(counts[key] for counts in queues.values()) for key in keys}


def _links(request: Request, page: int, per_page: int, total: int) -> str:
    """The Link header of one page, as Buildkite's REST API gives it."""
    base = str(request.url.replace(query=""))
    others = {k: v for k, v in request.query_params.items() if k not in ("page", "per_page")}
    last = max(1, -(-total // per_page))

    def link(number: int, rel: str) -> str:
        query = urlencode({**others, "page": number, "per_page": per_page})
        return f'<{base}?{query}>; rel="{rel}"'

    parts = []
    if page < last:
        parts += [link(page + 1, "next"), link(last, "last")]
    if page > 1:
        parts += [link(1, "first"), link(page - 1, "prev")]
    return ", ".join(parts)


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
