"""The Buildkite provider against tests/fakes/buildkite.py, a fake Buildkite written from its
public documentation and served on loopback; and tests/fakes/buildkite_agent.sh, the stand-in
for `buildkite-agent start --disconnect-after-job`, run with busybox where it is installed.

Every test name contains `fake`, so `-k fake` selects them.
"""

import asyncio
import shutil
import subprocess
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakes.buildkite import READ_AGENTS, BuildkiteFake
from fakes.serving import Served, serve
from shoal.ci.runners.buildkite import BuildkiteProvider, from_pool
from shoal.ci.runners.provider import CiRunner, PoolIdentity, Provider, ProviderError

pytestmark = pytest.mark.timeout(120)

AGENT_SCRIPT = Path(__file__).resolve().parents[1] / "fakes" / "buildkite_agent.sh"
IDENTITY = PoolIdentity("ci", "bk")
QUEUE = "shoal"


def runner_name(suffix: str) -> str:
    """The CI-side name of the pool's runner in VM bk-<suffix> (10 characters)."""
    return IDENTITY.runner_name(f"bk-{suffix}")


@dataclass
class Setup:
    fake: BuildkiteFake
    served: Served

    def spec(self, **buildkite: Any) -> dict[str, Any]:
        target = {
            "organization": self.fake.organization,
            "queue": QUEUE,
            "apiURL": self.served.url,
            "agentAPIURL": self.served.url,
            **buildkite,
        }
        return {"provider": "buildkite", "buildkite": target}

    def credentials(self, **overrides: bytes) -> dict[str, bytes]:
        api_token = next(iter(self.fake.api_tokens))
        base = {"agentToken": self.fake.agent_token.encode(), "apiToken": api_token.encode()}
        return {**base, **overrides}

    def provider(self, **buildkite: Any) -> BuildkiteProvider:
        return from_pool(IDENTITY, self.spec(**buildkite), self.credentials())


@pytest.fixture
def setup() -> Iterator[Setup]:
    fake = BuildkiteFake()
    with serve(fake.app) as served:
        yield Setup(fake, served)


def run(setup: Setup, scenario: Callable[[BuildkiteProvider], Awaitable[None]]) -> None:
    """Run scenario with a provider of the pool, closed afterwards."""

    async def main() -> None:
        provider = setup.provider()
        try:
            await scenario(provider)
        finally:
            await provider.close()

    asyncio.run(main())


class Agent:
    """An agent driven through the fake's agent endpoints, as buildkite-agent would be."""

    def __init__(self, setup: Setup, name: str, tags: str = f"queue={QUEUE}") -> None:
        self.url = setup.served.url
        body = {"token": setup.fake.agent_token, "name": name, "tags": tags}
        answer = self._lines(httpx.post(f"{self.url}/_fake/agent/register", json=body))
        self.id, self.access_token = answer["id"], answer["access_token"]

    def ping(self) -> str:
        return self._post("ping").text.strip()

    def finish(self, job_id: str) -> None:
        self._post(f"jobs/{job_id}/finish", exit_status=0)

    def disconnect(self) -> None:
        self._post("disconnect")

    def _post(self, path: str, **extra: Any) -> httpx.Response:
        body = {"access_token": self.access_token, **extra}
        response = httpx.post(f"{self.url}/_fake/agent/{self.id}/{path}", json=body)
        response.raise_for_status()
        return response

    @staticmethod
    def _lines(response: httpx.Response) -> dict[str, str]:
        response.raise_for_status()
        return dict(line.split("=", 1) for line in response.text.splitlines() if "=" in line)


async def only_runner(provider: BuildkiteProvider) -> CiRunner:
    runners = await provider.runners()
    assert len(runners) == 1, runners
    return runners[0]


# Demand


def test_fake_queued_jobs_are_the_pool_queue_scheduled_jobs(setup: Setup) -> None:
    setup.fake.schedule(QUEUE)
    setup.fake.schedule(QUEUE)
    setup.fake.schedule("other")
    setup.fake.schedule("default")

    async def scenario(provider: BuildkiteProvider) -> None:
        jobs = await provider.queued_jobs()
        assert [job.id for job in jobs] == [f"{QUEUE}#0", f"{QUEUE}#1"]
        assert all(job.labels == {f"queue={QUEUE}"} for job in jobs)
        assert await provider.queued_jobs() == jobs  # the same ids while the count holds
        assert await provider.job_active(f"{QUEUE}#1")
        assert not await provider.job_active(f"{QUEUE}#2")

    run(setup, scenario)


