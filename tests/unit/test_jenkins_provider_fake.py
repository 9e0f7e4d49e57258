"""The Jenkins provider of runner pools (shoal.ci.runners.jenkins) against tests/fakes/jenkins.py,
a fake Jenkins served on loopback (a real Jenkins does not run here).

Every test that needs the fake has `fake` in its name, so `-k fake` selects them and a run
against a real Jenkins can leave them out. An agent is driven from Python through the fake's
agent endpoints, or by tests/fakes/jenkins_agent.sh under busybox wget, as in a test guest.
"""

import asyncio
import contextlib
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakes.jenkins import FakeJenkins
from fakes.serving import Served, serve
from shoal.ci.runners.jenkins import (
    DEFAULT_COMMAND,
    JenkinsProvider,
    agent_secret,
    from_pool,
    waited_for,
)
from shoal.ci.runners.provider import CiRunner, PoolIdentity, ProviderError

pytestmark = pytest.mark.timeout(60)

USER, TOKEN = "shoal", "11aa22bb33cc44dd55ee66ff77889900aa"
LABEL = "linux-vm"
IDENTITY = PoolIdentity("ci", "linux")
RUNNER = IDENTITY.runner_name("linux-abcdefghij")
LABEL_NODE = "ci.linux.label"
AGENT_SH = Path(__file__).resolve().parents[1] / "fakes" / "jenkins_agent.sh"


@dataclass
class Jenkins:
    fake: FakeJenkins
    served: Served


@pytest.fixture
def jenkins() -> Iterator[Jenkins]:
    fake = FakeJenkins({USER: TOKEN})
    with serve(fake.app) as served:
        yield Jenkins(fake, served)


def pool_spec(url: str) -> dict[str, Any]:
    return {
        "provider": "jenkins",
        "jenkins": {"url": url, "label": LABEL},
        "credentialsRef": {"name": "jenkins"},
        "template": {"image": "ci-linux"},
    }


@contextlib.asynccontextmanager
async def opened(url: str, token: str = TOKEN) -> AsyncIterator[JenkinsProvider]:
    provider = from_pool(
        IDENTITY, pool_spec(url), {"username": USER.encode(), "apiToken": token.encode()}
    )
    try:
        yield provider
    finally:
        await provider.close()


@dataclass
class Agent:
    """agent.jar's side of one node, through the fake's agent endpoints."""

    url: str
    name: str
    secret: str

    def post(self, path: str, **fields: str) -> httpx.Response:
        data = {"name": self.name, "secret": self.secret, **fields}
        return httpx.post(f"{self.url}/_fake/agent{path}", data=data, timeout=5)

    def connect(self) -> None:
        assert self.post("/connect").text.strip() == "connected"

    def poll(self) -> dict[str, str]:
        answer = self.post(f"/{self.name}/poll")
        answer.raise_for_status()
        lines = answer.text.split()
        return dict(line.split("=", 1) for line in lines) if "=" in answer.text else {lines[0]: ""}

    def done(self, build: int) -> None:
        assert self.post(f"/{self.name}/builds/{build}/done").text.strip() == "ok"


async def registered_agent(provider: JenkinsProvider, url: str, name: str = RUNNER) -> Agent:
    registration = await provider.register(name, None)
    return Agent(url, name, registration.env["JENKINS_SECRET"])


async def runner_named(provider: JenkinsProvider, name: str = RUNNER) -> CiRunner:
    (runner,) = [r for r in await provider.runners() if r.name == name]
    return runner


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- reading Jenkins' answers ---


@pytest.mark.parametrize(
    ("why", "named"),
    [
        ("Waiting for next available executor on \u2018linux-vm\u2019", "linux-vm"),
        ("All nodes of label \u2018linux-vm\u2019 are offline", "linux-vm"),
        ("There are no nodes with the label \u2018linux-vm\u2019", "linux-vm"),
        ("\u2018ci.linux-abcdefghij\u2019 is offline", "ci.linux-abcdefghij"),
        ("Waiting for next available executor on linux-vm", "linux-vm"),  # before 2.125
        ("ci.linux-abcdefghij is offline", "ci.linux-abcdefghij"),
        ("Waiting for next available executor", None),
        ("In the quiet period. Expires in 4.9 sec", None),
        ("Build #3 is already in progress (ETA: 1 min)", None),
        (None, None),
    ],
)
def test_waited_for_reads_the_label_or_node_of_a_why(why: str | None, named: str | None) -> None:
    assert waited_for(why) == named


