"""A stand-in for gitlab-runner's custom executor, written from its documentation
(docs.gitlab.com/runner/executors/custom): it drives a driver the way gitlab-runner does.

- Every call gets gitlab-runner's own environment, the job's variables as CUSTOM_ENV_<NAME>,
  BUILD_FAILURE_EXIT_CODE and SYSTEM_FAILURE_EXIT_CODE, JOB_RESPONSE_FILE (the job as JSON),
  and for run stages BUILD_EXIT_CODE_FILE.
- argv: `config_exec config_args...`, `prepare_exec prepare_args...`,
  `run_exec run_args... SCRIPT_PATH STAGE`, `cleanup_exec cleanup_args...`.
- config's stdout is JSON (builds_dir, cache_dir, ...); the project directory is under builds_dir.
- run stages in gitlab-runner's order: prepare_script, get_sources, restore_cache,
  download_artifacts, step_script, after_script, archive_cache (or archive_cache_on_failure),
  upload_artifacts_on_success (or _on_failure), cleanup_file_variables; a failure before
  step_script ends the job; after_script runs after a failed step_script; cleanup always runs.
- An exit code other than 0, BUILD_FAILURE_EXIT_CODE and SYSTEM_FAILURE_EXIT_CODE is a system
  failure, as gitlab-runner takes it.

What differs from gitlab-runner, on purpose: the scripts keep the shape of gitlab-runner's bash
ones (set -eo pipefail, exported variables, `$ cmd` echoes, file variables under
$CI_PROJECT_DIR.tmp) without its quoting through eval; get_sources is a real `git init`, `git
fetch --depth` of the job's ref and `git checkout` of its commit, from the URL the job gives
(the tests serve a repository with `git daemon`). Cache and artifacts stages are no-ops (no cache
server here).
"""

import json
import os
import shlex
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUILD_FAILURE_EXIT_CODE = 1
SYSTEM_FAILURE_EXIT_CODE = 2


@dataclass
class Job:
    id: int
    image: str
    script: list[str]
    after_script: list[str] = field(default_factory=list)
    project_id: int = 7
    project_path: str = "group/project"
    pipeline_id: int = 100
    variables: dict[str, str] = field(default_factory=dict)
    file_variables: dict[str, str] = field(default_factory=dict)
    repository_url: str = ""  # where get_sources fetches from (CI_REPOSITORY_URL)
    ref: str = "main"
    commit_sha: str = ""

    def ci_variables(self, builds_dir: str) -> dict[str, str]:
        return {
            "CI": "true",
            "GITLAB_CI": "true",
            "CI_JOB_ID": str(self.id),
            "CI_JOB_IMAGE": self.image,
            "CI_JOB_NAME": "test",
            "CI_JOB_STAGE": "test",
            "CI_PROJECT_ID": str(self.project_id),
            "CI_PROJECT_PATH": self.project_path,
            "CI_PIPELINE_ID": str(self.pipeline_id),
            "CI_COMMIT_SHA": self.commit_sha,
            "CI_COMMIT_REF_NAME": self.ref,
            "CI_BUILDS_DIR": builds_dir,
            "CI_PROJECT_DIR": f"{builds_dir}/{self.project_path}",
            "CI_SERVER_URL": "https://gitlab.example.com",
            "CI_REPOSITORY_URL": self.repository_url,
            **self.variables,
        }


@dataclass
class Call:
    what: str  # config, prepare, cleanup, or the run stage's name
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class JobResult:
    status: str = "success"  # success, failed, system_failure
    calls: list[Call] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    build_exit_code: str = ""  # what the driver wrote to BUILD_EXIT_CODE_FILE

    def call(self, what: str) -> Call:
        return next(c for c in self.calls if c.what == what)

    def stages(self) -> list[str]:
        return [c.what for c in self.calls]


