"""A stand-in for GitHub's Actions REST API and its workflow_job webhooks, written from GitHub's
public REST documentation (API version 2022-11-28): the endpoints and JSON shapes a runner pool
uses, with token and GitHub App auth, pagination (per_page, page) and GitHub's answers to bad
credentials (401), unknown paths (404) and deleting a busy runner (422).

- Org `acme` (configurable) with repositories; workflow runs holding jobs (status queued,
  in_progress, completed; labels from `runs-on`).
- Self-hosted runners: `generate-jitconfig` registers one (offline until it connects) and answers
  an encoded JIT config; runners are ephemeral: after one job GitHub removes them.
- Assignment as GitHub does it: a queued job goes to an online, idle runner that has every label
  the job asks for (case-insensitive), each job to exactly one runner.
- Webhooks: when `webhook_url` is set, each job's queued, in_progress and completed changes are
  delivered as `workflow_job` events signed with X-Hub-Signature-256.

The runner side is this fake's own (the real runner speaks a private broker protocol): a runner
posts to `/_runner/{id}/connect`, `/acquire` and `/complete` with the secret from its JIT config
(`Authorization: RunnerSecret <secret>`). `runner.sh` next to this file does that from a guest.
"""

import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

RUNNER_SCRIPT = Path(__file__).with_name("github_runner.sh")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FakeJob:
    id: int
    run_id: int
    repository: str
    labels: list[str]
    created: float
    status: str = "queued"  # queued, in_progress, completed
    conclusion: str | None = None
    runner_name: str | None = None
    runner_id: int | None = None


@dataclass
class FakeRunner:
    id: int
    name: str
    labels: list[str]
    group_id: int
    scope: str  # "org:acme" or "repo:acme/app"
    secret: str
    status: str = "offline"
    busy: bool = False
    job_id: int | None = None
    registered: float = field(default_factory=time.time)
    online_since: float | None = None


