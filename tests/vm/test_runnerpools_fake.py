"""Runner pools on real QEMU guests, one per CI system: the controller, the agent, the VMs, the
startup scripts and the runners' traffic from the guests are real; GitHub, Jenkins and Buildkite
are stand-ins (tests/fakes/), served on this machine's loopback, which the guests reach through
their user-mode network. Each guest's runner is the stand-in script for that CI system's runner
program (tests/fakes/*_runner.sh, *_agent.sh), run as the pool's runnerCommand.

For each system: five jobs queued at once on a pool of at most three runners give three VMs,
then two; each job runs in its own VM; then no VM and no runner is left. A GitHub job cancelled
while its VM boots takes the VM with it within 30 s."""

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fakes.buildkite import BuildkiteFake
from fakes.github import RUNNER_SCRIPT, FakeGitHub
from fakes.jenkins import FakeJenkins
from fakes.serving import serve
from helpers import Cli, free_port, wait_until
from qemu_dev import TEST_IMAGE, QemuDev
from runnerpool_helpers import (
    FAKES,
    create_access_secret,
    create_credentials,
    diagnose,
    github_pool,
    peak_vms,
    pool_secrets,
    pool_vms,
)
from shoal.client import Client
from shoal.testguest import TestGuest

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("qemu-system-x86_64", "qemu-img")),
    reason="needs qemu-system-x86_64 and qemu-img (make system-deps)",
)

MAX_RUNNERS = 3
JOBS = 5


@pytest.fixture
def dev(tmp_path: Path, guest_image: TestGuest) -> Iterator[QemuDev]:
    """shoal dev on QEMU with room for three 1-vCPU guests on this 2-core machine."""
    import os

    env = {**os.environ, "SHOAL_CONFIG": str(tmp_path / "config.yaml")}
    backend = ("--backend", "qemu", "--accel", "tcg", "--node-cpu", str(MAX_RUNNERS + 1))
    qemu = QemuDev(tmp_path, Cli(env), free_port(), backend=backend)
    qemu.start()
    try:
        client = qemu.api()
        create_access_secret(client, key=guest_image.private_key.read_bytes(),
                             user=guest_image.ssh_user)  # fmt: skip
        yield qemu
    finally:
        qemu.tear_down()


def run_pool(
    client: Client,
    pool: dict[str, Any],
    queue_jobs: Callable[[], None],
    done: Callable[[], bool],
    runners_left: Callable[[], int],
    log: Path,
) -> int:
    """Create the pool, queue the jobs, wait for them all and for the pool to settle; the peak
    number of VMs."""
    name = pool["metadata"]["name"]
    client.create("runnerpools", pool, "default")
    stop, seen = peak_vms(client, name)
    try:
        queue_jobs()
        wait_until(done, timeout=600, what=f"the {name} pool's jobs")
        wait_until(
            lambda: not pool_vms(client, name) and runners_left() == 0
            and not pool_secrets(client, name),
            timeout=180,
            what=f"the {name} pool to leave nothing behind",
        )  # fmt: skip
    except AssertionError as error:
        detail = diagnose(client, name, f"runners left: {runners_left()}", log.read_text()[-4000:])
        raise AssertionError(f"{error}\n{detail}") from None
    finally:
        stop.set()
    return max(seen)


def template(env: dict[str, str]) -> dict[str, Any]:
    return {
        "image": TEST_IMAGE,
        "cpu": 1,
        "memory": "256Mi",
        "disk": "1Gi",
        "access": {"secretRef": {"name": "guest-key"}},
        "env": [{"name": k, "value": v} for k, v in env.items()],
    }