@dataclass
class FakeGitlabRunner:
    """`[runners.custom]` as config.toml has it: each *_exec with its *_args."""

    executable: str
    config_args: list[str]
    prepare_args: list[str]
    run_args: list[str]
    cleanup_args: list[str]
    env: dict[str, str]  # gitlab-runner's own environment, which the driver inherits
    timeout: float = 600

    def _call(
        self, what: str, argv: list[str], job: Job, builds_dir: str, extra: dict[str, str]
    ) -> Call:
        with tempfile.TemporaryDirectory(prefix="custom-executor") as tmp:
            response = Path(tmp) / "job-response.json"
            response.write_text(json.dumps({"id": job.id, "image": {"name": job.image}}))
            env = {
                **self.env,
                **{f"CUSTOM_ENV_{k}": v for k, v in job.ci_variables(builds_dir).items()},
                "BUILD_FAILURE_EXIT_CODE": str(BUILD_FAILURE_EXIT_CODE),
                "SYSTEM_FAILURE_EXIT_CODE": str(SYSTEM_FAILURE_EXIT_CODE),
                "JOB_RESPONSE_FILE": str(response),
                "TMPDIR": tmp,
                **extra,
            }
            done = subprocess.run(
                [self.executable, *argv],
                capture_output=True,
                env=env,
                cwd=tmp,
                timeout=self.timeout,
                text=True,
            )
        return Call(what, done.returncode, done.stdout, done.stderr)

    def config(self, job: Job) -> tuple[Call, dict[str, Any]]:
        call = self._call("config", self.config_args, job, "", {})
        return call, json.loads(call.stdout) if call.exit_code == 0 else {}

    def prepare(self, job: Job, builds_dir: str) -> Call:
        return self._call("prepare", self.prepare_args, job, builds_dir, {})

    def cleanup(self, job: Job, builds_dir: str) -> Call:
        return self._call("cleanup", self.cleanup_args, job, builds_dir, {})

    def run_stage(
        self, job: Job, builds_dir: str, stage: str, script: str, code_file: Path | None = None
    ) -> Call:
        with tempfile.TemporaryDirectory(prefix="build-script") as tmp:
            path = Path(tmp) / f"script.{stage}"
            path.write_text(script)
            extra = {"BUILD_EXIT_CODE_FILE": str(code_file)} if code_file else {}
            return self._call(stage, [*self.run_args, str(path), stage], job, builds_dir, extra)

    def run_job(
        self,
        job: Job,
        *,
        prepare_attempts: int = 1,
        after_prepare: Callable[[], None] | None = None,
    ) -> JobResult:
        """The whole job; prepare called prepare_attempts times in a row (gitlab-runner's
        retry, no cleanup in between), after_prepare then called before the first stage."""
        result = JobResult()
        config_call, result.config = self.config(job)
        result.calls.append(config_call)
        if config_call.exit_code != 0:
            result.status = "system_failure"
            return result
        builds_dir = result.config["builds_dir"]
        try:
            for _ in range(prepare_attempts):
                call = self.prepare(job, builds_dir)
                result.calls.append(call)
            if call.exit_code != 0:
                result.status = "system_failure"
                return result
            if after_prepare is not None:
                after_prepare()
            self._stages(job, builds_dir, result)
        finally:
            result.calls.append(self.cleanup(job, builds_dir))
        return result

    def _stages(self, job: Job, builds_dir: str, result: JobResult) -> None:
        scripts = Scripts(job, builds_dir)
        code_file = Path(tempfile.mkdtemp(prefix="build-exit-code")) / "code"

        def stage(name: str, script: str) -> bool:
            call = self.run_stage(job, builds_dir, name, script, code_file)
            result.calls.append(call)
            if call.exit_code == 0:
                return True
            if call.exit_code == BUILD_FAILURE_EXIT_CODE:
                if result.status == "success":
                    result.status = "failed"
            else:  # SYSTEM_FAILURE_EXIT_CODE or any unknown code
                result.status = "system_failure"
            return False

        ok = all(
            stage(name, scripts.stage(name))
            for name in ("prepare_script", "get_sources", "restore_cache", "download_artifacts")
        )
        if ok:
            step_ok = stage("step_script", scripts.user("step_script", job.script))
            if job.after_script:
                stage("after_script", scripts.user("after_script", job.after_script))
            if result.status != "system_failure":
                suffix = "" if step_ok else "_on_failure"
                stage(f"archive_cache{suffix}", scripts.stage("archive_cache"))
                upload = "upload_artifacts_on_success" if step_ok else "upload_artifacts_on_failure"
                stage(upload, scripts.stage(upload))
        stage("cleanup_file_variables", scripts.stage("cleanup_file_variables"))
        if code_file.exists():
            result.build_exit_code = code_file.read_text().strip()


class Scripts:
    """The scripts gitlab-runner would write for each stage, for bash."""

    def __init__(self, job: Job, builds_dir: str) -> None:
        self.job = job
        self.variables = job.ci_variables(builds_dir)
        self.project_dir = self.variables["CI_PROJECT_DIR"]

    def _head(self) -> list[str]:
        lines = ["#!/usr/bin/env bash", "set -eo pipefail", "set +o noclobber"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in self.variables.items()]
        tmp = shlex.quote(f"{self.project_dir}.tmp")
        for name, content in self.job.file_variables.items():
            path = f"{self.project_dir}.tmp/{name}"
            lines += [
                f"mkdir -p {tmp}",
                f"printf '%s' {shlex.quote(content)} > {shlex.quote(path)}",
                f"export {name}={shlex.quote(path)}",
            ]
        return lines

    def stage(self, name: str) -> str:
        lines = self._head()
        project = shlex.quote(self.project_dir)
        if name == "prepare_script":
            lines += ['echo "Running on $(hostname)..."']
        elif name == "get_sources":
            url = shlex.quote(self.job.repository_url)
            ref = self.job.ref
            sha = self.job.commit_sha
            lines += [
                'echo "Fetching changes with git depth set to 20..."',
                f"rm -rf {project}",
                f"git init -q {project}",
                f"cd {project}",
                f"git remote add origin {url}",
                f"git fetch origin +refs/heads/{ref}:refs/remotes/origin/{ref} --depth 20 --prune"
                " --quiet",
                f'echo "Checking out {sha[:8]} as detached HEAD (ref is {ref})..."',
                f"git -c advice.detachedHead=false checkout -f -q {sha}",
                "git clean -ffdx",
            ]
        elif name == "cleanup_file_variables":
            lines += [f"rm -rf {shlex.quote(self.project_dir + '.tmp')}"]
        else:  # caches and artifacts: nothing to keep here
            lines += [f"echo {shlex.quote(name)}: nothing to do"]
        return "\n".join(lines) + "\n"

    def user(self, name: str, commands: list[str]) -> str:
        lines = [*self._head(), f"cd {shlex.quote(self.project_dir)}"]
        for command in commands:
            lines += [f"echo {shlex.quote('$ ' + command)}", command]
        return "\n".join(lines) + "\n"


def driver_env() -> dict[str, str]:
    """gitlab-runner's own environment (the driver inherits it)."""
    return dict(os.environ)