@dataclass
class FakeGitHub:
    org: str = "acme"
    repositories: list[str] = field(default_factory=lambda: ["acme/app"])
    token: str = field(default_factory=lambda: "ghp_" + secrets.token_hex(16))
    app_id: str = "1234"
    installation_id: str = "5678"
    app_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    runner_url: str = ""  # the URL runners reach this fake at (set once served)
    webhook_url: str = ""
    webhook_secret: bytes = field(default_factory=lambda: secrets.token_hex(16).encode())
    groups: dict[int, str] = field(default_factory=lambda: {1: "Default", 2: "shoal"})
    jobs: dict[int, FakeJob] = field(default_factory=dict)
    runners: dict[int, FakeRunner] = field(default_factory=dict)
    # Every runner that ever registered: name -> the jobs it ran.
    history: dict[str, list[int]] = field(default_factory=dict)
    installation_tokens: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    down: bool = False  # answer 503 to everything, as an outage would

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self._ids = itertools.count(1000)
        self.app = Starlette(routes=self._routes())
        self.deliveries: list[tuple[str, dict[str, Any]]] = []

    # --- the test's side ---

    def queue(self, labels: list[str], count: int = 1, repository: str = "") -> list[int]:
        """A workflow run with count jobs that run on labels; their ids."""
        with self.lock:
            run_id = next(self._ids)
            made = []
            for _ in range(count):
                job = FakeJob(
                    next(self._ids), run_id, repository or self.repositories[0], labels, time.time()
                )
                self.jobs[job.id] = job
                made.append(job)
        for job in made:
            self._deliver("queued", job)
        return [job.id for job in made]

    def cancel(self, job_id: int) -> None:
        with self.lock:
            job = self.jobs[job_id]
            job.status, job.conclusion = "completed", "cancelled"
            runner = self.runners.get(job.runner_id or -1)
            if runner is not None:
                runner.busy, runner.job_id = False, None
        self._deliver("completed", job)

    def completed(self) -> list[FakeJob]:
        with self.lock:
            return [j for j in self.jobs.values() if j.conclusion == "success"]

    def runner_names(self) -> list[str]:
        with self.lock:
            return [r.name for r in self.runners.values()]

    def app_private_key_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.app_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    # --- webhooks ---

    def _deliver(self, action: str, job: FakeJob) -> None:
        if not self.webhook_url:
            return
        owner, name = job.repository.split("/")
        payload = {
            "action": action,
            "workflow_job": self._job_json(job),
            "repository": {"full_name": job.repository, "name": name, "owner": {"login": owner}},
            "organization": {"login": self.org},
        }
        self.deliveries.append((action, payload))
        body = json.dumps(payload).encode()
        signature = hmac.new(self.webhook_secret, body, hashlib.sha256).hexdigest()
        headers = {
            "X-GitHub-Event": "workflow_job",
            "X-GitHub-Delivery": secrets.token_hex(16),
            "X-Hub-Signature-256": f"sha256={signature}",
            "Content-Type": "application/json",
        }
        url = self.webhook_url
        threading.Thread(target=_post_quietly, args=(url, body, headers), daemon=True).start()

    # --- API ---

    def _routes(self) -> list[Route]:
        scope_paths = ("/orgs/{org}", "/repos/{owner}/{repo}")
        routes = [
            Route("/orgs/{org}/repos", self._repos),
            Route("/repos/{owner}/{repo}/actions/runs", self._runs),
            Route("/repos/{owner}/{repo}/actions/runs/{run_id:int}/jobs", self._run_jobs),
            Route("/repos/{owner}/{repo}/actions/jobs/{job_id:int}", self._job),
            Route("/orgs/{org}/actions/runner-groups", self._runner_groups),
            Route(
                "/app/installations/{installation}/access_tokens",
                self._access_token,
                methods=["POST"],
            ),
            Route("/_runner/{runner_id:int}/{verb}", self._runner_side, methods=["POST"]),
        ]
        for prefix in scope_paths:
            routes += [
                Route(
                    prefix + "/actions/runners/generate-jitconfig",
                    self._jitconfig,
                    methods=["POST"],
                ),
                Route(prefix + "/actions/runners", self._list_runners),
                Route(
                    prefix + "/actions/runners/{runner_id:int}",
                    self._runner,
                    methods=["GET", "DELETE"],
                ),
            ]
        return routes

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ").removeprefix("token ").strip()
        if token == self.token:
            return True
        expires = self.installation_tokens.get(token)
        return expires is not None and expires > time.time()

    def _check(self, request: Request) -> Response | None:
        with self.lock:
            self.requests += 1
        if self.down:
            return JSONResponse({"message": "Service Unavailable"}, status_code=503)
        if not self._authorized(request):
            return _message(401, "Bad credentials")
        return None

    def _scope(self, request: Request) -> tuple[str, Response | None]:
        params = request.path_params
        if "org" in params:
            if params["org"] != self.org:
                return "", _message(404, "Not Found")
            return f"org:{self.org}", None
        full = f"{params['owner']}/{params['repo']}"
        if full not in self.repositories:
            return "", _message(404, "Not Found")
        return f"repo:{full}", None

    async def _repos(self, request: Request) -> Response:
        if (refused := self._check(request)) is not None:
            return refused
        if request.path_params["org"] != self.org:
            return _message(404, "Not Found")
        repos = [
            {"id": i, "name": r.split("/")[1], "full_name": r, "archived": False}
            for i, r in enumerate(self.repositories)
        ]
        return JSONResponse(_page(request, repos))

    async def _runs(self, request: Request) -> Response:
        if (refused := self._check(request)) is not None:
            return refused
        _, missing = self._scope(request)
        if missing is not None:
            return missing
        full = f"{request.path_params['owner']}/{request.path_params['repo']}"
        wanted = request.query_params.get("status")
        with self.lock:
            by_run: dict[int, list[FakeJob]] = {}
            for job in self.jobs.values():
                if job.repository == full:
                    by_run.setdefault(job.run_id, []).append(job)
            runs = [
                {"id": run_id, "status": _run_status(jobs), "repository": {"full_name": full}}
                for run_id, jobs in sorted(by_run.items())
            ]
        if wanted:
            runs = [run for run in runs if run["status"] == wanted]
        page = _page(request, runs)
        return JSONResponse({"total_count": len(runs), "workflow_runs": page})

    async def _run_jobs(self, request: Request) -> Response:
        if (refused := self._check(request)) is not None:
            return refused
        run_id = request.path_params["run_id"]
        with self.lock:
            jobs = [self._job_json(j) for j in self.jobs.values() if j.run_id == run_id]
        return JSONResponse({"total_count": len(jobs), "jobs": _page(request, jobs)})

    async def _job(self, request: Request) -> Response:
        if (refused := self._check(request)) is not None:
            return refused
        with self.lock:
            job = self.jobs.get(request.path_params["job_id"])
            if job is None:
                return _message(404, "Not Found")
            return JSONResponse(self._job_json(job))

    def _job_json(self, job: FakeJob) -> dict[str, Any]:
        return {
            "id": job.id,
            "run_id": job.run_id,
            "status": job.status,
            "conclusion": job.conclusion,
            "labels": job.labels,
            "runner_id": job.runner_id,
            "runner_name": job.runner_name,
            "created_at": _iso(job.created),
        }

    async def _runner_groups(self, request: Request) -> Response:
        if (refused := self._check(request)) is not None:
            return refused
        groups = [{"id": i, "name": n, "default": i == 1} for i, n in self.groups.items()]
        return JSONResponse({"total_count": len(groups), "runner_groups": _page(request, groups)})

    async def _access_token(self, request: Request) -> Response:
        """A GitHub App's installation token, for a JWT signed with the App's key."""
        if request.path_params["installation"] != self.installation_id:
            return _message(404, "Not Found")
        header = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not self._jwt_valid(header):
            return _message(401, "A JSON web token could not be decoded")
        token = "ghs_" + secrets.token_hex(16)
        expires = time.time() + 3600
        self.installation_tokens[token] = expires
        return JSONResponse({"token": token, "expires_at": _iso(expires)}, status_code=201)

    def _jwt_valid(self, jwt: str) -> bool:
        try:
            header, payload, signature = jwt.split(".")
            self.app_key.public_key().verify(
                _unb64(signature),
                f"{header}.{payload}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
            claims = json.loads(_unb64(payload))
        except Exception:
            return False
        now = time.time()
        return bool(
            str(claims.get("iss")) == self.app_id
            and claims.get("iat", now + 1) <= now + 1
            and claims.get("exp", 0) > now
            and claims["exp"] - claims["iat"] <= 600
        )

    async def _jitconfig(self, request: Request) -> Response:
        if (refused := self._check(request)) is not None:
            return refused
        scope, missing = self._scope(request)
        if missing is not None:
            return missing
        body = await request.json()
        name, labels = body.get("name"), body.get("labels")
        group = int(body.get("runner_group_id") or 0)
        if not name or not isinstance(labels, list) or not labels or group not in self.groups:
            return _message(422, "Validation Failed")
        with self.lock:
            if any(r.name == name and r.scope == scope for r in self.runners.values()):
                return _message(409, "Already exists - A runner with the same name exists.")
            runner = FakeRunner(
                next(self._ids), name, ["self-hosted", *labels], group, scope,
                secrets.token_hex(16),
            )  # fmt: skip
            self.runners[runner.id] = runner
            self.history.setdefault(name, [])
        config = {"runner_id": runner.id, "secret": runner.secret, "url": self.runner_url}
        encoded = base64.b64encode(json.dumps(config).encode()).decode()
        return JSONResponse(
            {"runner": self._runner_json(runner), "encoded_jit_config": encoded}, status_code=201
        )

    def _runner_json(self, runner: FakeRunner) -> dict[str, Any]:
        return {
            "id": runner.id,
            "name": runner.name,
            "os": "Linux",
            "status": runner.status,
            "busy": runner.busy,
            "ephemeral": True,
            "runner_group_id": runner.group_id,
            "labels": [{"name": label, "type": "custom"} for label in runner.labels],
        }

    async def _list_runners(self, request: Request) -> Response:
        if (refused := self._check(request)) is not None:
            return refused
        scope, missing = self._scope(request)
        if missing is not None:
            return missing
        with self.lock:
            listed = [self._runner_json(r) for r in self.runners.values() if r.scope == scope]
        return JSONResponse({"total_count": len(listed), "runners": _page(request, listed)})

    async def _runner(self, request: Request) -> Response:
        if (refused := self._check(request)) is not None:
            return refused
        scope, missing = self._scope(request)
        if missing is not None:
            return missing
        with self.lock:
            runner = self.runners.get(request.path_params["runner_id"])
            if runner is None or runner.scope != scope:
                return _message(404, "Not Found")
            if request.method == "GET":
                return JSONResponse(self._runner_json(runner))
            if runner.busy:
                return _message(422, f"Bad request - Runner {runner.name} is still running a job")
            del self.runners[runner.id]
        return Response(status_code=204)

    # --- the runner's side ---

    async def _runner_side(self, request: Request) -> Response:
        if self.down:
            return PlainTextResponse("down", status_code=503)
        verb = request.path_params["verb"]
        # Read before taking the lock: awaiting the body with it held would block this event
        # loop on the next request that wants the lock, and the body would never arrive.
        form = (await request.body()).decode()
        with self.lock:
            runner = self.runners.get(request.path_params["runner_id"])
            secret = request.headers.get("authorization", "").removeprefix("RunnerSecret ")
            if runner is None:
                return PlainTextResponse("runner removed\n", status_code=410)
            if not hmac.compare_digest(secret, runner.secret):
                return PlainTextResponse("bad runner secret\n", status_code=401)
            if verb == "connect":
                runner.status = "online"
                runner.online_since = time.time()
                return PlainTextResponse("connected\n")
            if verb == "acquire":
                job = self._assign(runner)
                return PlainTextResponse(f"{job.id}\n" if job else "")
            if verb == "complete":
                job_id = int(form.partition("=")[2] or 0)
                job = self.jobs.get(job_id)
                if job is None or job.runner_id != runner.id:
                    return PlainTextResponse("not your job\n", status_code=409)
                if job.status != "completed":
                    job.status, job.conclusion = "completed", "success"
                del self.runners[runner.id]  # ephemeral: deregistered after its job
            else:
                return PlainTextResponse("unknown verb\n", status_code=404)
        self._deliver("completed", job)
        return PlainTextResponse("done\n")

    def _assign(self, runner: FakeRunner) -> FakeJob | None:
        """Called with the lock held."""
        if runner.busy or runner.status != "online":
            return None
        have = {label.lower() for label in runner.labels}
        for job in sorted(self.jobs.values(), key=lambda j: j.id):
            if job.status != "queued":
                continue
            if runner.scope.startswith("repo:") and job.repository != runner.scope[5:]:
                continue
            if all(label.lower() in have for label in job.labels):
                job.status, job.runner_name, job.runner_id = "in_progress", runner.name, runner.id
                runner.busy, runner.job_id = True, job.id
                self.history.setdefault(runner.name, []).append(job.id)
                threading.Thread(
                    target=self._deliver, args=("in_progress", job), daemon=True
                ).start()
                return job
        return None


def _run_status(jobs: list[FakeJob]) -> str:
    if all(j.status == "completed" for j in jobs):
        return "completed"
    if all(j.status == "queued" for j in jobs):
        return "queued"
    return "in_progress"


def _page(request: Request, items: list[Any]) -> list[Any]:
    per_page = min(100, int(request.query_params.get("per_page", 30)))
    page = max(1, int(request.query_params.get("page", 1)))
    return items[(page - 1) * per_page : page * per_page]


def _message(code: int, text: str) -> JSONResponse:
    return JSONResponse(
        {"message": text, "documentation_url": "https://docs.github.com/rest"}, status_code=code
    )


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _post_quietly(url: str, body: bytes, headers: dict[str, str]) -> None:
    # GitHub gives up on a failed delivery too; the pool's periodic sync makes up for it.
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(url, content=body, headers=headers, timeout=10)
