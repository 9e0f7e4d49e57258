"""A github RunnerPool against a stand-in for GitHub (tests/fakes/github.py), with a real
controller and a real agent on sim nodes whose guests run the startup script as local processes
(--sim-guest-shell): the runner in each VM is tests/fakes/github_runner.sh, which takes its job
from the fake with the JIT config the pool gave it. Only GitHub is fake."""

import hashlib
import hmac
import json
import random
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fakes.github import RUNNER_SCRIPT, FakeGitHub
from fakes.serving import Served, serve
from helpers import (
    AgentProcess,
    ControllerProcess,
    create_join_token,
    metric_samples,
    processes,
    wait_until,
)
from runnerpool_helpers import (
    create_access_secret,
    create_credentials,
    diagnose,
    github_pool,
    kill_processes_working_under,
    peak_vms,
    pool_secrets,
    pool_vms,
)
from shoal.client import Client
from shoal.errors import ApiError

pytestmark = pytest.mark.skipif(
    not Path("/usr/bin/wget").exists(), reason="the stand-in runner needs wget (make deps)"
)


@dataclass
class Cluster:
    controller: ControllerProcess
    agent: AgentProcess
    github: FakeGitHub
    served: Served

    @property
    def client(self) -> Client:
        return self.controller.client()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    github = FakeGitHub()
    with serve(github.app) as served:
        github.runner_url = served.url
        controller = ControllerProcess(tmp_path / "controller")
        controller.data_dir.mkdir()
        controller.start()
        token = create_join_token(controller.client())
        agent = AgentProcess(
            controller.url, token, "sim", tmp_path / "agent", replicas=2,
            extra_args=["--sim-guest-shell", "--sim-vms", "4", "--sim-boot-delay", "0.3"],
        )  # fmt: skip
        try:
            with processes(agent, controller):
                agent.start()
                client = controller.client()
                wait_until(lambda: len(client.list("nodes")["items"]) == 2, what="two sim nodes")
                create_access_secret(client)
                create_credentials(
                    client, {"token": github.token, "webhookSecret": github.webhook_secret}
                )
                yield Cluster(controller, agent, github, served)
        finally:  # runners a killed agent left in its sim guests
            kill_processes_working_under(tmp_path / "agent")


def cluster_diagnosis(cluster: Cluster, pool: str) -> str:
    github = cluster.github
    log = cluster.controller.log_path
    return diagnose(
        cluster.client,
        pool,
        f"jobs: {[(j.id, j.status, j.runner_name) for j in github.jobs.values()]}",
        f"runners: {github.runner_names()}",
        log.read_text()[-3000:] if log else "",
    )


def settle(cluster: Cluster, pool: str, timeout: float = 90) -> None:
    client = cluster.client
    wait_until(
        lambda: (
            not pool_vms(client, pool)
            and not cluster.github.runner_names()
            and not pool_secrets(client, pool)
        ),
        timeout=timeout,
        what="no VM, runner or runner Secret left",
    )


def test_github_pool_gives_each_job_its_own_vm_and_leaves_nothing_fake(cluster: Cluster) -> None:
    client, github = cluster.client, cluster.github
    command = RUNNER_SCRIPT.read_text()
    client.create(
        "runnerpools",
        github_pool("gh", cluster.served.url, image="example.com/runner:1", max_runners=3,
                    command=command, env={"FAKE_JOB_SECONDS": "2"}),
        "default",
    )  # fmt: skip
    stop, seen = peak_vms(client, "gh")
    jobs = github.queue(["self-hosted", "shoal"], count=5)
    other = github.queue(["windows"], count=1)  # no pool serves it: never taken
    try:
        wait_until(lambda: len(github.completed()) == 5, timeout=120, what="five jobs done")
        settle(cluster, "gh")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{cluster_diagnosis(cluster, 'gh')}") from None
    finally:
        stop.set()
    assert max(seen) == 3  # at maxRunners, never beyond
    ran = {name: ids for name, ids in github.history.items() if ids}
    assert sorted(i for ids in ran.values() for i in ids) == sorted(jobs)
    assert all(len(ids) == 1 for ids in ran.values())  # one job per runner, so per VM
    assert github.jobs[other[0]].status == "queued"
    github.queue(["self-hosted", "gpu"], count=1)  # a label no pool serves: the pool says so
    wait_until(
        lambda: (
            "1 queued job asks for labels this pool's runners lack: [self-hosted, gpu]"
            in (client.get("runnerpools", "gh", "default").get("status") or {}).get("message", "")
        ),
        timeout=30,
        what="the pool to name the unserved job",
    )
    pool = client.get("runnerpools", "gh", "default")
    status = pool["status"]
    assert status["jobsWaiting"] == 0
    assert status["runners"] == {"starting": 0, "idle": 0, "busy": 0, "finishing": 0}
    synced = next(c for c in status["conditions"] if c["type"] == "Synced")
    assert synced["status"] == "True"
    reasons = [
        e["reason"]
        for e in client.list("events", "default")["items"]
        if e["involvedObject"]["name"] == "gh"
    ]
    assert "RunnerStarted" in reasons
    metrics = httpx.get(
        f"{cluster.controller.url}/metrics",
        headers={"Authorization": f"Bearer {cluster.controller.admin_token}"},
        verify=ssl.create_default_context(
            cafile=str(cluster.controller.data_dir / "tls" / "ca.crt")
        ),
    ).text
    samples = metric_samples(metrics)
    pool = {("namespace", "default"), ("pool", "gh")}
    assert ("shoal_runnerpool_job_wait_seconds_count", frozenset(pool)) in samples
    assert samples[("shoal_runnerpool_runners", frozenset({*pool, ("state", "busy")}))] == 0


