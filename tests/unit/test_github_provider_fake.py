"""The GitHub provider against the GitHub stand-in (tests/fakes/github.py) on loopback: demand
as GitHub matches labels, JIT registration, token and GitHub App auth, removal of busy runners,
error answers, and the webhook signature check."""

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Iterator

import httpx
import pytest

from fakes.github import FakeGitHub
from fakes.serving import Served, serve
from shoal.ci.runners.github import GitHubProvider, from_pool, signature_matches
from shoal.ci.runners.provider import PoolIdentity, ProviderError

POOL = PoolIdentity("team-a", "gh")


@pytest.fixture
def github() -> Iterator[tuple[FakeGitHub, Served]]:
    fake = FakeGitHub(repositories=["acme/app", "acme/lib"])
    with serve(fake.app) as served:
        fake.runner_url = served.url
        yield fake, served


def provider(served: Served, credentials: dict[str, bytes], **target: object) -> GitHubProvider:
    spec = {"github": {"apiURL": served.url, "organization": "acme", "labels": ["shoal", "Linux"],
                       **target}}  # fmt: skip
    return from_pool(POOL, spec, credentials)


def test_demand_is_the_queued_jobs_whose_labels_are_all_on_the_runners_fake(
    github: tuple[FakeGitHub, Served],
) -> None:
    fake, served = github
    taken = fake.queue(["self-hosted", "SHOAL"], count=2)  # labels match case-insensitively
    taken += fake.queue(["linux"], repository="acme/lib")
    fake.queue(["shoal", "gpu"])  # gpu is not on the pool's runners
    fake.queue([])  # asks for nothing self-hosted: GitHub's hosted runners take it

    async def go() -> list[str]:
        gh = provider(served, {"token": fake.token.encode()})
        try:
            return sorted(job.id for job in await gh.queued_jobs())
        finally:
            await gh.close()

    assert asyncio.run(go()) == sorted(str(i) for i in taken)


def test_register_list_and_remove_runners_fake(github: tuple[FakeGitHub, Served]) -> None:
    fake, served = github
    fake.queue(["shoal"])

    async def go() -> None:
        gh = provider(served, {"token": fake.token.encode()}, runnerGroup="shoal")
        try:
            name = POOL.runner_name("gh-abcde12345")
            registration = await gh.register(name, None)
            config = json.loads(
                base64.b64decode(registration.env["ACTIONS_RUNNER_INPUT_JITCONFIG"])
            )
            runner = fake.runners[config["runner_id"]]
            assert runner.group_id == 2 and runner.labels == ["self-hosted", "shoal", "Linux"]
            (listed,) = await gh.runners()
            assert (listed.name, listed.online, listed.busy) == (name, False, False)
            # Another pool's runner and a hand-made one are not this pool's.
            await from_pool(PoolIdentity("team-b", "gh"), {"github": {"apiURL": served.url,
                            "organization": "acme", "labels": ["x"]}},
                            {"token": fake.token.encode()}).register("team-b.gh-abcde12345", None)  # fmt: skip
            assert [r.name for r in await gh.runners()] == [name]
            # The runner connects and takes the job: busy, GitHub keeps it.
            headers = {"Authorization": f"RunnerSecret {config['secret']}"}
            async with httpx.AsyncClient(base_url=served.url, headers=headers) as runner_side:
                await runner_side.post(f"/_runner/{config['runner_id']}/connect")
                assert (await runner_side.post(f"/_runner/{config['runner_id']}/acquire")).text
            (busy,) = await gh.runners()
            assert busy.busy and busy.online
            assert await gh.remove(busy) is False
            assert config["runner_id"] in fake.runners
        finally:
            await gh.close()

    asyncio.run(go())


def test_github_app_auth_buys_an_installation_token_fake(
    github: tuple[FakeGitHub, Served],
) -> None:
    fake, served = github
    fake.queue(["shoal"])
    credentials = {
        "appId": fake.app_id.encode(),
        "installationId": fake.installation_id.encode(),
        "privateKey": fake.app_private_key_pem(),
    }

    async def go() -> int:
        gh = provider(served, credentials)
        try:
            first = len(await gh.queued_jobs())
            await gh.queued_jobs()  # the token is reused while it is fresh
            return first
        finally:
            await gh.close()

    assert asyncio.run(go()) == 1
    assert len(fake.installation_tokens) == 1


def test_errors_say_what_is_wrong_and_never_the_token_fake(
    github: tuple[FakeGitHub, Served],
) -> None:
    fake, served = github

    async def fails(gh: GitHubProvider) -> ProviderError:
        try:
            with pytest.raises(ProviderError) as caught:
                await gh.queued_jobs()
            return caught.value
        finally:
            await gh.close()

    bad = asyncio.run(fails(provider(served, {"token": b"ghp_not-the-token"})))
    assert bad.reason == "BadCredentials" and "ghp_not-the-token" not in bad.message
    nowhere = asyncio.run(
        fails(provider(served, {"token": fake.token.encode()}, organization="nope"))
    )
    assert nowhere.reason == "NotFound"
    fake.down = True
    down = asyncio.run(fails(provider(served, {"token": fake.token.encode()})))
    assert down.reason == "Unreachable"
    with pytest.raises(ProviderError) as missing:
        provider(served, {"appId": b"1", "installationId": b"2"})
    assert missing.value.reason == "Invalid" and "privateKey" in missing.value.message
    closed_port = {"apiURL": "http://127.0.0.1:9", "organization": "acme", "labels": ["x"]}
    unreachable = asyncio.run(fails(from_pool(POOL, {"github": closed_port}, {"token": b"t"})))
    assert unreachable.reason == "Unreachable"


def test_webhook_signatures() -> None:
    secret, body = b"s3cr3t", b'{"action":"queued"}'
    good = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    assert signature_matches(secret, body, good)
    assert not signature_matches(secret, body + b" ", good)
    assert not signature_matches(b"other", body, good)
    assert not signature_matches(secret, body, None)
    assert not signature_matches(secret, body, good.replace("sha256=", "sha1="))
    assert not signature_matches(b"", body, good)
