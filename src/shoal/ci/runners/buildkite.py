"""Buildkite: a RunnerPool with `provider: buildkite` gives every scheduled job of one queue
(`spec.buildkite.queue` of `spec.buildkite.organization`) a fresh VM that runs one
`buildkite-agent start --disconnect-after-job`: the agent takes one job of the queue, runs it and
exits, and the VM goes with it.

Why demand is counted and jobs are not bound (binds_jobs False):

- The Agent API's metrics endpoint (`GET {agentAPIURL}/v3/metrics`, the agent registration token
  as `Authorization: Token ...`) is the documented way for a scaler to see demand: the number of
  `scheduled` jobs per queue (jobs waiting for an agent; `waiting` ones still wait on earlier
  steps). It gives counts, not job ids.
- Binding (`--acquire-job <id>`) needs every scheduled job's id, which the REST API gives only
  build by build (read_builds, a scan of all running builds each sync) and GraphQL only with a
  further token scope; and an acquired job that another agent of the queue took first leaves
  the VM with nothing to do. Agents of one queue are interchangeable in Buildkite's own
  dispatch, so an agent per scheduled job is what counts need: whichever agent is idle gets the
  next job, a job that is cancelled or taken by another agent simply lowers the count.
  (Buildkite's Stacks API, `{agentAPIURL}/v3/stacks/...` with the agent token, lists a queue's
  scheduled jobs with ids, reserves them, reports their states and issues one-job acquisition
  tokens: the way to bind jobs, at the price of registering a stack per pool.)
- The pool's reconciler covers unbound jobs one each with starting or idle runners and removes
  the surplus, so it needs only the number of jobs: queued_jobs() returns one QueuedJob per
  scheduled job with ids `<queue>#<k>`, k < the count. They are stable while the count holds
  and name no particular job.

A pool agent is known on the CI side only once it runs (registers_ahead False): register()
creates nothing at Buildkite and gives the VM the agent's environment (BUILDKITE_AGENT_TOKEN,
_NAME, _TAGS `queue=<queue>`, _ENDPOINT, _DISCONNECT_AFTER_JOB), which buildkite-agent reads
itself, so no token is ever on a command line. runners() lists the organization's connected
agents through the REST API (an API access token with read_agents) and keeps the pool's by name;
remove() stops an idle one (write_agents) with `force: false`, so a job it took meanwhile is
never cancelled.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from shoal.ci.runners.provider import (
    CiRunner,
    PoolIdentity,
    ProviderError,
    QueuedJob,
    Registration,
    credential,
)

TIMEOUT_SECONDS = 10.0
PER_PAGE = 100
MAX_PAGES = 100  # 10,000 agents: past that, something loops
FINISHED_JOB_STATES = frozenset(
    {"passed", "failed", "finished", "canceled", "timed_out", "skipped", "broken", "expired"}
)


@dataclass(frozen=True)
class Target:
    organization: str
    queue: str
    api_url: str  # REST API, no trailing slash
    agent_api_url: str  # Agent API, no trailing slash


def from_pool(
    identity: PoolIdentity, spec: Mapping[str, Any], credentials: Mapping[str, bytes]
) -> "BuildkiteProvider":
    """The provider of a pool: spec is the pool's spec, credentials its Secret's data."""
    section = spec.get("buildkite") or {}
    if not section.get("organization"):
        raise ProviderError("Invalid", "spec.buildkite.organization is not set")
    target = Target(
        organization=str(section["organization"]),
        queue=str(section.get("queue") or "default"),
        api_url=str(section.get("apiURL") or "https://api.buildkite.com").rstrip("/"),
        agent_api_url=str(section.get("agentAPIURL") or "https://agent.buildkite.com").rstrip("/"),
    )
    agent_token = credential(credentials, "agentToken")
    api_token = credential(credentials, "apiToken")
    return BuildkiteProvider(identity, target, agent_token, api_token)


def _synthetic_index(job_id: str, queue: str) -> int | None:
    """k of a `<queue>#<k>` id of this queue; None for any other id."""
    prefix, hash_sign, index = job_id.rpartition("#")
    if hash_sign and prefix == queue and index.isdigit():
        return int(index)
    return None


def _current_job(agent: Mapping[str, Any]) -> str | None:
    """The id of the job an agent of the REST API runs, if it runs one."""
    job = agent.get("job")
    if not isinstance(job, dict) or job.get("finished_at"):
        return None
    if job.get("state") in FINISHED_JOB_STATES:
        return None
    return str(job["id"]) if job.get("id") else None


def _object(value: Any) -> dict[str, Any]:
    """value when it is a JSON object, else an empty one (a field missing or of another type)."""
    return value if isinstance(value, dict) else {}


def _runner(agent: Mapping[str, Any]) -> CiRunner:
    job_id = _current_job(agent)
    return CiRunner(
        name=str(agent["name"]),
        id=str(agent["id"]),
        online=agent.get("connection_state") == "connected",
        busy=job_id is not None,
        job_id=job_id,
    )


class BuildkiteProvider:
    registers_ahead = False
    binds_jobs = False
    default_command = "buildkite-agent start --disconnect-after-job"

    def __init__(
        self, identity: PoolIdentity, target: Target, agent_token: str, api_token: str
    ) -> None:
        self.identity = identity
        self.target = target
        self._agent_token = agent_token
        self._api_token = api_token
        self._client = httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False)

    # Provider

    async def queued_jobs(self) -> list[QueuedJob]:
        count = await self._scheduled()
        label = frozenset({f"queue={self.target.queue}"})
        return [QueuedJob(id=f"{self.target.queue}#{k}", labels=label) for k in range(count)]

    async def runners(self) -> list[CiRunner]:
        agents = await self._agents()
        return [_runner(a) for a in agents if self.identity.owns(str(a.get("name", "")))]

    async def register(self, name: str, job: QueuedJob | None) -> Registration:
        """The agent's environment; nothing is created at Buildkite (job is always None: any
        agent of the queue takes any of its jobs)."""
        env = {
            "BUILDKITE_AGENT_TOKEN": self._agent_token,
            "BUILDKITE_AGENT_NAME": name,
            "BUILDKITE_AGENT_TAGS": f"queue={self.target.queue}",
            "BUILDKITE_AGENT_ENDPOINT": f"{self.target.agent_api_url}/v3",
            "BUILDKITE_AGENT_DISCONNECT_AFTER_JOB": "true",
        }
        return Registration(id=name, env=env)

    async def claimed(self, runner: CiRunner) -> None:
        """Nothing: the agent disconnects after its one job."""

    async def remove(self, runner: CiRunner) -> bool:
        """Stop the agent with force false. A busy one is left to finish its job (False); so is
        one that took a job between the listing and the stop, which the agent read back after
        the stop shows (a stopping agent takes no new job)."""
        if runner.busy:
            return False
        url = self._agent_url(runner.id) + "/stop"
        response = await self._send("PUT", url, self._rest_headers(), json={"force": False})
        if response.status_code not in (400, 404):  # 400: no longer connected; 404: gone
            self._raise_for(response, f"stopping agent {runner.name}")
        return not await self._agent_busy(runner.id)

    async def job_active(self, job_id: str) -> bool:
        """A `<queue>#<k>` id: whether the queue still has more than k scheduled jobs. A job id
        of Buildkite's (a runner's job_id): whether an agent of the pool still runs it."""
        index = _synthetic_index(job_id, self.target.queue)
        if index is not None:
            return await self._scheduled() > index
        return any(runner.job_id == job_id for runner in await self.runners())

    async def close(self) -> None:
        await self._client.aclose()

    # Agent API

    async def _scheduled(self) -> int:
        url = f"{self.target.agent_api_url}/v3/metrics"
        headers = {"Authorization": f"Token {self._agent_token}"}
        response = await self._send("GET", url, headers)
        self._raise_for(response, "reading Buildkite's agent metrics", f"no agent metrics at {url}")
        body = self._json(response, url)
        if not isinstance(body, dict):
            raise ProviderError("Invalid", f"unexpected answer from {url}: not an object")
        slug = _object(body.get("organization")).get("slug")
        if slug is not None and slug != self.target.organization:
            raise ProviderError(
                "BadCredentials",
                f"the agentToken belongs to Buildkite organization {slug!r}, "
                f"not {self.target.organization!r}",
            )
        queues = _object(_object(body.get("jobs")).get("queues"))
        scheduled = _object(queues.get(self.target.queue)).get("scheduled", 0)
        if not isinstance(scheduled, int) or isinstance(scheduled, bool) or scheduled < 0:
            raise ProviderError("Invalid", f"unexpected answer from {url}: scheduled={scheduled!r}")
        return scheduled

    # REST API

    def _agent_url(self, agent_id: str = "") -> str:
        base = f"{self.target.api_url}/v2/organizations/{self.target.organization}/agents"
        return f"{base}/{agent_id}" if agent_id else base

    def _rest_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_token}"}

    async def _agents(self) -> list[dict[str, Any]]:
        """Every connected agent of the organization, page by page (Link rel="next")."""
        agents: list[dict[str, Any]] = []
        url: str | None = f"{self._agent_url()}?per_page={PER_PAGE}"
        for _ in range(MAX_PAGES):
            if url is None:
                return agents
            response = await self._send("GET", url, self._rest_headers())
            self._raise_for(response, f"listing the agents of {self.target.organization}")
            page = self._json(response, url)
            if not isinstance(page, list):
                raise ProviderError("Invalid", f"unexpected answer from {url}: not a list")
            agents += [agent for agent in page if isinstance(agent, dict) and "id" in agent]
            url = self._next_page(response)
        raise ProviderError("Invalid", f"more than {MAX_PAGES} pages of agents")

    def _next_page(self, response: httpx.Response) -> str | None:
        """The next page's URL; only on the API's own host, where the token may go."""
        url = response.links.get("next", {}).get("url")
        if url is None:
            return None
        own, given = urlsplit(self.target.api_url), urlsplit(url)
        if (given.scheme, given.netloc) != (own.scheme, own.netloc):
            raise ProviderError("Invalid", f"the agents list points to another host: {url}")
        return url

    async def _agent_busy(self, agent_id: str) -> bool:
        response = await self._send("GET", self._agent_url(agent_id), self._rest_headers())
        if response.status_code == 404:
            return False
        self._raise_for(response, f"reading agent {agent_id}")
        agent = _object(self._json(response, self._agent_url(agent_id)))
        return _current_job(agent) is not None

    # HTTP

    async def _send(
        self, method: str, url: str, headers: Mapping[str, str], json: Any = None
    ) -> httpx.Response:
        try:
            return await self._client.request(method, url, headers=headers, json=json)
        except httpx.HTTPError as error:
            raise ProviderError(
                "Unreachable", f"{method} {url}: {type(error).__name__} {self._scrub(str(error))}"
            ) from None

    def _raise_for(self, response: httpx.Response, what: str, missing: str = "") -> None:
        """ProviderError for an error answer; missing says what a 404 means (default: the
        organization)."""
        status = response.status_code
        if status < 400:
            return
        said = self._scrub(_message(response))
        text = f"{what}: Buildkite answered {status}" + (f" ({said})" if said else "")
        if status in (401, 403):
            raise ProviderError("BadCredentials", text)
        if status == 404:
            org = self.target.organization
            raise ProviderError(
                "NotFound", f"{text}: {missing or f'no organization {org!r} the token can see'}"
            )
        if status == 429 or status >= 500:
            raise ProviderError("Unreachable", text)
        raise ProviderError("Invalid", text)

    def _json(self, response: httpx.Response, url: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ProviderError("Invalid", f"unexpected answer from {url}: not JSON") from None

    def _scrub(self, text: str) -> str:
        """text without either token, should a server or library ever echo one."""
        for token in (self._agent_token, self._api_token):
            text = text.replace(token, "***")
        return text[:300]


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("message", "")) if isinstance(body, dict) else ""
