"""`shoal runnerpool` as a user runs it against a real `shoal controller` (TLS): create from
flags and from a file, list (table, wide, JSON), get, scale, delete, bad input as CLI errors."""

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from helpers import SHOAL, Cli, ControllerProcess, processes, wait_until
from runnerpool_helpers import private_key_pem


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    base = tmp_path_factory.mktemp("cli-runnerpool")
    controller = ControllerProcess(base / "controller")
    controller.start()
    with processes(controller):
        env = {**os.environ, "SHOAL_CONFIG": str(base / "config.yaml"), "GH_TOKEN": "ghp_x"}
        cli = Cli(env)
        cli.run(
            "context", "add", "it", "--server", controller.url,
            "--token-file", str(controller.data_dir / "admin.token"),
            "--ca-fingerprint", controller.fingerprint,
        )  # fmt: skip
        cli.run("secret", "create", "generic", "gh-creds", "--from-env", "token=GH_TOKEN")
        key = base / "guest-key"
        key.write_bytes(private_key_pem())
        cli.run("secret", "create", "ssh", "guest-key", "--user", "root", "--private-key", str(key))
        yield cli


def shoal(cli: Cli, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SHOAL, *args], env=cli.env, capture_output=True, text=True, timeout=60)


def test_runnerpool_commands(cli: Cli, tmp_path: Path) -> None:
    created = shoal(
        cli, "runnerpool", "create", "gh", "--provider", "github", "--org", "acme",
        "--label", "shoal", "--label", "linux", "--credentials", "gh-creds",
        "--image", "example.com/runner:1", "--cpu", "2", "--memory", "4Gi", "--max", "4",
        "--access-secret", "guest-key",
        "--api-url", "http://127.0.0.1:9", "--sync-interval", "5",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "runnerpool gh created" in created.stdout
    pool = {
        "apiVersion": "shoal.dev/v1",
        "kind": "RunnerPool",
        "metadata": {"name": "jk"},
        "spec": {
            "provider": "jenkins",
            "jenkins": {"url": "http://127.0.0.1:9", "label": "shoal"},
            "credentialsRef": {"name": "gh-creds"},
            "template": {
                "image": "example.com/runner:1",
                "access": {"secretRef": {"name": "guest-key"}},
            },
            "maxRunners": 2,
        },
    }
    path = tmp_path / "jk.yaml"
    path.write_text(yaml.safe_dump(pool))
    from_file = shoal(cli, "runnerpool", "create", "-f", str(path))
    assert from_file.returncode == 0, from_file.stderr

    listed = shoal(cli, "runnerpool", "list")
    assert listed.returncode == 0
    assert "github acme [shoal,linux]" in listed.stdout and "0/4" in listed.stdout
    assert "jenkins http://127.0.0.1:9 [shoal]" in listed.stdout
    items = json.loads(shoal(cli, "runnerpool", "list", "-o", "json").stdout)["items"]
    assert sorted(p["metadata"]["name"] for p in items) == ["gh", "jk"]
    # The pool cannot reach its CI system: get says so.
    wait_until(
        lambda: "Unreachable" in shoal(cli, "runnerpool", "get", "gh").stdout,
        timeout=30,
        what="the Synced condition",
    )
    assert "STATES" in shoal(cli, "runnerpool", "list", "-o", "wide").stdout

    scaled = shoal(cli, "runnerpool", "scale", "gh", "--max", "8", "--min-idle", "1")
    assert scaled.returncode == 0, scaled.stderr
    assert "maxRunners 8, minIdle 1" in scaled.stdout
    too_many_idle = shoal(cli, "runnerpool", "scale", "gh", "--min-idle", "9")
    assert too_many_idle.returncode != 0 and "minIdle 9 is more than maxRunners 8" in (
        too_many_idle.stderr
    )
    assert shoal(cli, "runnerpool", "scale", "gh").returncode != 0  # nothing to change

    # Bad input: clear errors, nothing made.
    no_provider = shoal(cli, "runnerpool", "create", "x", "--credentials", "gh-creds")
    assert no_provider.returncode != 0 and "--provider" in no_provider.stderr
    jenkins_without_url = shoal(
        cli, "runnerpool", "create", "x", "--provider", "jenkins", "--credentials", "gh-creds",
        "--label", "a", "--image", "example.com/r:1",
    )  # fmt: skip
    assert jenkins_without_url.returncode != 0 and "--url" in jenkins_without_url.stderr
    no_secret = shoal(
        cli, "runnerpool", "create", "x", "--provider", "github", "--org", "acme",
        "--label", "a", "--credentials", "nope", "--image", "example.com/r:1",
        "--access-secret", "guest-key",
    )  # fmt: skip
    assert no_secret.returncode != 0 and "spec.credentialsRef.name" in no_secret.stderr
    names = [p["metadata"]["name"] for p in json.loads(
        shoal(cli, "runnerpool", "list", "-o", "json").stdout)["items"]]  # fmt: skip
    assert sorted(names) == ["gh", "jk"]

    for command in ([], ["create"], ["list"], ["get"], ["scale"], ["delete"]):
        helped = shoal(cli, "runnerpool", *command, "--help")
        assert helped.returncode == 0 and "Usage: shoal runnerpool" in helped.stdout

    # jk's CI is unreachable, so its runners cannot be known gone: its finalizer stays until
    # removed by hand; gh goes the same way. Both are marked for deletion at once.
    deleted = shoal(cli, "runnerpool", "delete", "gh", "jk")
    assert deleted.returncode == 0, deleted.stderr