def test_agent_secret_is_the_first_argument_of_the_jnlp_file() -> None:
    jnlp = (
        '<jnlp codebase="http://j/computer/a/" spec="1.0+"><information/>'
        '<application-desc main-class="hudson.remoting.jnlp.Main">\n'
        "  <argument>0a1b2c3d4e5f</argument>\n  <argument>a</argument>\n"
        "</application-desc></jnlp>"
    )
    assert agent_secret(jnlp) == "0a1b2c3d4e5f"
    assert agent_secret("<html>Please log in</html>") is None


def test_default_command_is_valid_sh_and_starts_an_inbound_agent() -> None:
    subprocess.run(["sh", "-n", "-c", DEFAULT_COMMAND], check=True)
    for part in ("/jnlpJars/agent.jar", "-url", "-name", "-secret @", "-webSocket", "-workDir"):
        assert part in DEFAULT_COMMAND
    assert '$JENKINS_SECRET"' not in DEFAULT_COMMAND.split("java", 1)[1]  # not in java's argv


# --- the provider against the fake ---


def test_fake_queued_jobs_are_the_builds_waiting_for_the_pool_label(jenkins: Jenkins) -> None:
    fake, url = jenkins.fake, jenkins.served.url
    ours = fake.queue_build(LABEL, "app")
    fake.queue_build("windows", "other")
    queue = httpx.get(f"{url}/queue/api/json", auth=(USER, TOKEN)).json()
    # With no agent node at all, Jenkins names no label: why the pool keeps its label node.
    assert {item["why"] for item in queue["items"]} == {"Waiting for next available executor"}

    async def scenario() -> None:
        async with opened(url) as provider:
            for _ in range(2):
                jobs = await provider.queued_jobs()
                assert [(job.id, job.labels) for job in jobs] == [(str(ours), frozenset({LABEL}))]
                assert jobs[0].queued_at is not None
                assert abs(jobs[0].queued_at - time.time()) < 30
            assert [r.name for r in await provider.runners()] == [LABEL_NODE]

    asyncio.run(scenario())
    (label_node,) = fake.nodes()
    assert label_node["name"] == LABEL_NODE
    assert label_node["labelString"] == LABEL
    assert not label_node["connected"]


def test_fake_register_creates_a_node_and_returns_its_secret(jenkins: Jenkins) -> None:
    fake, url = jenkins.fake, jenkins.served.url

    async def scenario() -> None:
        async with opened(url) as provider:
            registration = await provider.register(RUNNER, None)
            assert registration.id == RUNNER
            assert dict(registration.env) == {
                "JENKINS_URL": url + "/",
                "JENKINS_AGENT_NAME": RUNNER,
                "JENKINS_SECRET": fake.secret_of(RUNNER),
            }
            assert await provider.runners() == [CiRunner(RUNNER, RUNNER, False, False)]
            again = await provider.register(RUNNER, None)  # a retry after a lost answer
            assert again.env == registration.env

    asyncio.run(scenario())
    node = fake.node(RUNNER)
    assert node is not None
    assert (node["labelString"], node["mode"], node["numExecutors"]) == (LABEL, "EXCLUSIVE", 1)
    assert node["webSocket"]
    assert node["remoteFS"] == "jenkins-agent"
    assert fake.count_nodes() == 1


def test_fake_register_reads_the_secret_of_an_older_jenkins() -> None:
    fake = FakeJenkins({USER: TOKEN}, old_jnlp=True)
    with serve(fake.app) as served:

        async def scenario() -> str:
            async with opened(served.url) as provider:
                registration = await provider.register(RUNNER, None)
                return registration.env["JENKINS_SECRET"]

        assert asyncio.run(scenario()) == fake.secret_of(RUNNER)


