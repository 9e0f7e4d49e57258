"""`shoal gitlab-executor config|prepare|run|cleanup`: the GitLab Runner custom executor driver
(docs/gitlab.md). The work is in shoal.ci.gitlab; this is its command line: settings from a YAML
file and flags (given before the stage name, so they fit config_args, prepare_args, run_args and
cleanup_args), and every failure turned into the exit code gitlab-runner asked for."""

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from shoal.ci import gitlab
from shoal.cli.common import CliError, ContextOpt, NamespaceOpt, connect
from shoal.cli.parse import parse_pairs
from shoal.errors import ApiError

app = typer.Typer(
    no_args_is_help=True,
    help="GitLab Runner custom executor driver: one ephemeral VM per job (docs/gitlab.md).",
)
FAILURES = (gitlab.DriverError, CliError, ApiError, httpx.HTTPError, OSError)


def _settings(ctx: typer.Context) -> gitlab.Settings:
    loader: Callable[[], gitlab.Settings] = ctx.obj
    return loader()


def _system_failure(stage: str, error: BaseException) -> typer.Exit:
    print(f"shoal gitlab-executor {stage}: {gitlab.failure(error)}", file=sys.stderr, flush=True)
    return typer.Exit(gitlab.ExitCodes.from_env(os.environ).system_failure)


@app.callback()
def settings(
    ctx: typer.Context,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config-file",
            envvar=gitlab.CONFIG_ENV,
            help="YAML settings file (keys as the flags, with underscores); flags override it.",
            show_default=False,
        ),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            "--image",
            help="Image for jobs that name none (or, with --unmapped-image default, an unmapped one).",
        ),
    ] = None,
    image_map: Annotated[
        list[str] | None,
        typer.Option(
            "--image-map",
            metavar="JOBIMAGE=IMAGE",
            help="A job's image: (exact, or a glob like 'ubuntu:*') to a shoal Image or OCI "
            "reference (repeatable).",
            show_default=False,
        ),
    ] = None,
    unmapped_image: Annotated[
        str | None,
        typer.Option(
            "--unmapped-image",
            help="A job image not in the mapping: error (default), default (use --image) or "
            "reference (boot it as an OCI reference).",
            show_default=False,
        ),
    ] = None,
    vmconfig: Annotated[
        str | None,
        typer.Option("--vmconfig", help="VMConfig the job's VM starts from.", show_default=False),
    ] = None,
    access_secret: Annotated[
        str | None,
        typer.Option(
            "--access-secret", help="ssh-auth Secret for guest access.", show_default=False
        ),
    ] = None,
    access_user: Annotated[
        str | None, typer.Option("--access-user", help="Guest user.", show_default=False)
    ] = None,
    cpu: Annotated[int | None, typer.Option("--cpu", help="vCPUs.", show_default=False)] = None,
    memory: Annotated[
        str | None, typer.Option("--memory", help="Memory, e.g. 4Gi.", show_default=False)
    ] = None,
    disk: Annotated[
        str | None, typer.Option("--disk", help="Disk size, e.g. 40Gi.", show_default=False)
    ] = None,
    selector: Annotated[
        list[str] | None,
        typer.Option(
            "--selector",
            metavar="KEY=VALUE",
            help="Required node tag (repeatable).",
            show_default=False,
        ),
    ] = None,
    builds_dir: Annotated[
        str | None,
        typer.Option(
            "--builds-dir", help="builds_dir in the guest; default /builds.", show_default=False
        ),
    ] = None,
    cache_dir: Annotated[
        str | None,
        typer.Option(
            "--cache-dir", help="cache_dir in the guest; default /cache.", show_default=False
        ),
    ] = None,
    shell: Annotated[
        str | None,
        typer.Option(
            "--shell",
            help="Guest program that runs each stage's script; default auto: the script's #! line, else sh.",
            show_default=False,
        ),
    ] = None,
    lease: Annotated[
        int | None,
        typer.Option(
            "--lease",
            help="Seconds the VM outlives the last stage that touched it; default 600.",
            show_default=False,
        ),
    ] = None,
    boot_timeout: Annotated[
        float | None,
        typer.Option(
            "--boot-timeout",
            help="Seconds prepare waits for the guest; default 600.",
            show_default=False,
        ),
    ] = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """GitLab Runner custom executor driver: settings go before the stage name."""
    overrides: dict[str, Any] = {
        "context": context,
        "namespace": namespace,
        "default_image": image,
        "images": parse_pairs(image_map, "--image-map") if image_map else None,
        "unmapped_image": unmapped_image,
        "vmconfig": vmconfig,
        "access_secret": access_secret,
        "access_user": access_user,
        "cpu": cpu,
        "memory": memory,
        "disk": disk,
        "selector": parse_pairs(selector, "--selector") if selector else None,
        "builds_dir": builds_dir,
        "cache_dir": cache_dir,
        "shell": shell,
        "lease": lease,
        "boot_timeout": boot_timeout,
    }
    # Loaded by the stage, so that a bad setting is the stage's system failure, not exit 1.
    ctx.obj = lambda: gitlab.load_settings(config_file, overrides)


@app.command("config")
def config(ctx: typer.Context) -> None:
    """config_exec: print the JSON gitlab-runner reads (builds_dir, cache_dir, hostname, driver)."""
    try:
        out = gitlab.config_output(_settings(ctx), os.environ)
    except FAILURES as error:
        raise _system_failure("config", error) from None
    typer.echo(json.dumps(out))


@app.command("prepare")
def prepare(ctx: typer.Context) -> None:
    """prepare_exec: deploy the job's VM (or reuse the one an earlier attempt made) and wait
    until its guest answers. Exit $SYSTEM_FAILURE_EXIT_CODE if it cannot. Settings (image,
    access Secret...) go before the stage name: see `shoal gitlab-executor --help`."""
    try:
        settings = _settings(ctx)
        with connect(settings.context, settings.namespace) as target:
            gitlab.prepare(target, settings, os.environ)
    except FAILURES as error:
        raise _system_failure("prepare", error) from None


@app.command("run")
def run(
    ctx: typer.Context,
    script: Annotated[Path, typer.Argument(help="The script gitlab-runner wrote for this stage.")],
    stage: Annotated[str, typer.Argument(help="The stage's name, e.g. step_script.")],
) -> None:
    """run_exec: run SCRIPT in the job's VM with its output live. Exit 0, or
    $BUILD_FAILURE_EXIT_CODE when the script failed, or $SYSTEM_FAILURE_EXIT_CODE when it could
    not run."""
    codes = gitlab.ExitCodes.from_env(os.environ)
    try:
        settings = _settings(ctx)
        if stage not in gitlab.STAGES:
            print(
                f"shoal gitlab-executor: unknown stage {stage!r}, run as any other", file=sys.stderr
            )
        with connect(settings.context, settings.namespace) as target:
            code = gitlab.run_stage(target, settings, os.environ, script, stage)
    except FAILURES as error:
        raise _system_failure("run", error) from None
    if code != 0:
        gitlab.write_build_exit_code(os.environ, code)
    raise typer.Exit(codes.for_script(code))


@app.command("cleanup")
def cleanup(ctx: typer.Context) -> None:
    """cleanup_exec: delete the job's VM (already gone is fine)."""
    try:
        settings = _settings(ctx)
        with connect(settings.context, settings.namespace) as target:
            gitlab.cleanup(target, settings, os.environ)
    except FAILURES as error:
        raise _system_failure("cleanup", error) from None
