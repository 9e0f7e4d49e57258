"""The GitLab custom executor driver's pure parts: settings, names, labels, images, the config
JSON, exit codes and how a stage's script is run in the guest."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.ci import gitlab
from shoal.cli.common import CliError

JOB = {
    "CUSTOM_ENV_CI_JOB_ID": "981",
    "CUSTOM_ENV_CI_PROJECT_ID": "12",
    "CUSTOM_ENV_CI_PIPELINE_ID": "345",
    "CUSTOM_ENV_CI_JOB_IMAGE": "ubuntu:22.04",
}


def settings(**values: object) -> gitlab.Settings:
    return gitlab.load_settings(None, values)


def test_settings_from_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "gitlab.yaml"
    path.write_text(
        "default_image: base\nimages:\n  ubuntu:22.04: jammy\ncpu: 2\nbuilds-dir: /b\nlease: 300\n"
    )
    loaded = gitlab.load_settings(path, {"cpu": 4, "images": {"alpine:*": "alp"}, "memory": None})
    assert loaded.cpu == 4 and loaded.default_image == "base" and loaded.builds_dir == "/b"
    assert loaded.images == {"ubuntu:22.04": "jammy", "alpine:*": "alp"}  # merged
    assert loaded.lease == 300 and loaded.memory is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour: red\n", "unknown settings colour"),
        ("- a\n", "expected a mapping"),
        ("unmapped_image: maybe\n", "one of error, default, reference"),
        ("lease: 5\n", "at least 30"),
        ("builds_dir: builds\n", "absolute"),
        ("images: [a]\n", "images: expected a mapping"),
    ],
)
def test_bad_settings_say_why(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "gitlab.yaml"
    path.write_text(text)
    with pytest.raises(CliError, match=message):
        gitlab.load_settings(path, {})


def test_missing_settings_file() -> None:
    with pytest.raises(CliError, match="No such file"):
        gitlab.load_settings(Path("/nonexistent/gitlab.yaml"), {})


def test_vm_name_and_labels_from_the_job() -> None:
    assert gitlab.vm_name(settings(), JOB) == "gitlab-job-981"
    assert gitlab.vm_name(settings(name_prefix="CI_Runner."), JOB) == "ci-runner-981"
    with pytest.raises(gitlab.DriverError, match="CI_JOB_ID"):
        gitlab.vm_name(settings(), {})
    assert gitlab.job_labels(JOB) == {
        "shoal.dev/gitlab": "true",
        "gitlab.shoal.dev/project-id": "12",
        "gitlab.shoal.dev/pipeline-id": "345",
        "gitlab.shoal.dev/job-id": "981",
    }


def test_image_mapping() -> None:
    mapped = settings(images={"ubuntu:22.04": "jammy", "ubuntu:*": "ubuntu-any"})
    assert gitlab.choose_image(mapped, "ubuntu:22.04") == "jammy"  # exact first
    assert gitlab.choose_image(mapped, "ubuntu:24.04") == "ubuntu-any"  # then globs
    with pytest.raises(gitlab.DriverError, match="not in the image mapping"):
        gitlab.choose_image(mapped, "alpine:3")
    fallback = settings(images={"a": "b"}, default_image="base", unmapped_image="default")
    assert gitlab.choose_image(fallback, "alpine:3") == "base"
    assert gitlab.choose_image(fallback, "") == "base"  # no image: in the job
    passthrough = settings(unmapped_image="reference")
    assert gitlab.choose_image(passthrough, "ghcr.io/x/y:1") == "ghcr.io/x/y:1"
    assert gitlab.choose_image(settings(vmconfig="macos"), "") is None  # the VMConfig's
    with pytest.raises(gitlab.DriverError, match="no image"):
        gitlab.choose_image(settings(), "")


def test_vm_body() -> None:
    body = gitlab.vm_body(
        settings(
            images={"ubuntu:22.04": "jammy"},
            vmconfig="linux-small",
            access_secret="key",
            access_user="ci",
            cpu=2,
            memory="2Gi",
            selector={"pool": "ci"},
            lease=900,
        ),
        JOB,
    )
    assert body["metadata"]["name"] == "gitlab-job-981"
    assert body["metadata"]["labels"]["gitlab.shoal.dev/job-id"] == "981"
    assert body["spec"] == {
        "ephemeral": True,
        "leaseSeconds": 900,
        "image": "jammy",
        "config": "linux-small",
        "cpu": 2,
        "memory": "2Gi",
        "nodeSelector": {"pool": "ci"},
        "access": {"secretRef": {"name": "key"}, "user": "ci"},
    }


def test_config_json() -> None:
    out = gitlab.config_output(settings(builds_dir="/b", cache_dir="/c"), JOB)
    assert out["builds_dir"] == "/b" and out["cache_dir"] == "/c"
    assert out["builds_dir_is_shared"] is False
    assert out["hostname"] == "gitlab-job-981"
    assert out["driver"]["name"] == "shoal" and out["driver"]["version"]
    assert "hostname" not in gitlab.config_output(settings(), {})
    json.dumps(out)


def test_exit_codes() -> None:
    codes = gitlab.ExitCodes.from_env(
        {"BUILD_FAILURE_EXIT_CODE": "7", "SYSTEM_FAILURE_EXIT_CODE": "9"}
    )
    assert (codes.build_failure, codes.system_failure) == (7, 9)
    assert codes.for_script(0) == 0
    assert codes.for_script(3) == 7 and codes.for_script(255) == 7
    defaults = gitlab.ExitCodes.from_env({"BUILD_FAILURE_EXIT_CODE": "x"})
    assert (defaults.build_failure, defaults.system_failure) == (1, 2)


def test_build_exit_code_file(tmp_path: Path) -> None:
    path = tmp_path / "code"
    gitlab.write_build_exit_code({"BUILD_EXIT_CODE_FILE": str(path)}, 3)
    assert path.read_text() == "3\n"
    gitlab.write_build_exit_code({}, 3)  # older runners: nothing to write


@pytest.mark.parametrize(
    ("script", "program"),
    [
        (b"#!/usr/bin/env bash\nset -eo pipefail\n", "bash"),
        (b"#!/bin/sh\n", "/bin/sh"),
        (b"#! /usr/bin/env  zsh -f\n", "zsh"),
        (b"echo no shebang\n", "sh"),
    ],
)
def test_interpreter_from_the_script(script: bytes, program: str) -> None:
    assert gitlab.interpreter(settings(), script) == program
    assert gitlab.interpreter(settings(shell="bash"), script) == "bash"


def test_guest_command_runs_the_script_from_stdin(tmp_path: Path) -> None:
    """The wrapper, run by a local sh: the script arrives on stdin, runs with an empty stdin,
    its exit code comes back, and the dirs are made."""
    builds, cache = tmp_path / "builds", tmp_path / "cache"
    command = gitlab.guest_command("sh", str(builds), str(cache))
    script = b"echo out; echo err >&2; read line || echo stdin-empty; exit 4\n"
    done = subprocess.run(command, input=script, capture_output=True, timeout=30)
    assert done.returncode == 4
    assert done.stdout == b"out\nstdin-empty\n" and done.stderr == b"err\n"
    assert builds.is_dir() and cache.is_dir()


def test_stages_are_gitlab_runners() -> None:
    for stage in ("prepare_script", "get_sources", "step_script", "after_script"):
        assert stage in gitlab.STAGES
    assert "cleanup_file_variables" in gitlab.STAGES


def test_every_subcommand_has_help() -> None:
    for sub in ("config", "prepare", "run", "cleanup"):
        done = subprocess.run(
            [sys.executable, "-m", "shoal", "gitlab-executor", sub, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0 and "Usage" in done.stdout, done.stderr


def test_failures_are_system_failures(tmp_path: Path) -> None:
    """Without a server (no context), prepare, run and cleanup exit SYSTEM_FAILURE_EXIT_CODE."""
    env = {
        "SHOAL_CONFIG": str(tmp_path / "none.yaml"),
        "PATH": "/usr/bin:/bin",
        "SYSTEM_FAILURE_EXIT_CODE": "42",
        "BUILD_FAILURE_EXIT_CODE": "41",
        **JOB,
    }
    script = tmp_path / "script"
    script.write_text("true\n")
    for argv in (["prepare"], ["run", str(script), "step_script"], ["cleanup"]):
        done = subprocess.run(
            [sys.executable, "-m", "shoal", "gitlab-executor", "--image", "x", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 42, (argv, done.stderr)
        assert "no context" in done.stderr
