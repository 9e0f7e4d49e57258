"""`shoal runnerpool`: CI runners on demand (RunnerPool objects): one fresh VM per queued job of
a GitHub Actions, Jenkins or Buildkite queue."""

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from shoal.cli.common import API_VERSION, CliError, ContextOpt, NamespaceOpt, connect, fetch_list
from shoal.cli.output import (
    Format,
    OutputOpt,
    age,
    conditions_rows,
    created_age,
    print_kv,
    print_list,
    print_object,
    print_section,
)
from shoal.cli.removal import delete_each
from shoal.client import Obj
from shoal.columns import TABLES, runnerpool_states, runnerpool_target

PLURAL = "runnerpools"

app = typer.Typer(
    help="CI runner pools: a fresh VM for every queued GitHub Actions, Jenkins or Buildkite job.",
    no_args_is_help=True,
)


TABLE = TABLES["RunnerPool"]
COLUMNS = TABLE.columns
WIDE = TABLE.wide


def describe(obj: Obj) -> None:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    template = spec.get("template") or {}
    pairs = [
        ("Name", obj["metadata"]["name"]),
        ("Namespace", obj["metadata"].get("namespace", "")),
        ("CI", runnerpool_target(obj)),
        ("Credentials", (spec.get("credentialsRef") or {}).get("name", "")),
        ("Template", template.get("config") or template.get("image") or ""),
        ("Max runners", str(spec.get("maxRunners", ""))),
        ("Min idle", str(spec.get("minIdle", 0))),
        ("Runners", runnerpool_states(obj)),
        ("Jobs waiting", str(status.get("jobsWaiting", 0))),
        (
            "Last sync",
            age(status.get("lastSyncTime")) + " ago" if status.get("lastSyncTime") else "-",
        ),
        ("Age", created_age(obj)),
    ]
    if status.get("message"):
        pairs.append(("Message", str(status["message"])))
    print_kv(pairs)
    print_section(
        "Conditions", ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], conditions_rows(obj)
    )


def _from_file(path: Path) -> Obj:
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise CliError(f"{path}: {error}") from None
    if not isinstance(loaded, dict):
        raise CliError(f"{path}: expected a RunnerPool object (YAML or JSON)")
    return loaded


def _provider_target(
    provider: str,
    org: str | None,
    repo: str | None,
    labels: list[str],
    url: str | None,
    api_url: str | None,
    runner_group: str | None,
    queue: str | None,
) -> dict[str, Any]:
    if provider == "github":
        target: dict[str, Any] = {"labels": labels}
        if org:
            target["organization"] = org
        if repo:
            target["repository"] = repo
        if api_url:
            target["apiURL"] = api_url
        if runner_group:
            target["runnerGroup"] = runner_group
        return target
    if provider == "jenkins":
        if not url or len(labels) != 1:
            raise CliError("a jenkins pool needs --url and one --label")
        return {"url": url, "label": labels[0]}
    if provider == "buildkite":
        if not org:
            raise CliError("a buildkite pool needs --org")
        target = {"organization": org}
        if queue:
            target["queue"] = queue
        if api_url:
            target["apiURL"] = api_url
        return target
    raise CliError(f"--provider: github, jenkins or buildkite (got {provider!r})")