def test_fake_cancelled_job_is_no_longer_demand(setup: Setup) -> None:
    first = setup.fake.schedule(QUEUE)
    setup.fake.schedule(QUEUE)

    async def scenario(provider: BuildkiteProvider) -> None:
        assert len(await provider.queued_jobs()) == 2
        setup.fake.cancel(first)
        assert [job.id for job in await provider.queued_jobs()] == [f"{QUEUE}#0"]
        assert not await provider.job_active(f"{QUEUE}#1")

    run(setup, scenario)


def test_fake_queue_without_jobs_is_no_demand(setup: Setup) -> None:
    async def scenario(provider: BuildkiteProvider) -> None:
        assert await provider.queued_jobs() == []

    run(setup, scenario)


# Runners


def test_fake_runners_are_only_this_pool_agents(setup: Setup) -> None:
    ours = runner_name("abcdefghij")
    Agent(setup, ours)
    for other in (
        "other.bk-abcdefghij",  # the same pool name in another namespace
        "ci.bk2-abcdefghij",  # another pool
        "ci.bk-short",
        "laptop",
    ):
        Agent(setup, other)
    gone = Agent(setup, runner_name("klmnopqrst"))
    gone.disconnect()

    async def scenario(provider: BuildkiteProvider) -> None:
        runner = await only_runner(provider)
        agent_id = next(a.id for a in setup.fake.agents() if a.name == ours)
        assert runner == CiRunner(name=ours, id=agent_id, online=True, busy=False, job_id=None)

    run(setup, scenario)


def test_fake_runners_follow_the_link_header_across_pages(setup: Setup) -> None:
    setup.fake.max_per_page = 2
    names = {runner_name(f"agent{k:05d}") for k in range(5)}
    for name in sorted(names):
        Agent(setup, name)
    Agent(setup, "laptop")

    async def scenario(provider: BuildkiteProvider) -> None:
        assert {runner.name for runner in await provider.runners()} == names

    run(setup, scenario)


def test_fake_agent_takes_exactly_one_job(setup: Setup) -> None:
    first = setup.fake.schedule(QUEUE)
    second = setup.fake.schedule(QUEUE)
    other_queue = setup.fake.schedule("other")
    name = runner_name("abcdefghij")

    async def scenario(provider: BuildkiteProvider) -> None:
        agent = Agent(setup, name)
        assert agent.ping() == f"job={first}"
        assert agent.ping() == f"job={first}"  # asked again: the same job, no second one
        runner = await only_runner(provider)
        assert (runner.online, runner.busy, runner.job_id) == (True, True, first)
        assert await provider.job_active(first)
        assert [job.id for job in await provider.queued_jobs()] == [f"{QUEUE}#0"]

        agent.finish(first)
        assert agent.ping() == "stop"  # one job per agent
        agent.disconnect()
        assert await provider.runners() == []
        assert not await provider.job_active(first)

        jobs = {job.id: job for job in setup.fake.jobs()}
        assert (jobs[first].state, jobs[first].agent_name) == ("passed", name)
        assert (jobs[second].state, jobs[second].agent_name) == ("scheduled", None)
        assert jobs[other_queue].state == "scheduled"

    run(setup, scenario)


def test_fake_gives_each_job_to_one_agent(setup: Setup) -> None:
    jobs = {setup.fake.schedule(QUEUE) for _ in range(3)}
    agents = [Agent(setup, runner_name(f"racer{k:05d}")) for k in range(6)]
    answers: list[str] = []
    lock = threading.Lock()

    def ping(agent: Agent) -> None:
        answer = agent.ping()
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=ping, args=(agent,)) for agent in agents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    taken = [answer.removeprefix("job=") for answer in answers if answer.startswith("job=")]
    assert sorted(taken) == sorted(jobs)
    assert answers.count("idle") == 3


