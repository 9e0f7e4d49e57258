"""`shoal vm`: deploy, list, get, delete, and power actions on VirtualMachines."""

import time
from typing import Annotated

import typer

from shoal.cli import vmspec
from shoal.cli.common import (
    API_VERSION,
    CliError,
    ContextOpt,
    NamespaceOpt,
    Target,
    connect,
    fetch_list,
)
from shoal.cli.output import (
    Format,
    OutputOpt,
    conditions_rows,
    created_age,
    dig,
    labels_text,
    print_data,
    print_kv,
    print_list,
    print_object,
    print_section,
)
from shoal.cli.removal import delete_each
from shoal.cli.wait import follow, phase_text, vm_reaches
from shoal.client import Obj
from shoal.columns import TABLES, vm_phase, vm_ports
from shoal.errors import ApiError

PLURAL = "virtualmachines"

app = typer.Typer(help="Deploy and manage VirtualMachines.", no_args_is_help=True)

WaitOpt = Annotated[bool, typer.Option("--wait", help="Wait until the operation is complete.")]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="Seconds to wait with --wait before giving up.")
]
NameArg = Annotated[str, typer.Argument(help="Name of the VM.", show_default=False)]


# -- columns -------------------------------------------------------------------------------

TABLE = TABLES["VirtualMachine"]
COLUMNS = TABLE.columns
WIDE = TABLE.wide


def describe(vm: Obj) -> None:
    spec, status = vm.get("spec") or {}, vm.get("status") or {}
    pairs = [
        ("Name", vm["metadata"]["name"]),
        ("Namespace", vm["metadata"].get("namespace", "")),
        ("Labels", labels_text(vm["metadata"].get("labels"))),
        ("Phase", vm_phase(vm)),
        ("Reason", status.get("reason") or ""),
        ("Message", status.get("message") or ""),
        ("Node", spec.get("nodeName") or "<none>"),
        ("Image", spec.get("image", "")),
        ("Config", spec.get("config") or "<none>"),
        ("CPU", str(spec.get("cpu", ""))),
        ("Memory", str(spec.get("memory", ""))),
        ("Disk", str(spec.get("disk", ""))),
        ("OS", f"{spec.get('os', '')}/{spec.get('arch', '')}"),
        ("Power state", spec.get("powerState", "")),
        ("Node selector", labels_text(spec.get("nodeSelector"))),
        ("Ports", vm_ports(vm)),
        ("Addresses", ",".join(status.get("addresses") or []) or "<none>"),
        ("Ephemeral", str(bool(spec.get("ephemeral"))).lower()),
        ("TTL", f"{spec['ttlSeconds']}s" if spec.get("ttlSeconds") else "<none>"),
        ("Priority", str(spec.get("priority", 0))),
        ("Restarts", str(status.get("restartCount", 0))),
        ("Age", created_age(vm)),
    ]
    print_kv(pairs)
    print_section("Conditions", ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], conditions_rows(vm))


# -- commands ------------------------------------------------------------------------------