def test_fake_claimed_node_runs_its_build_and_takes_no_second(jenkins: Jenkins) -> None:
    fake, url = jenkins.fake, jenkins.served.url

    async def scenario() -> None:
        async with opened(url) as provider:
            await provider.queued_jobs()  # the label node
            agent = await registered_agent(provider, url)
            agent.connect()
            assert await runner_named(provider) == CiRunner(RUNNER, RUNNER, True, False)

            first = fake.queue_build(LABEL, "first", seconds=5)
            assert agent.poll()["build"] == str(first)
            assert await provider.queued_jobs() == []
            runner = await runner_named(provider)
            assert runner.busy
            await provider.claimed(runner)
            node = fake.node(RUNNER)
            assert node is not None and node["temporarilyOffline"]
            assert await runner_named(provider) == CiRunner(RUNNER, RUNNER, False, True)
            await provider.claimed(runner)  # idempotent
            assert (fake.node(RUNNER) or {}).get("temporarilyOffline")

            second = fake.queue_build(LABEL, "second")
            jobs = await provider.queued_jobs()
            assert [job.id for job in jobs] == [str(second)]
            agent.done(first)
            assert agent.poll() == {"idle": ""}
            assert fake.build(second)["state"] == "queued"
            assert fake.build(first)["node"] == RUNNER
            assert fake.build(first)["result"] == "SUCCESS"
            assert await runner_named(provider) == CiRunner(RUNNER, RUNNER, False, False)
            assert [job.id for job in await provider.queued_jobs()] == [str(second)]

    asyncio.run(scenario())


def test_fake_remove_refuses_a_busy_node_and_deletes_an_idle_one(jenkins: Jenkins) -> None:
    fake, url = jenkins.fake, jenkins.served.url

    async def scenario() -> None:
        async with opened(url) as provider:
            agent = await registered_agent(provider, url)
            agent.connect()
            build = fake.queue_build(LABEL)
            assert agent.poll()["build"] == str(build)
            runner = await runner_named(provider)
            assert await provider.remove(runner) is False
            node = fake.node(RUNNER)
            assert node is not None
            assert node["temporarilyOffline"]  # it ends its build and takes no other
            assert fake.build(build)["state"] == "running"

            agent.done(build)
            assert await provider.remove(runner) is True
            assert fake.node(RUNNER) is None
            assert agent.post(f"/{RUNNER}/poll").status_code == 404  # the agent exits
            assert await provider.remove(runner) is True  # already gone

            other = IDENTITY.runner_name("linux-0123456789")
            await provider.register(other, None)  # never connected
            assert await provider.remove(await runner_named(provider, other)) is True
            assert fake.count_nodes() == 0

    asyncio.run(scenario())


def test_fake_teardown_removes_the_label_node(jenkins: Jenkins) -> None:
    async def scenario() -> None:
        async with opened(jenkins.served.url) as provider:
            await provider.queued_jobs()
            await provider.register(RUNNER, None)
            for runner in await provider.runners():  # what the reconciler does to a pool
                assert await provider.remove(runner)
            assert await provider.runners() == []

    asyncio.run(scenario())
    assert jenkins.fake.count_nodes() == 0


def test_fake_job_active_follows_the_queue_item(jenkins: Jenkins) -> None:
    fake, url = jenkins.fake, jenkins.served.url

    async def scenario() -> None:
        async with opened(url) as provider:
            cancelled = fake.queue_build(LABEL)
            assert await provider.job_active(str(cancelled))
            assert fake.cancel(cancelled)
            assert not await provider.job_active(str(cancelled))
            assert not await provider.job_active("99999")

            agent = await registered_agent(provider, url)
            agent.connect()
            built = fake.queue_build(LABEL)
            assert agent.poll()["build"] == str(built)
            assert await provider.job_active(str(built))  # running
            agent.done(built)
            assert not await provider.job_active(str(built))

    asyncio.run(scenario())


def test_fake_cancel_through_the_queue_api(jenkins: Jenkins) -> None:
    fake, url = jenkins.fake, jenkins.served.url
    build = fake.queue_build(LABEL)
    answer = httpx.post(f"{url}/queue/cancelItem", params={"id": build}, auth=(USER, TOKEN))
    assert answer.status_code == 204
    assert fake.build(build)["state"] == "cancelled"
    again = httpx.post(f"{url}/queue/cancelItem", params={"id": build}, auth=(USER, TOKEN))
    assert again.status_code == 404


@pytest.mark.parametrize(
    "call",
    [
        lambda p: p.queued_jobs(),
        lambda p: p.runners(),
        lambda p: p.register(RUNNER, None),
        lambda p: p.job_active("100"),
    ],
)
def test_fake_bad_credentials(jenkins: Jenkins, call: Callable[[JenkinsProvider], Any]) -> None:
    async def scenario() -> None:
        async with opened(jenkins.served.url, token="wrong") as provider:
            with pytest.raises(ProviderError) as caught:
                await call(provider)
            assert caught.value.reason == "BadCredentials"
            assert "wrong" not in caught.value.message

    asyncio.run(scenario())
    assert jenkins.fake.count_nodes() == 0


