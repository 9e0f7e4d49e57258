"""`shoal gitlab-executor` on the real test guest, driven by a stand-in for gitlab-runner
(tests/fakes/gitlab_runner.py: the same argv, CUSTOM_ENV_* variables, script files, stage names
and exit-code variables). Only gitlab-runner is fake: the controller, agent, QEMU guest, exec and
the driver are real, and get_sources is a real `git fetch` from a repository this machine serves.
One guest boot: a whole job whose step_script fails; then a job on an image
that cannot boot."""

import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from fakes.gitlab_runner import (
    BUILD_FAILURE_EXIT_CODE,
    SYSTEM_FAILURE_EXIT_CODE,
    FakeGitlabRunner,
    Job,
)
from helpers import SHOAL, free_port, kill_group, wait_until
from qemu_dev import TEST_IMAGE, QemuDev
from shoal.client import Client
from shoal.testguest import TestGuest
from shoal.testguest.build import GATEWAY

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("qemu-system-x86_64", "qemu-img", "git")),
    reason="needs qemu-system-x86_64, qemu-img (make system-deps) and git",
)


def vms(dev: QemuDev) -> list[dict[str, object]]:
    items: list[dict[str, object]] = dev.cli.json("vm", "list")["items"]
    return items


@dataclass
class Repository:
    url: str  # as the guest reaches it
    sha: str  # the head of main