@app.command()
def deploy(
    name: Annotated[
        str | None,
        typer.Argument(help="Name of the VM (or use --generate-name).", show_default=False),
    ] = None,
    image: vmspec.ImageOpt = None,
    cpu: vmspec.CpuOpt = None,
    memory: vmspec.MemoryOpt = None,
    disk: vmspec.DiskOpt = None,
    os: vmspec.OsOpt = None,
    arch: vmspec.ArchOpt = None,
    config: Annotated[
        str | None,
        typer.Option("--config", help="VMConfig to start from; flags given override its values."),
    ] = None,
    generate_name: Annotated[
        str | None,
        typer.Option("--generate-name", help="Name prefix; the server adds a random suffix."),
    ] = None,
    selector: vmspec.SelectorOpt = None,
    port: vmspec.PortOpt = None,
    ephemeral: vmspec.EphemeralOpt = None,
    ttl: vmspec.TtlOpt = None,
    priority: vmspec.PriorityOpt = None,
    label: vmspec.LabelOpt = None,
    startup_script: vmspec.StartupScriptOpt = None,
    access_secret: vmspec.AccessSecretOpt = None,
    access_user: vmspec.AccessUserOpt = None,
    env: vmspec.EnvOpt = None,
    env_secret: vmspec.EnvSecretOpt = None,
    delete_when_script_exits: vmspec.DeleteWhenScriptExitsOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the VM is Running.")] = False,
    timeout: TimeoutOpt = 600.0,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Create a VirtualMachine; with --wait, follow it until it runs."""
    if not image and not config:
        raise CliError("--image is required (unless --config names a VMConfig that sets it)")
    flags = vmspec.SpecFlags(
        image=image,
        cpu=cpu,
        memory=memory,
        disk=disk,
        os=os,
        arch=arch,
        selector=selector or [],
        ports=port or [],
        ephemeral=ephemeral,
        ttl=ttl,
        priority=priority,
        startup_script=startup_script,
        access_secret=access_secret,
        access_user=access_user,
        env=env or [],
        env_secrets=env_secret or [],
        delete_when_script_exits=delete_when_script_exits,
    )
    spec = vmspec.build_spec(flags)
    if config:
        spec["config"] = config
    body = {
        "apiVersion": API_VERSION,
        "kind": "VirtualMachine",
        "metadata": vmspec.build_metadata(name, generate_name, label),
        "spec": spec,
    }
    with connect(context, namespace) as target:
        vm = target.client.create(PLURAL, body, target.namespace)
        created = vm["metadata"]["name"]
        if wait:
            vm = wait_phase(target, vm, "Running", timeout)
    if output in (Format.json, Format.yaml):
        print_data(vm, output)
    else:
        typer.echo(created)


def wait_phase(
    target: Target, vm: Obj, phase: str, timeout: float, *, gone_ok: bool = False
) -> Obj:
    name = vm["metadata"]["name"]
    objects = follow(
        target.client,
        PLURAL,
        target.namespace,
        field_selector=f"metadata.name={name}",
        judge=vm_reaches(name, phase, deleted_ok=gone_ok),
        timeout=timeout,
        title=f"waiting for VM {name} to be {phase}",
        initial=([vm], str(vm["metadata"].get("resourceVersion") or "")),
    )
    return next(iter(objects.values()), vm)


@app.command("list")
def list_(
    selector: Annotated[
        str | None,
        typer.Option("--selector", "-l", help="Label selector, e.g. team=ios,env!=prod."),
    ] = None,
    field_selector: Annotated[
        str | None,
        typer.Option("--field-selector", help="Field selector, e.g. spec.nodeName=mac-1."),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="List VMs in every namespace.")
    ] = False,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """List VirtualMachines."""
    with connect(context, namespace) as target:
        listing = fetch_list(
            target.client,
            PLURAL,
            None if all_namespaces else target.namespace,
            labelSelector=selector,
            fieldSelector=field_selector,
        )
    first = TABLE.first(all_namespaces=all_namespaces, wide=output is Format.wide)
    print_list(listing, output, COLUMNS, WIDE, first=first)


@app.command()
def get(
    name: NameArg,
    output: OutputOpt = Format.table,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Show one VirtualMachine, with its status message and conditions."""
    with connect(context, namespace) as target:
        vm = target.client.get(PLURAL, name, target.namespace)
    print_object(vm, output, describe)


@app.command()
def delete(
    names: Annotated[list[str], typer.Argument(help="Names of the VMs.", show_default=False)],
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the VMs are gone.")] = False,
    timeout: TimeoutOpt = 600.0,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Delete VirtualMachines (gracefully: the agent releases their disks first)."""
    with connect(context, namespace) as target:
        delete_each(target, PLURAL, "VM", names, target.namespace, wait=wait, timeout=timeout)


def _power(
    action: str, phase: str, names: list[str], wait: bool, timeout: float, target: Target
) -> None:
    """Ask for the action on every VM, then wait for each; report failures and exit 1 if any."""
    deadline = time.monotonic() + timeout
    requested: list[Obj] = []
    failed = False
    for name in names:
        try:
            vm = target.client.action(PLURAL, name, action, target.namespace)
        except ApiError as error:
            typer.echo(f"error: {error.message}", err=True)
            failed = True
            continue
        requested.append(vm)
        if not wait:
            typer.echo(f"VM {name}: {action} requested ({phase_text(vm)})")
    for vm in requested if wait else []:
        gone_ok = action == "stop" and bool(dig(vm, "spec.ephemeral"))
        remaining = max(0.0, deadline - time.monotonic())
        final = wait_phase(target, vm, phase, remaining, gone_ok=gone_ok)
        typer.echo(f"VM {vm['metadata']['name']} is {dig(final, 'status.phase', phase)}")
    if failed:
        raise typer.Exit(1)


def _action_command(action: str, phase: str, doc: str) -> None:
    def command(
        names: Annotated[list[str], typer.Argument(help="Names of the VMs.", show_default=False)],
        wait: Annotated[
            bool, typer.Option("--wait", help=f"Wait until every VM's phase is {phase}.")
        ] = False,
        timeout: TimeoutOpt = 600.0,
        context: ContextOpt = None,
        namespace: NamespaceOpt = None,
    ) -> None:
        with connect(context, namespace) as target:
            _power(action, phase, names, wait, timeout, target)

    command.__doc__ = doc
    app.command(action)(command)


_action_command("start", "Running", "Start VMs (power state Running).")
_action_command("stop", "Stopped", "Stop VMs (an ephemeral VM is deleted once stopped).")
_action_command("suspend", "Suspended", "Suspend running VMs, keeping their memory state.")
_action_command("resume", "Running", "Resume suspended VMs.")