def test_unreachable_jenkins() -> None:
    async def scenario() -> None:
        async with opened(f"http://127.0.0.1:{closed_port()}") as provider:
            with pytest.raises(ProviderError) as caught:
                await provider.queued_jobs()
            assert caught.value.reason == "Unreachable"

    asyncio.run(scenario())


def test_fake_jenkins_answering_503_is_unreachable(jenkins: Jenkins) -> None:
    jenkins.fake.outage = True

    async def scenario() -> None:
        async with opened(jenkins.served.url) as provider:
            with pytest.raises(ProviderError) as caught:
                await provider.runners()
            assert caught.value.reason == "Unreachable"

    asyncio.run(scenario())


def test_fake_url_that_is_not_jenkins_is_not_found(jenkins: Jenkins) -> None:
    async def scenario() -> None:
        async with opened(jenkins.served.url + "/not-jenkins") as provider:
            with pytest.raises(ProviderError) as caught:
                await provider.runners()
            assert caught.value.reason == "NotFound"

    asyncio.run(scenario())


@pytest.mark.parametrize("missing", ["username", "apiToken"])
def test_missing_secret_key_is_invalid(missing: str) -> None:
    credentials = {"username": b"shoal", "apiToken": b"token"}
    del credentials[missing]
    with pytest.raises(ProviderError) as caught:
        from_pool(IDENTITY, pool_spec("https://jenkins.example.com"), credentials)
    assert caught.value.reason == "Invalid"
    assert caught.value.message == f"credentials Secret has no key {missing!r}"


# --- the stand-in agent script, as the pool's runnerCommand runs it in a guest ---


@pytest.fixture
def busybox_path(tmp_path: Path) -> str:
    """PATH with busybox's wget first, as the test guest has it."""
    busybox = subprocess.run(["sh", "-c", "command -v busybox"], capture_output=True, text=True)
    if busybox.returncode != 0:
        pytest.skip("busybox is not installed")
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "wget").symlink_to(busybox.stdout.strip())
    return f"{shim}:{os.environ.get('PATH', '/usr/bin:/bin')}"


async def wait_for(check: Callable[[], Any], what: str, seconds: float = 15.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("shell", [["sh"], ["busybox", "sh"]], ids=["sh", "busybox-sh"])
def test_fake_agent_script_runs_one_build_and_exits_when_its_node_goes(
    jenkins: Jenkins, busybox_path: str, tmp_path: Path, shell: list[str]
) -> None:
    fake, url = jenkins.fake, jenkins.served.url
    log = tmp_path / "agent.log"

    def connected() -> bool:
        node = fake.node(RUNNER)
        return node is not None and bool(node["connected"])

    async def scenario() -> str:
        async with opened(url) as provider:
            registration = await provider.register(RUNNER, None)
            env = {
                **registration.env,
                "JENKINS_URL": "http://jenkins.invalid/",  # what the VM gets; the fake wins
                "FAKE_JENKINS_URL": url,
                "PATH": busybox_path,
            }
            with log.open("w") as output:
                script = subprocess.Popen(
                    [*shell, str(AGENT_SH)], env=env, stdout=output, stderr=subprocess.STDOUT
                )
            try:
                await wait_for(connected, "the agent to connect")
                first = fake.queue_build(LABEL, "first", seconds=2)
                runner = await wait_for(lambda: _busy(provider), "the build to start")
                await provider.claimed(runner)
                second = fake.queue_build(LABEL, "second")
                await wait_for(lambda: fake.build(first)["state"] == "done", "the build to end")
                assert fake.build(second)["state"] == "queued"
                assert await provider.remove(await runner_named(provider))
                assert await asyncio.to_thread(script.wait, 10) == 0
            finally:
                if script.poll() is None:
                    script.kill()
                    script.wait()
            return registration.env["JENKINS_SECRET"]

    secret = asyncio.run(scenario())
    output = log.read_text()
    assert "running first #1" in output
    assert "first #1 done" in output
    assert "second" not in output
    assert f"node {RUNNER} deleted" in output
    assert secret not in output


async def _busy(provider: JenkinsProvider) -> CiRunner | None:
    runner = await runner_named(provider)
    return runner if runner.busy else None