def test_fake_register_creates_nothing_and_gives_the_agent_environment(setup: Setup) -> None:
    name = runner_name("abcdefghij")

    async def scenario(provider: BuildkiteProvider) -> None:
        assert (provider.registers_ahead, provider.binds_jobs) == (False, False)
        registration = await provider.register(name, None)
        assert registration.id == name
        assert registration.env == {
            "BUILDKITE_AGENT_TOKEN": setup.fake.agent_token,
            "BUILDKITE_AGENT_NAME": name,
            "BUILDKITE_AGENT_TAGS": f"queue={QUEUE}",
            "BUILDKITE_AGENT_ENDPOINT": f"{setup.served.url}/v3",
            "BUILDKITE_AGENT_DISCONNECT_AFTER_JOB": "true",
        }
        assert await provider.runners() == []
        assert "TOKEN" not in provider.default_command
        assert setup.fake.agent_token not in provider.default_command

    run(setup, scenario)


def test_fake_provider_is_a_provider(setup: Setup) -> None:
    async def scenario(provider: BuildkiteProvider) -> None:
        typed: Provider = provider
        assert typed.default_command.startswith("buildkite-agent start --disconnect-after-job")
        await typed.claimed(CiRunner(name="x", id="y", online=True, busy=True))

    run(setup, scenario)


# Remove


def test_fake_remove_stops_an_idle_agent(setup: Setup) -> None:
    agent = Agent(setup, runner_name("abcdefghij"))

    async def scenario(provider: BuildkiteProvider) -> None:
        runner = await only_runner(provider)
        assert await provider.remove(runner)
        assert agent.ping() == "stop"
        agent.disconnect()
        assert await provider.runners() == []
        assert await provider.remove(runner)  # already gone counts as removed
        unknown = CiRunner(
            name=runner.name, id="00000000-0000-0000-0000-000000000000", online=True, busy=False
        )
        assert await provider.remove(unknown)

    run(setup, scenario)


def test_fake_remove_leaves_a_busy_agent_to_its_job(setup: Setup) -> None:
    job = setup.fake.schedule(QUEUE)
    agent = Agent(setup, runner_name("abcdefghij"))

    async def scenario(provider: BuildkiteProvider) -> None:
        idle = await only_runner(provider)
        assert agent.ping() == f"job={job}"  # it took the job after the listing
        assert not await provider.remove(idle)
        assert agent.ping() == f"job={job}"  # still runs it: the stop was not forced
        busy = await only_runner(provider)
        assert busy.busy
        assert not await provider.remove(busy)
        agent.finish(job)
        assert agent.ping() == "stop"
        assert {j.id: j.state for j in setup.fake.jobs()} == {job: "passed"}

    run(setup, scenario)


# Errors


def bad(setup: Setup, **credentials: bytes) -> BuildkiteProvider:
    return from_pool(IDENTITY, setup.spec(), setup.credentials(**credentials))


def raises(
    reason: str,
    provider: BuildkiteProvider,
    call: Callable[[BuildkiteProvider], Awaitable[Any]],
    *,
    secrets: tuple[str, ...],
) -> str:
    """The message of the ProviderError that call(provider) raises, which names no secret."""

    async def main() -> None:
        try:
            await call(provider)
        finally:
            await provider.close()

    with pytest.raises(ProviderError) as caught:
        asyncio.run(main())
    error = caught.value
    assert error.reason == reason, error.message
    for secret in secrets:
        assert secret not in error.message and secret not in str(error)
    return error.message


def queued(provider: BuildkiteProvider) -> Awaitable[Any]:
    return provider.queued_jobs()


def runners(provider: BuildkiteProvider) -> Awaitable[Any]:
    return provider.runners()


def test_fake_bad_tokens_are_bad_credentials(setup: Setup) -> None:
    wrong = "wrong-token-9876543210"
    both = bad(setup, agentToken=wrong.encode(), apiToken=wrong.encode())
    raises("BadCredentials", both, queued, secrets=(wrong,))
    api = bad(setup, apiToken=wrong.encode())
    raises("BadCredentials", api, runners, secrets=(wrong, setup.fake.agent_token))


def test_fake_token_without_scope_is_bad_credentials(setup: Setup) -> None:
    setup.fake.api_tokens = {"read-only-token": frozenset({READ_AGENTS})}
    Agent(setup, runner_name("abcdefghij"))

    async def remove(provider: BuildkiteProvider) -> None:
        await provider.remove(await only_runner(provider))

    provider = bad(setup, apiToken=b"read-only-token")
    message = raises("BadCredentials", provider, remove, secrets=("read-only-token",))
    assert "403" in message