def test_github_pool_webhooks_wake_it_and_bad_ones_are_refused_fake(cluster: Cluster) -> None:
    client, github = cluster.client, cluster.github
    client.create(
        "runnerpools",
        github_pool("hooked", cluster.served.url, image="example.com/runner:1", max_runners=2,
                    command=RUNNER_SCRIPT.read_text(), sync=3600),
        "default",
    )  # fmt: skip
    url = (
        f"{cluster.controller.url}/apis/shoal.dev/v1/namespaces/default/runnerpools/hooked/webhook"
    )
    ca = cluster.controller.data_dir / "tls" / "ca.crt"
    body = b'{"action": "queued", "workflow_job": {"id": 1}}'
    forged = httpx.post(url, content=body, verify=ssl.create_default_context(cafile=str(ca)),
                        headers={"X-GitHub-Event": "workflow_job",
                                 "X-Hub-Signature-256": "sha256=" + "0" * 64})  # fmt: skip
    assert forged.status_code == 401, forged.text
    assert "X-Hub-Signature-256" in forged.json()["message"]
    github.webhook_url = url
    # The first sync ran at creation (nothing queued); with an hour between syncs only a
    # webhook delivery can start the runner now. httpx in the fake does not trust our CA:
    # deliver through a client that does.
    github.queue(["shoal"], count=1)
    _, payload = github.deliveries[-1]
    raw = json.dumps(payload).encode()
    signature = hmac.new(github.webhook_secret, raw, hashlib.sha256).hexdigest()
    headers = {"X-GitHub-Event": "workflow_job", "X-Hub-Signature-256": f"sha256={signature}"}
    for _ in range(3):  # repeated deliveries change nothing twice
        answer = httpx.post(
            url, content=raw, headers=headers, verify=ssl.create_default_context(cafile=str(ca))
        )
        assert answer.status_code == 202, answer.text
    wait_until(lambda: len(github.completed()) == 1, timeout=60, what="the job to run")
    assert len([n for n, ids in github.history.items() if ids]) == 1


def test_controller_killed_while_twenty_jobs_flow_runs_each_once_fake(
    cluster: Cluster,
) -> None:
    client, github = cluster.client, cluster.github
    client.create(
        "runnerpools",
        github_pool("chaos", cluster.served.url, image="example.com/runner:1", max_runners=5,
                    command=RUNNER_SCRIPT.read_text(), env={"FAKE_JOB_SECONDS": "1"}, sync=5),
        "default",
    )  # fmt: skip
    jobs = github.queue(["shoal"], count=20)
    rng = random.Random(7)
    kills = 0
    deadline = time.monotonic() + 240
    while len(github.completed()) < 20 and time.monotonic() < deadline:
        time.sleep(rng.uniform(1.0, 5.0))
        if kills < 4:
            cluster.controller.kill()
            kills += 1
            cluster.controller.start()
    wait_until(lambda: len(github.completed()) == 20, timeout=180, what="twenty jobs done")
    settle(cluster, "chaos", timeout=180)
    ran = [job_id for ids in github.history.values() for job_id in ids]
    assert sorted(ran) == sorted(jobs)  # every job ran, none twice
    assert kills == 4