def github_flow(client: Client, log: Path) -> None:
    github = FakeGitHub()
    with serve(github.app) as served:
        github.runner_url = served.guest_url
        create_credentials(client, {"token": github.token}, name="github")
        pool = github_pool("gh", served.url, image=TEST_IMAGE, max_runners=MAX_RUNNERS,
                           command=RUNNER_SCRIPT.read_text(), env={"FAKE_JOB_SECONDS": "3"})  # fmt: skip
        pool["spec"]["credentialsRef"]["name"] = "github"
        pool["spec"]["template"] = template({"FAKE_JOB_SECONDS": "3"})
        jobs: list[int] = []
        peak = run_pool(
            client, pool,
            lambda: jobs.extend(github.queue(["self-hosted", "shoal"], count=JOBS)),
            lambda: len(github.completed()) == JOBS,
            lambda: len(github.runner_names()),
            log,
        )  # fmt: skip
        assert peak == MAX_RUNNERS
        ran = {name: ids for name, ids in github.history.items() if ids}
        assert sorted(i for ids in ran.values() for i in ids) == sorted(jobs)
        assert all(len(ids) == 1 for ids in ran.values())

        # A job cancelled while its VM boots: the VM goes within 30 s.
        (job,) = github.queue(["shoal"], count=1)
        wait_until(lambda: pool_vms(client, "gh"), timeout=60, what="a VM for the new job")
        github.cancel(job)
        cancelled_at = time.monotonic()
        wait_until(lambda: not pool_vms(client, "gh"), timeout=60, what="the VM to go")
        assert time.monotonic() - cancelled_at < 30
        wait_until(lambda: not github.runner_names(), timeout=60, what="its runner to go")


def jenkins_flow(client: Client, log: Path) -> None:
    jenkins = FakeJenkins()
    ((user, api_token),) = jenkins.users.items()
    with serve(jenkins.app) as served:
        create_credentials(client, {"username": user, "apiToken": api_token}, name="jenkins")
        pool = {
            "metadata": {"name": "jk"},
            "spec": {
                "provider": "jenkins",
                "jenkins": {"url": served.url, "label": "shoal"},
                "credentialsRef": {"name": "jenkins"},
                "template": template({"FAKE_JENKINS_URL": served.guest_url}),
                "maxRunners": MAX_RUNNERS,
                "runnerCommand": (FAKES / "jenkins_agent.sh").read_text(),
                "syncIntervalSeconds": 5,
            },
        }
        queued: list[int] = []

        def finished() -> bool:
            return all(jenkins.build(q)["state"] == "done" for q in queued) and bool(queued)

        peak = run_pool(
            client, pool,
            lambda: queued.extend(jenkins.queue_build("shoal", seconds=6) for _ in range(JOBS)),
            finished,
            lambda: len([n for n in jenkins.nodes() if not n["name"].endswith(".label")]),
            log,
        )  # fmt: skip
        assert peak == MAX_RUNNERS
        nodes = [jenkins.build(q)["node"] for q in queued]
        assert len(set(nodes)) == JOBS  # each build on a node of its own, so a VM of its own
        client.delete("runnerpools", "jk", "default")
        wait_until(lambda: jenkins.count_nodes() == 0, timeout=60, what="the label node to go")


def buildkite_flow(client: Client, log: Path) -> None:
    buildkite = BuildkiteFake()
    ((api_token, _),) = buildkite.api_tokens.items()
    with serve(buildkite.app) as served:
        create_credentials(
            client, {"agentToken": buildkite.agent_token, "apiToken": api_token}, name="buildkite"
        )
        pool = {
            "metadata": {"name": "bk"},
            "spec": {
                "provider": "buildkite",
                "buildkite": {
                    "organization": buildkite.organization,
                    "queue": "shoal",
                    "apiURL": served.url,
                    "agentAPIURL": served.url,
                },
                "credentialsRef": {"name": "buildkite"},
                "template": template({"FAKE_BUILDKITE_URL": served.guest_url}),
                "maxRunners": MAX_RUNNERS,
                "runnerCommand": (FAKES / "buildkite_agent.sh").read_text(),
                "syncIntervalSeconds": 5,
            },
        }
        ids: list[str] = []
        peak = run_pool(
            client, pool,
            lambda: ids.extend(buildkite.schedule("shoal") for _ in range(JOBS)),
            lambda: all(j.state == "passed" for j in buildkite.jobs()) and len(ids) == JOBS,
            lambda: len([a for a in buildkite.agents() if a.connection_state == "connected"]),
            log,
        )  # fmt: skip
        assert peak == MAX_RUNNERS
        agents = [j.agent_name for j in buildkite.jobs()]
        assert len(set(agents)) == JOBS and None not in agents


def test_runner_pools_on_real_guests_fake(dev: QemuDev) -> None:
    client = dev.api()
    for flow in (github_flow, jenkins_flow, buildkite_flow):
        flow(client, dev.log)
    assert pool_vms(client, "gh") == []
