"""GitHub Actions: one just-in-time runner per queued job (REST API version 2022-11-28).

- Demand: the queued jobs of queued and in-progress workflow runs, in the pool's repository or
  in every repository of its organization, whose `runs-on` labels are all on the pool's runners
  (compared case-insensitively, as GitHub does; the runners carry `self-hosted` and the pool's
  labels). Webhooks (`workflow_job`) only wake the pool's sync early: this listing is the truth,
  so a lost, repeated or reordered delivery changes nothing.
- A runner: `POST .../actions/runners/generate-jitconfig` registers it in the pool's runner group
  and answers its encoded JIT config, which reaches the VM through a Secret and the runner's
  `ACTIONS_RUNNER_INPUT_JITCONFIG` variable. No registration token ever reaches a VM, and a JIT
  runner is ephemeral: it runs one job and GitHub deregisters it.
- Auth: a token (`token` in the credentials Secret), or a GitHub App (`appId`, `installationId`,
  `privateKey`): a JWT signed with the App's key buys an installation token, renewed before it
  expires.
"""

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from shoal.ci.runners.provider import (
    CiRunner,
    PoolIdentity,
    ProviderError,
    QueuedJob,
    Registration,
    credential,
)

API_VERSION = "2022-11-28"
DEFAULT_LABEL = "self-hosted"
JITCONFIG_ENV = "ACTIONS_RUNNER_INPUT_JITCONFIG"
DEFAULT_COMMAND = 'cd "${ACTIONS_RUNNER_DIR:-$HOME/actions-runner}" && exec ./run.sh\n'
PAGE = 100
TOKEN_RENEW_BEFORE = 300.0  # seconds before an installation token expires


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def app_jwt(app_id: str, private_key_pem: bytes, now: float) -> str:
    """A GitHub App's JWT (RS256): issued a minute back for clock drift, valid 9 minutes."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ProviderError("Invalid", "privateKey: a GitHub App's key is an RSA key in PEM")
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    claims = {"iat": int(now) - 60, "exp": int(now) + 540, "iss": app_id}
    payload = _b64url(json.dumps(claims).encode())
    signed = f"{header}.{payload}".encode()
    signature = key.sign(signed, padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{payload}.{_b64url(signature)}"


class GitHubProvider:
    registers_ahead = True
    binds_jobs = False
    default_command = DEFAULT_COMMAND

    def __init__(
        self, identity: PoolIdentity, target: Mapping[str, Any], credentials: Mapping[str, bytes]
    ) -> None:
        self.identity = identity
        self.api = str(target.get("apiURL") or "https://api.github.com").rstrip("/")
        self.organization: str | None = target.get("organization")
        self.repository: str | None = target.get("repository")
        self.group_name = str(target.get("runnerGroup") or "Default")
        self.labels = [str(label) for label in target["labels"]]
        self.runner_labels = {DEFAULT_LABEL, *(label.lower() for label in self.labels)}
        if "token" in credentials:
            self._static_token: str | None = credential(credentials, "token")
            self._app: tuple[str, str, bytes] | None = None
        else:
            app = (credential(credentials, "appId"), credential(credentials, "installationId"))
            if "privateKey" not in credentials:
                raise ProviderError(
                    "Invalid", "credentials Secret has neither 'token' nor 'privateKey'"
                )
            self._static_token = None
            self._app = (*app, credentials["privateKey"])
        self._token = ""
        self._token_expires = 0.0
        self._group_id: int | None = None
        self._queued: set[str] = set()
        # Queued self-hosted jobs asking for labels this pool's runners lack, at the last sync.
        self.unserved: list[list[str]] = []
        self.http = httpx.AsyncClient(timeout=15.0)

    @property
    def scope(self) -> str:
        if self.repository:
            return f"{self.api}/repos/{self.repository}"
        return f"{self.api}/orgs/{quote(str(self.organization), safe='')}"

    async def close(self) -> None:
        await self.http.aclose()

    # --- requests ---

    async def _auth(self) -> str:
        if self._static_token is not None:
            return self._static_token
        assert self._app is not None
        if time.time() < self._token_expires - TOKEN_RENEW_BEFORE:
            return self._token
        app_id, installation, key = self._app
        jwt = app_jwt(app_id, key, time.time())
        answer = await self._send(
            "POST", f"{self.api}/app/installations/{installation}/access_tokens", bearer=jwt
        )
        body = answer.json()
        self._token = str(body["token"])
        expires = str(body.get("expires_at") or "")
        self._token_expires = _epoch(expires) if expires else time.time() + 3600
        return self._token

    async def _send(
        self,
        method: str,
        url: str,
        *,
        bearer: str | None = None,
        body: Any = None,
        ok: tuple[int, ...] = (200, 201, 204),
    ) -> httpx.Response:
        token = bearer if bearer is not None else await self._auth()
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
        }
        try:
            answer = await self.http.request(method, url, headers=headers, json=body)
        except httpx.HTTPError as error:
            raise ProviderError(
                "Unreachable", f"GitHub at {self.api}: {type(error).__name__}: {error}"
            ) from None
        if answer.status_code in ok:
            return answer
        raise _error(answer, method, url)

    async def _pages(self, url: str, key: str | None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            separator = "&" if "?" in url else "?"
            answer = await self._send("GET", f"{url}{separator}per_page={PAGE}&page={page}")
            body = answer.json()
            batch = body if key is None else body.get(key) or []
            items += batch
            if len(batch) < PAGE:
                return items
            page += 1

    # --- Provider ---

    async def queued_jobs(self) -> list[QueuedJob]:
        jobs: list[QueuedJob] = []
        unserved: list[list[str]] = []
        for repository in await self._repositories():
            runs = []
            for status in ("queued", "in_progress"):
                runs += await self._pages(
                    f"{self.api}/repos/{repository}/actions/runs?status={status}",
                    "workflow_runs",
                )
            for run in runs:
                for job in await self._pages(
                    f"{self.api}/repos/{repository}/actions/runs/{run['id']}/jobs", "jobs"
                ):
                    if job.get("status") != "queued":
                        continue
                    labels = [str(label) for label in job.get("labels") or []]
                    if not self.takes(labels):
                        if DEFAULT_LABEL in (label.lower() for label in labels):
                            unserved.append(labels)
                        continue
                    queued_at = _epoch(job["created_at"]) if job.get("created_at") else None
                    jobs.append(QueuedJob(str(job["id"]), frozenset(labels), queued_at))
        self._queued = {job.id for job in jobs}
        self.unserved = unserved
        return jobs

    def takes(self, labels: list[str]) -> bool:
        """GitHub's rule: a runner takes a job when every label the job asks for is on it."""
        return bool(labels) and all(label.lower() in self.runner_labels for label in labels)

    async def _repositories(self) -> list[str]:
        if self.repository:
            return [self.repository]
        repos = await self._pages(self.scope + "/repos", None)
        return [str(repo["full_name"]) for repo in repos if not repo.get("archived")]

    async def runners(self) -> list[CiRunner]:
        listed = await self._pages(self.scope + "/actions/runners", "runners")
        return [
            CiRunner(
                name=str(r["name"]),
                id=str(r["id"]),
                online=r.get("status") == "online",
                busy=bool(r.get("busy")),
            )
            for r in listed
            if self.identity.owns(str(r.get("name", "")))
        ]

    async def _runner_group(self) -> int:
        if self._group_id is not None:
            return self._group_id
        if self.repository:  # a repository's runners are in its Default group
            self._group_id = 1
            return 1
        groups = await self._pages(self.scope + "/actions/runner-groups", "runner_groups")
        for group in groups:
            if group.get("name") == self.group_name:
                self._group_id = int(group["id"])
                return self._group_id
        raise ProviderError(
            "NotFound", f"runner group {self.group_name!r} not found in {self.organization}"
        )

    async def register(self, name: str, job: QueuedJob | None) -> Registration:
        body = {
            "name": name,
            "runner_group_id": await self._runner_group(),
            "labels": self.labels,
            "work_folder": "_work",
        }
        answer = await self._send(
            "POST", self.scope + "/actions/runners/generate-jitconfig", body=body
        )
        created = answer.json()
        return Registration(
            id=str(created["runner"]["id"]),
            env={JITCONFIG_ENV: str(created["encoded_jit_config"])},
        )

    async def remove(self, runner: CiRunner) -> bool:
        url = f"{self.scope}/actions/runners/{runner.id}"
        answer = await self._send("DELETE", url, ok=(204, 404, 422))
        return answer.status_code != 422  # 422: it runs a job, GitHub keeps it

    async def claimed(self, runner: CiRunner) -> None:
        """A JIT runner takes one job only."""

    async def job_active(self, job_id: str) -> bool:
        return job_id in self._queued