def test_fake_agent_token_of_another_organization_is_bad_credentials(setup: Setup) -> None:
    provider = setup.provider(organization="elsewhere")
    message = raises("BadCredentials", provider, queued, secrets=(setup.fake.agent_token,))
    assert "'acme'" in message and "'elsewhere'" in message


def test_fake_unknown_organization_is_not_found(setup: Setup) -> None:
    message = raises("NotFound", setup.provider(organization="elsewhere"), runners, secrets=())
    assert "'elsewhere'" in message


def test_fake_unreachable_and_outage_are_unreachable(setup: Setup) -> None:
    setup.fake.outage = True
    raises("Unreachable", setup.provider(), queued, secrets=())
    raises("Unreachable", setup.provider(), runners, secrets=())
    closed = "http://127.0.0.1:9"  # discard: nothing listens
    token = next(iter(setup.fake.api_tokens))
    for call in (queued, runners):
        provider = setup.provider(apiURL=closed, agentAPIURL=closed)
        raises("Unreachable", provider, call, secrets=(setup.fake.agent_token, token))


@pytest.mark.parametrize("key", ["agentToken", "apiToken"])
def test_fake_missing_secret_key_is_invalid(setup: Setup, key: str) -> None:
    credentials = setup.credentials()
    del credentials[key]
    with pytest.raises(ProviderError) as caught:
        from_pool(IDENTITY, setup.spec(), credentials)
    assert (caught.value.reason, caught.value.message) == (
        "Invalid",
        f"credentials Secret has no key {key!r}",
    )


# The agent stand-in script, run with busybox as in the test guest


@pytest.fixture
def busybox_path(tmp_path: Path) -> str:
    """A PATH of busybox applets only, as the test guest has."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for applet in ("sh", "wget", "sed", "mktemp", "sleep", "rm", "cat"):
        (bin_dir / applet).symlink_to(busybox)
    return str(bin_dir)


def start_script(env: Mapping[str, str], path: str, url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [f"{path}/sh", str(AGENT_SCRIPT)],
        env={**env, "PATH": path, "FAKE_BUILDKITE_URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def online_runner(provider: BuildkiteProvider) -> CiRunner:
    for _ in range(100):
        runners = await provider.runners()
        if runners and runners[0].online:
            return runners[0]
        await asyncio.sleep(0.1)
    raise AssertionError("the agent did not come online")


def finish_script(process: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, output


def test_fake_agent_script_takes_one_job_and_exits(setup: Setup, busybox_path: str) -> None:
    name = runner_name("scriptrun1")

    async def scenario(provider: BuildkiteProvider) -> None:
        registration = await provider.register(name, None)
        process = start_script(registration.env, busybox_path, setup.served.url)
        try:
            runner = await online_runner(provider)
            assert (runner.name, runner.busy) == (name, False)
            first = setup.fake.schedule(QUEUE)  # the script asks every second
        finally:
            code, output = finish_script(process)
        assert code == 0, output
        assert f"running job {first}" in output
        second = setup.fake.schedule(QUEUE)
        jobs = {job.id: job for job in setup.fake.jobs()}
        assert (jobs[first].state, jobs[first].agent_name) == ("passed", name)
        assert jobs[second].state == "scheduled"
        assert await provider.runners() == []
        assert setup.fake.agent_token not in output

    run(setup, scenario)


def test_fake_agent_script_exits_when_stopped(setup: Setup, busybox_path: str) -> None:
    name = runner_name("scriptrun2")

    async def scenario(provider: BuildkiteProvider) -> None:
        registration = await provider.register(name, None)
        process = start_script(registration.env, busybox_path, setup.served.url)
        try:
            assert await provider.remove(await online_runner(provider))
        finally:
            code, output = finish_script(process)
        assert code == 0, output
        assert "told to stop" in output
        assert await provider.runners() == []
        assert [agent.connection_state for agent in setup.fake.agents()] == ["stopped"]

    run(setup, scenario)


def test_fake_agent_script_needs_its_environment(busybox_path: str) -> None:
    env = {"BUILDKITE_AGENT_NAME": "x", "FAKE_BUILDKITE_URL": "http://127.0.0.1:9"}
    process = subprocess.run(
        [f"{busybox_path}/sh", str(AGENT_SCRIPT)],
        env={**env, "PATH": busybox_path},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert process.returncode != 0
    assert "BUILDKITE_AGENT_TOKEN" in process.stderr
