"""The VM spec flags shared by `vm deploy` and `vmconfig create`, and the spec they build.

Only flags the user gave end up in the spec, so a VMConfig's values (or the server's defaults)
are never overridden by a CLI default. Sizes go to the server as typed; it validates them.
"""

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from shoal.cli.common import CliError
from shoal.cli.parse import parse_duration, parse_pairs, parse_port


class GuestOS(StrEnum):
    linux = "linux"
    macos = "macos"


class Arch(StrEnum):
    amd64 = "amd64"
    arm64 = "arm64"


ImageOpt = Annotated[
    str | None,
    typer.Option(
        "--image",
        help="Image to boot: an Image's name, or an OCI reference (with a registry host, "
        "a :tag or an @digest).",
    ),
]
CpuOpt = Annotated[int | None, typer.Option("--cpu", help="Number of vCPUs.")]
MemoryOpt = Annotated[str | None, typer.Option("--memory", help="Memory size, e.g. 4Gi.")]
DiskOpt = Annotated[str | None, typer.Option("--disk", help="Disk size, e.g. 20Gi.")]
OsOpt = Annotated[GuestOS | None, typer.Option("--os", help="Guest OS: linux or macos.")]
ArchOpt = Annotated[Arch | None, typer.Option("--arch", help="Guest architecture.")]
SelectorOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--selector",
        metavar="KEY=VALUE",
        help="Required node tag as key=value (repeatable; also k1=v1,k2=v2).",
        show_default=False,
    ),
]
PortOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--port",
        metavar="PORT",
        help="Guest port to expose, as GUEST or NODEPORT:GUEST (repeatable).",
        show_default=False,
    ),
]
EphemeralOpt = Annotated[
    bool | None,
    typer.Option(
        "--ephemeral/--no-ephemeral",
        help="Delete the VM once it stops.",
        show_default=False,
    ),
]
TtlOpt = Annotated[
    str | None,
    typer.Option("--ttl", help="Delete the VM this long after creation: seconds, or 30m, 2h, 1d."),
]
PriorityOpt = Annotated[
    int | None, typer.Option("--priority", help="Scheduling priority (higher goes first).")
]
StartupScriptOpt = Annotated[
    Path | None,
    typer.Option(
        "--startup-script",
        help="Script run in the guest once it is Ready ('-' reads stdin); needs --access-secret. "
        "Its state is the StartupScript condition, its output `shoal logs VM --startup`.",
        show_default=False,
    ),
]
AccessSecretOpt = Annotated[
    str | None,
    typer.Option(
        "--access-secret",
        help="ssh-auth Secret the agent logs into the guest with (exec, startup script).",
        show_default=False,
    ),
]
AccessUserOpt = Annotated[
    str | None,
    typer.Option(
        "--access-user",
        help="Guest user for exec and the startup script; default: the Secret's username, "
        "else the Image's sshUser.",
        show_default=False,
    ),
]
EnvOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--env",
        metavar="NAME=VALUE",
        help="Environment of exec and the startup script (repeatable).",
        show_default=False,
    ),
]
EnvSecretOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--env-secret",
        metavar="NAME=SECRET:KEY",
        help="An environment variable whose value is a key of a Secret (repeatable).",
        show_default=False,
    ),
]
DeleteWhenScriptExitsOpt = Annotated[
    bool | None,
    typer.Option(
        "--delete-when-script-exits",
        help="Stop the VM when its startup script ends; with --ephemeral it is then deleted.",
        show_default=False,
    ),
]
LabelOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--label",
        metavar="KEY=VALUE",
        help="Label for the object as key=value (repeatable).",
        show_default=False,
    ),
]


@dataclass
class SpecFlags:
    image: str | None = None
    cpu: int | None = None
    memory: str | None = None
    disk: str | None = None
    os: GuestOS | None = None
    arch: Arch | None = None
    selector: list[str] = field(default_factory=list)
    ports: list[str] = field(default_factory=list)
    ephemeral: bool | None = None
    ttl: str | None = None
    priority: int | None = None
    startup_script: Path | None = None
    access_secret: str | None = None
    access_user: str | None = None
    env: list[str] = field(default_factory=list)
    env_secrets: list[str] = field(default_factory=list)
    delete_when_script_exits: bool | None = None


def read_script(path: Path) -> str:
    if str(path) == "-":
        return typer.get_text_stream("stdin").read()
    try:
        return path.read_text()
    except OSError as error:
        raise CliError(f"--startup-script {path}: {error.strerror or error}") from None


def _assignments(values: list[str], flag: str) -> dict[str, str]:
    """{"NAME": "value"} from ["NAME=value", ...]; a value may hold anything, commas too."""
    result = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError(f"{flag} {item!r}: expected NAME=VALUE")
        result[name] = value
    return result


def build_spec(flags: SpecFlags) -> dict[str, Any]:
    """The spec holding exactly the flags given."""
    spec: dict[str, Any] = {}
    if flags.image is not None:
        spec["image"] = flags.image
    if flags.cpu is not None:
        spec["cpu"] = flags.cpu
    if flags.memory is not None:
        spec["memory"] = flags.memory
    if flags.disk is not None:
        spec["disk"] = flags.disk
    if flags.os is not None:
        spec["os"] = flags.os.value
    if flags.arch is not None:
        spec["arch"] = flags.arch.value
    if flags.selector:
        spec["nodeSelector"] = parse_pairs(flags.selector, "--selector")
    if flags.ports:
        spec["ports"] = [parse_port(p) for p in flags.ports]
    if flags.ephemeral is not None:
        spec["ephemeral"] = flags.ephemeral
    if flags.ttl is not None:
        spec["ttlSeconds"] = parse_duration(flags.ttl)
    if flags.priority is not None:
        spec["priority"] = flags.priority
    if flags.startup_script is not None:
        spec["startupScript"] = read_script(flags.startup_script)
    if flags.access_secret is not None or flags.access_user is not None:
        spec["access"] = {
            key: value
            for key, value in (
                ("secretRef", {"name": flags.access_secret} if flags.access_secret else None),
                ("user", flags.access_user),
            )
            if value is not None
        }
    env: list[dict[str, Any]] = [
        {"name": k, "value": v} for k, v in _assignments(flags.env, "--env").items()
    ]
    for name, ref in _assignments(flags.env_secrets, "--env-secret").items():
        secret, colon, key = ref.partition(":")
        if not colon or not secret or not key:
            raise CliError(f"--env-secret {name}={ref}: give NAME=SECRET:KEY")
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    if env:
        spec["env"] = env
    if flags.delete_when_script_exits is not None:
        spec["deleteWhenScriptExits"] = flags.delete_when_script_exits
    return spec


def build_metadata(
    name: str | None, generate_name: str | None, labels: list[str] | None
) -> dict[str, Any]:
    if not name and not generate_name:
        raise CliError("give a NAME or --generate-name PREFIX")
    if name and generate_name:
        raise CliError("give either a NAME or --generate-name, not both")
    meta: dict[str, Any] = {"name": name} if name else {"generateName": generate_name}
    if labels:
        meta["labels"] = parse_pairs(labels, "--label")
    return meta