def condition(client: Client, pool: str, type_: str) -> dict[str, str]:
    conditions = (client.get("runnerpools", pool, "default").get("status") or {}).get(
        "conditions"
    ) or []
    return next((c for c in conditions if c["type"] == type_), {})


def test_pool_conditions_say_what_is_wrong_and_bad_pools_are_refused_fake(
    cluster: Cluster,
) -> None:
    client, github = cluster.client, cluster.github
    command = RUNNER_SCRIPT.read_text()
    # Refused at admission, naming the field.
    with pytest.raises(ApiError) as refused:
        client.create("runnerpools", github_pool("x" * 53, cluster.served.url,
                      image="example.com/runner:1", max_runners=1, command=command), "default")  # fmt: skip
    assert refused.value.code == 422 and "metadata.name" in str(refused.value)
    missing = github_pool("nosecret", cluster.served.url, image="example.com/r:1", max_runners=1,
                          command=command)  # fmt: skip
    missing["spec"]["credentialsRef"]["name"] = "no-such-secret"
    with pytest.raises(ApiError) as refused:
        client.create("runnerpools", missing, "default")
    assert refused.value.code == 422 and "spec.credentialsRef.name" in str(refused.value)
    crossed = github_pool("crossed", cluster.served.url, image="example.com/r:1", max_runners=1,
                          command=command)  # fmt: skip
    crossed["spec"]["jenkins"] = {"url": "http://jenkins.example", "label": "x"}
    with pytest.raises(ApiError) as refused:
        client.create("runnerpools", crossed, "default")
    assert refused.value.code == 422 and "spec.jenkins" in str(refused.value)
    assert [p["metadata"]["name"] for p in client.list("runnerpools", "default")["items"]] == []

    # Wrong credentials: the condition says so, and the pool backs off instead of looping.
    create_credentials(client, {"token": "ghp_wrong"}, name="wrong")
    bad = github_pool("badcreds", cluster.served.url, image="example.com/r:1", max_runners=1,
                      command=command)  # fmt: skip
    bad["spec"]["credentialsRef"]["name"] = "wrong"
    client.create("runnerpools", bad, "default")
    wait_until(lambda: condition(client, "badcreds", "Synced").get("reason") == "BadCredentials",
               what="Synced=False BadCredentials")  # fmt: skip
    assert "401" in condition(client, "badcreds", "Synced")["message"]
    assert "ghp_wrong" not in str(client.get("runnerpools", "badcreds", "default"))

    # An unreachable CI system.
    down = github_pool("down", "http://127.0.0.1:9", image="example.com/r:1", max_runners=1,
                       command=command)  # fmt: skip
    client.create("runnerpools", down, "default")
    wait_until(lambda: condition(client, "down", "Synced").get("reason") == "Unreachable",
               what="Synced=False Unreachable")  # fmt: skip

    # A template no node can hold: the pool says why its jobs wait, in the VM admission's words.
    huge = github_pool("huge", cluster.served.url, image="example.com/r:1", max_runners=2,
                       command=command, cpu=64)  # fmt: skip
    client.create("runnerpools", huge, "default")
    github.queue(["shoal"], count=1)
    wait_until(lambda: condition(client, "huge", "Synced").get("reason") == "TemplateInvalid",
               what="Synced=False TemplateInvalid")  # fmt: skip
    assert "spec.cpu" in condition(client, "huge", "Synced")["message"]
    assert pool_vms(client, "huge") == [] and github.runner_names() == []  # nothing half-made
    events = [e["reason"] for e in client.list("events", "default")["items"]
              if e["involvedObject"]["name"] == "badcreds"]  # fmt: skip
    assert "BadCredentials" in events

    # Deleting the pools: their finalizer goes once nothing of theirs is left. Credentials
    # that will never work cannot clean up later either: that pool goes (with a Warning). An
    # unreachable CI system may still hold the pool's runners: that pool waits, until someone
    # who knows better removes its finalizer.
    for name in ("badcreds", "down", "huge"):
        client.delete("runnerpools", name, "default")
    wait_until(lambda: [p["metadata"]["name"] for p in client.list("runnerpools", "default")["items"]]
               == ["down"], timeout=60, what="the pools but the unreachable one to go")  # fmt: skip
    client.patch("runnerpools", "down", {"metadata": {"finalizers": []}}, "default")
    wait_until(lambda: client.list("runnerpools", "default")["items"] == [],
               timeout=30, what="the last pool to go")  # fmt: skip