@pytest.fixture
def served_repository(tmp_path: Path) -> Iterator[Repository]:
    """A real git repository with two commits on main, served by `git daemon` on this machine's
    loopback. The guest reaches it through QEMU's user-mode network, whose gateway address
    stands for the host's loopback: the path a job's checkout takes from a GitLab server."""
    work = tmp_path / "work"
    work.mkdir()

    def git(*args: str, cwd: Path = work) -> str:
        identity = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
        done = subprocess.run(["git", *identity, *args], cwd=cwd, check=True, capture_output=True)
        return done.stdout.decode().strip()

    git("init", "-q", "-b", "main")
    (work / "README.txt").write_text("an older readme\n")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    (work / "README.txt").write_text("hello from the repository\n")
    (work / "build.sh").write_text("echo building $CI_COMMIT_SHA\nexit 3\n")
    git("add", ".")
    git("commit", "-q", "-m", "second")
    served = tmp_path / "served"
    (served / "group").mkdir(parents=True)
    git("clone", "-q", "--bare", str(work), str(served / "group" / "project.git"))
    port = free_port()
    daemon = subprocess.Popen(
        ["git", "daemon", "--export-all", f"--base-path={served}", "--listen=127.0.0.1",
         f"--port={port}", "--reuseaddr", str(served)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # `git daemon` runs git-daemon as its child: kill them both
    )  # fmt: skip
    try:
        wait_until(lambda: port_open(port), timeout=30, what="git daemon to listen")
        yield Repository(f"git://{GATEWAY}:{port}/group/project.git", git("rev-parse", "HEAD"))
    finally:
        kill_group(daemon)


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def runner(dev: QemuDev, settings: Path) -> FakeGitlabRunner:
    args = ["gitlab-executor", "--config-file", str(settings)]
    return FakeGitlabRunner(
        executable=SHOAL,
        config_args=[*args, "config"],
        prepare_args=[*args, "prepare"],
        run_args=[*args, "run"],
        cleanup_args=[*args, "cleanup"],
        env=dev.cli.env,
    )


def test_gitlab_job_through_the_driver_fake_runner(
    qemu_dev: QemuDev, guest_image: TestGuest, served_repository: Repository, tmp_path: Path
) -> None:
    dev = qemu_dev
    dev.cli.run(
        "secret", "create", "ssh", "guest-key",
        "--user", guest_image.ssh_user, "--private-key", str(guest_image.private_key),
    )  # fmt: skip
    api = Client(f"http://127.0.0.1:{dev.port}", (dev.data_dir / "admin.token").read_text().strip())
    missing = {"path": "/nonexistent/disk.qcow2", "digest": "sha256:" + "0" * 64, "size": 1}
    api.create(
        "images", {"metadata": {"name": "broken"}, "spec": {"source": {"local": {"disk": missing}}}}
    )
    settings = tmp_path / "gitlab.yaml"
    settings.write_text(
        yaml.safe_dump(
            {
                "images": {"debian:bookworm": TEST_IMAGE, "broken:*": "broken"},
                "access_secret": "guest-key",
                "cpu": 1,
                "memory": "256Mi",
                "lease": 120,
                "boot_timeout": 300,
            }
        )
    )
    fake = runner(dev, settings)
    sha = served_repository.sha
    job = Job(
        id=4711,
        image="debian:bookworm",
        repository_url=served_repository.url,
        commit_sha=sha,
        variables={"GREETING": "hi there"},
        file_variables={"DEPLOY_KEY": "secret-content"},
        script=[
            "cat README.txt",
            "git rev-parse HEAD",
            'echo "file variable: $(cat "$DEPLOY_KEY")"',
            'echo "$GREETING" >&2',
            "sh build.sh",
            "echo never reached",
        ],
        after_script=['echo "after_script in $(pwd) sees $(cat README.txt)"'],
    )
    seen: list[list[dict[str, object]]] = []
    result = fake.run_job(job, prepare_attempts=3, after_prepare=lambda: seen.append(vms(dev)))

    # config: the JSON gitlab-runner reads.
    assert result.config["builds_dir"] == "/builds"
    assert result.config["builds_dir_is_shared"] is False
    assert result.config["hostname"] == "gitlab-job-4711"
    assert result.config["driver"]["name"] == "shoal"
    # Three prepares in a row (gitlab-runner's retry): all succeed, one VM.
    prepares = [c for c in result.calls if c.what == "prepare"]
    assert [c.exit_code for c in prepares] == [0, 0, 0], [c.stderr for c in prepares]
    assert "reusing VM gitlab-job-4711" in prepares[1].stderr
    (only,) = seen[0]
    metadata = only["metadata"]
    assert isinstance(metadata, dict) and metadata["name"] == "gitlab-job-4711"
    assert metadata["labels"] == {
        "shoal.dev/gitlab": "true",
        "gitlab.shoal.dev/project-id": "7",
        "gitlab.shoal.dev/pipeline-id": "100",
        "gitlab.shoal.dev/job-id": "4711",
    }
    # The stages, in gitlab-runner's order; step_script fails, after_script still runs.
    assert result.stages() == [
        "config", "prepare", "prepare", "prepare",
        "prepare_script", "get_sources", "restore_cache", "download_artifacts",
        "step_script", "after_script", "archive_cache_on_failure",
        "upload_artifacts_on_failure", "cleanup_file_variables", "cleanup",
    ]  # fmt: skip
    codes = {c.what: c.exit_code for c in result.calls}
    assert codes["get_sources"] == 0, result.call("get_sources").output
    assert (
        f"Checking out {sha[:8]} as detached HEAD (ref is main)"
        in result.call("get_sources").stdout
    )
    step = result.call("step_script")
    assert step.exit_code == BUILD_FAILURE_EXIT_CODE, step.output
    assert "hello from the repository\n" in step.stdout  # the sources got there
    assert f"{sha}\n" in step.stdout  # a real checkout of the job's commit
    assert "file variable: secret-content" in step.stdout
    assert "hi there\n" in step.stderr  # stderr stays stderr
    assert f"building {sha}" in step.stdout and "never reached" not in step.stdout
    assert result.build_exit_code == "3"  # the script's own code, for allow_failure:exit_codes
    after = result.call("after_script")
    assert after.exit_code == 0, after.output
    assert "after_script in /builds/group/project sees hello from the repository" in after.stdout
    for stage in ("prepare_script", "archive_cache_on_failure", "cleanup_file_variables"):
        assert codes[stage] == 0, result.call(stage).output
    assert result.status == "failed"  # a build failure, not a system failure
    assert codes["cleanup"] == 0
    wait_until(lambda: vms(dev) == [], timeout=120, what="the job's VM to go")
    # A stage after cleanup: no VM, so a system failure (not the build's).
    late = fake.run_stage(job, "/builds", "after_script", "#!/bin/sh\ntrue\n")
    assert late.exit_code == SYSTEM_FAILURE_EXIT_CODE and "is gone" in late.stderr
    # Cleanup again: the VM already gone is fine.
    assert fake.cleanup(job, "/builds").exit_code == 0

    # An image that cannot boot: prepare is a system failure and leaves no VM behind.
    broken = fake.run_job(Job(id=4712, image="broken:latest", script=["true"]))
    prepare = broken.call("prepare")
    assert prepare.exit_code == SYSTEM_FAILURE_EXIT_CODE, prepare.output
    assert "did not come up" in prepare.stderr
    assert broken.status == "system_failure" and broken.stages()[-1] == "cleanup"
    wait_until(lambda: vms(dev) == [], timeout=120, what="the broken VM to go")