def _epoch(timestamp: str) -> float:
    """GitHub's times (2024-01-02T03:04:05Z), with or without fractions of a second."""
    try:
        return datetime.fromisoformat(timestamp).timestamp()
    except ValueError:
        return time.time()


def _error(answer: httpx.Response, method: str, url: str) -> ProviderError:
    try:
        said = str(answer.json().get("message") or "")
    except ValueError:
        said = answer.text[:200]
    where = f"GitHub answered {answer.status_code} to {method} {url}"
    if answer.status_code == 401:
        return ProviderError("BadCredentials", f"{where}: {said or 'bad credentials'}")
    if answer.status_code == 403:
        if answer.headers.get("x-ratelimit-remaining") == "0":
            return ProviderError("RateLimited", f"{where}: rate limit reached")
        return ProviderError(
            "BadCredentials", f"{where}: {said} (the credentials may not manage runners here)"
        )
    if answer.status_code == 404:
        return ProviderError(
            "NotFound", f"{where}: not found, or the credentials cannot see it ({said})"
        )
    if answer.status_code >= 500:
        return ProviderError("Unreachable", f"{where}: {said}")
    return ProviderError("Invalid", f"{where}: {said}")


def from_pool(
    identity: PoolIdentity, spec: Mapping[str, Any], credentials: Mapping[str, bytes]
) -> GitHubProvider:
    return GitHubProvider(identity, spec["github"], credentials)


def signature_matches(secret: bytes, body: bytes, header: str | None) -> bool:
    """GitHub's X-Hub-Signature-256: `sha256=` and the hex HMAC-SHA256 of the body."""
    if not secret or not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header.removeprefix("sha256="))