@app.command()
def create(
    name: Annotated[
        str | None, typer.Argument(help="Name of the pool.", show_default=False)
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="A RunnerPool in YAML or JSON (flags then unused)."),
    ] = None,
    provider: Annotated[
        str | None, typer.Option(help="github, jenkins or buildkite.", show_default=False)
    ] = None,
    credentials: Annotated[
        str | None,
        typer.Option(help="The Secret with the CI system's credentials.", show_default=False),
    ] = None,
    org: Annotated[
        str | None, typer.Option(help="GitHub organization or Buildkite organization slug.")
    ] = None,
    repo: Annotated[str | None, typer.Option(help="GitHub repository, owner/name.")] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(help="GitHub runner label (repeatable) or the Jenkins label."),
    ] = None,
    url: Annotated[str | None, typer.Option(help="Jenkins URL.")] = None,
    api_url: Annotated[
        str | None, typer.Option(help="GitHub (Enterprise Server) or Buildkite API URL.")
    ] = None,
    runner_group: Annotated[str | None, typer.Option(help="GitHub runner group.")] = None,
    queue: Annotated[str | None, typer.Option(help="Buildkite queue.")] = None,
    config: Annotated[
        str | None, typer.Option(help="VMConfig each runner VM is made from.")
    ] = None,
    image: Annotated[str | None, typer.Option(help="Image of the runner VMs.")] = None,
    cpu: Annotated[int | None, typer.Option(min=1, help="vCPUs of each runner VM.")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory of each runner VM, e.g. 4Gi.")] = None,
    disk: Annotated[str | None, typer.Option(help="Disk of each runner VM, e.g. 40Gi.")] = None,
    access_secret: Annotated[
        str | None, typer.Option(help="ssh-auth Secret the agent logs into the guest with.")
    ] = None,
    access_user: Annotated[str | None, typer.Option(help="User to log into the guest as.")] = None,
    max_runners: Annotated[int, typer.Option("--max", min=0, help="At most this many VMs.")] = 10,
    min_idle: Annotated[int, typer.Option(min=0, help="Runners kept started ahead of demand.")] = 0,
    runner_command: Annotated[
        Path | None,
        typer.Option(help="A shell script that starts one runner (default: the provider's)."),
    ] = None,
    sync_interval: Annotated[
        int | None, typer.Option(min=5, help="Seconds between asks of the CI system.")
    ] = None,
    idle_timeout: Annotated[
        int | None, typer.Option(min=30, help="Seconds a runner may go without a job.")
    ] = None,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Create a runner pool, from flags or from a file (-f)."""
    if file is not None:
        body = _from_file(file)
    else:
        if not name or not provider or not credentials:
            raise CliError("give NAME, --provider and --credentials (or -f FILE)")
        template: dict[str, Any] = {
            k: v
            for k, v in {
                "config": config, "image": image, "cpu": cpu, "memory": memory, "disk": disk,
            }.items()
            if v is not None
        }  # fmt: skip
        if access_secret or access_user:
            template["access"] = {
                **({"secretRef": {"name": access_secret}} if access_secret else {}),
                **({"user": access_user} if access_user else {}),
            }
        spec: dict[str, Any] = {
            "provider": provider,
            provider: _provider_target(
                provider, org, repo, label or [], url, api_url, runner_group, queue
            ),
            "credentialsRef": {"name": credentials},
            "template": template,
            "maxRunners": max_runners,
            "minIdle": min_idle,
        }
        if runner_command is not None:
            spec["runnerCommand"] = runner_command.read_text()
        if sync_interval is not None:
            spec["syncIntervalSeconds"] = sync_interval
        if idle_timeout is not None:
            spec["idleTimeoutSeconds"] = idle_timeout
        body = {
            "apiVersion": API_VERSION,
            "kind": "RunnerPool",
            "metadata": {"name": name},
            "spec": spec,
        }
    with connect(context, namespace) as target:
        created = target.client.create(PLURAL, body, target.namespace)
    if output in (Format.json, Format.yaml):
        print_object(created, output, describe)
    else:
        typer.echo(f"runnerpool {created['metadata']['name']} created")


@app.command("list")
def list_(
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="List in every namespace.")
    ] = False,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """List runner pools with their runners and waiting jobs."""
    with connect(context, namespace) as target:
        listing = fetch_list(target.client, PLURAL, None if all_namespaces else target.namespace)
    first = TABLE.first(all_namespaces=all_namespaces)
    print_list(listing, output, COLUMNS, WIDE, first=first)


@app.command()
def get(
    name: Annotated[str, typer.Argument(help="Name of the pool.", show_default=False)],
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Show one pool: its runners by state, the jobs waiting and why, its conditions."""
    with connect(context, namespace) as target:
        obj = target.client.get(PLURAL, name, target.namespace)
    print_object(obj, output, describe)


@app.command()
def scale(
    name: Annotated[str, typer.Argument(help="Name of the pool.", show_default=False)],
    max_runners: Annotated[
        int | None, typer.Option("--max", min=0, help="At most this many VMs.")
    ] = None,
    min_idle: Annotated[
        int | None, typer.Option(min=0, help="Runners kept started ahead of demand.")
    ] = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Change a pool's limits (running jobs are not interrupted)."""
    change: dict[str, int] = {}
    if max_runners is not None:
        change["maxRunners"] = max_runners
    if min_idle is not None:
        change["minIdle"] = min_idle
    if not change:
        raise CliError("give --max and/or --min-idle")
    with connect(context, namespace) as target:
        obj = target.client.patch(PLURAL, name, {"spec": change}, target.namespace)
    spec = obj["spec"]
    typer.echo(
        f"runnerpool {name} scaled: maxRunners {spec['maxRunners']}, minIdle {spec['minIdle']}"
    )


@app.command()
def delete(
    names: Annotated[list[str], typer.Argument(help="Names of the pools.", show_default=False)],
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Delete runner pools: their VMs and their runners in the CI system go too."""
    with connect(context, namespace) as target:
        delete_each(target, PLURAL, "runnerpool", names, target.namespace)
