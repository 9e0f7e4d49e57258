"""`shoal dev`, `shoal controller` and `shoal agent`: the long-running processes."""

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import Annotated

import typer

from shoal import eventloop
from shoal.cli.controllerstatus import controller_status
from shoal.controllers import LEADER_TTL
from shoal.quantity import parse_bytes

# The server side (FastAPI, SQLAlchemy, uvicorn) is imported inside each command, so that the
# client commands of the CLI start fast.


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise typer.BadParameter(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _labels(values: list[str]) -> dict[str, str]:
    labels = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"label {value!r} is not key=value")
        labels[key] = val
    return labels


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per request drowns what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _size(value: str) -> int:
    try:
        return parse_bytes(value)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def _budget(value: str | None) -> int | None:
    return None if value is None else _size(value)


ImageCacheBudgetOpt = Annotated[
    str | None,
    typer.Option(
        help="Bytes of OCI images each qemu node keeps in its image cache (e.g. 200Gi); least "
        "recently used images beyond it are evicted, never one a VM uses. Default: no limit.",
        show_default=False,
    ),
]


def register(app: typer.Typer) -> None:
    @app.command()
    def dev(
        data_dir: Annotated[
            Path, typer.Option(help="Where the database, tokens and VM state live.")
        ] = Path(".shoal-dev"),
        listen: Annotated[
            str, typer.Option(help="HOST:PORT to serve on (loopback only).")
        ] = "127.0.0.1:8420",
        tls: Annotated[
            bool,
            typer.Option(
                help="Serve HTTPS with a CA of its own (in DATA_DIR/tls; the CLI context pins "
                "it). kubectl sends tokens only over HTTPS."
            ),
        ] = False,
        backend: Annotated[
            str, typer.Option(help="auto (qemu when QEMU runs guests here, else sim), sim or qemu.")
        ] = "auto",
        nodes: Annotated[
            int, typer.Option(min=1, max=1000, help="How many local agents (nodes) to run.")
        ] = 1,
        accel: Annotated[
            str,
            typer.Option(
                help="QEMU accelerator: auto (a probe guest decides: KVM/HVF only when clearly "
                "faster than emulation), or kvm, hvf, tcg (forced, not probed)."
            ),
        ] = "auto",
        node_cpu: Annotated[
            int | None,
            typer.Option(
                min=1,
                help="vCPUs each qemu node offers (default: the host's cores less the reserve; "
                "more than the host has overcommits).",
            ),
        ] = None,
        max_vms: Annotated[
            int, typer.Option(min=1, help="VMs each qemu node may hold at once.")
        ] = 8,
        image_cache_budget: ImageCacheBudgetOpt = None,
        sim_cpu: Annotated[int, typer.Option(min=1, help="vCPUs of each simulated node.")] = 8,
        sim_memory: Annotated[str, typer.Option(help="Memory of each simulated node.")] = "16Gi",
        sim_vms: Annotated[int, typer.Option(min=1, help="VMs each simulated node may hold.")] = 8,
        sim_boot_delay: Annotated[
            float, typer.Option(min=0, help="Seconds a simulated VM takes to boot.")
        ] = 0.5,
        sim_ports_to_host: Annotated[
            bool,
            typer.Option(
                help="Tunnels to a simulated VM's port P reach port P on this host's loopback "
                "(for tests and benchmarks of tunnels).",
            ),
        ] = False,
        sim_guest_shell: Annotated[
            bool,
            typer.Option(
                help="A simulated VM's guest runs exec and startup-script commands as local "
                "processes on this host (for tests and benchmarks of runner pools; never on a "
                "shared node).",
            ),
        ] = False,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    ) -> None:
        """Run a controller and local agents in one process, for a laptop or a single host.

        Writes DATA_DIR/admin.token, DATA_DIR/encryption.key (the key Secrets are encrypted
        with) and a CLI context named `dev`, which it makes current.
        """
        from shoal.backends.qemu import QemuSettings
        from shoal.backends.sim import SimSettings
        from shoal.dev import DevSettings, check_loopback, run_dev

        _logging(verbose)
        host, port = _listen(listen)
        try:
            check_loopback(host)
        except ValueError as error:
            raise typer.BadParameter(str(error)) from None
        settings = DevSettings(
            data_dir=data_dir.resolve(),
            host=host,
            port=port,
            backend=backend,
            nodes=nodes,
            tls=tls,
            sim=SimSettings(
                boot_delay=sim_boot_delay,
                cpu=sim_cpu,
                memory=_size(sim_memory),
                max_vms=sim_vms,
                ports_to_host=sim_ports_to_host,
                guest_shell_dir=data_dir.resolve() / "sim-guests" if sim_guest_shell else None,
            ),
            qemu=QemuSettings(
                state_dir=Path("."),
                accelerator=accel,
                cpu=node_cpu,
                max_vms=max_vms,
                image_cache_budget=_budget(image_cache_budget),
            ),
        )
        try:
            asyncio.run(run_dev(settings, lambda text: typer.echo(text)))
        except ValueError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            pass

    controller_app = typer.Typer(
        invoke_without_command=True,
        help="Run the controller (REST API, scheduler and housekeeping loops); `status` shows "
        "its replicas and which one leads.",
    )
    app.add_typer(controller_app, name="controller")
    controller_app.command("status")(controller_status)

    @controller_app.callback()
    def controller(
        ctx: typer.Context,
        data_dir: Annotated[
            Path,
            typer.Option(
                help="Database (SQLite), TLS material, the admin token and the encryption key."
            ),
        ] = Path("/var/lib/shoal"),
        listen: Annotated[str, typer.Option(help="HOST:PORT to serve on.")] = "0.0.0.0:8420",
        database_url: Annotated[
            str | None,
            typer.Option(
                help="SQLAlchemy URL, e.g. postgresql+psycopg://user:pw@host/db; default SQLite in DATA_DIR."
            ),
        ] = None,
        tls: Annotated[
            bool, typer.Option(help="Serve HTTPS (a self-signed CA is made at first start).")
        ] = True,
        tls_cert: Annotated[Path | None, typer.Option(help="Your own certificate (PEM).")] = None,
        tls_key: Annotated[Path | None, typer.Option(help="Its private key (PEM).")] = None,
        tls_san: Annotated[
            list[str] | None, typer.Option(help="Extra DNS name or IP for the made certificate.")
        ] = None,
        node_grace: Annotated[
            float,
            typer.Option(min=0.1, help="Seconds without a heartbeat before a node is NotReady."),
        ] = 40.0,
        eviction_timeout: Annotated[
            float,
            typer.Option(
                min=0,
                help="Seconds a node stays NotReady before its VMs fail or are rescheduled.",
            ),
        ] = 300.0,
        tunnel_idle_timeout: Annotated[
            float,
            typer.Option(min=1, help="Seconds a tunnel may carry nothing before it is closed."),
        ] = 3600.0,
        encryption_key_file: Annotated[
            Path | None,
            typer.Option(
                help="The key Secrets are encrypted at rest with (base64 of 32 bytes); it must "
                "exist. Default: DATA_DIR/encryption.key, made (0600) at first start. Every "
                "controller on one database needs the same key.",
                show_default=False,
            ),
        ] = None,
        replica: Annotated[
            str | None,
            typer.Option(
                help="This replica's name among the controllers on one database (default "
                "HOST:PORT:PID).",
                show_default=False,
            ),
        ] = None,
        advertise_address: Annotated[
            str | None,
            typer.Option(
                help="HOST:PORT agents reach this replica at (they hold a tunnel channel to every "
                "replica); default the --listen address, or this host's name for 0.0.0.0.",
                show_default=False,
            ),
        ] = None,
        leader_ttl: Annotated[
            float,
            typer.Option(
                min=1.0,
                help="Seconds the leader lease lasts: the leader renews it every third of that; "
                "another replica takes over once it lapses.",
            ),
        ] = LEADER_TTL,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    ) -> None:
        """Run the controller: REST API, scheduler and housekeeping loops. Several replicas on
        one PostgreSQL database serve the API alike; the holder of the leader lease runs the
        loops."""
        if ctx.invoked_subcommand is not None:
            return
        from shoal.dev import check_loopback, run_controller
        from shoal.server import ControllerSettings
        from shoal.store.sealing import KeyFileError

        _logging(verbose)
        host, port = _listen(listen)
        if (tls_cert is None) != (tls_key is None):
            raise typer.BadParameter("--tls-cert and --tls-key go together")
        if not tls:
            try:
                check_loopback(host)
            except ValueError:
                raise typer.BadParameter("--no-tls is allowed on loopback only") from None
        settings = ControllerSettings(
            data_dir=data_dir.resolve(),
            database_url=database_url,
            host=host,
            port=port,
            tls=tls,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_sans=list(tls_san or []),
            node_grace_seconds=node_grace,
            eviction_timeout_seconds=eviction_timeout,
            tunnel_idle_timeout=tunnel_idle_timeout,
            encryption_key_file=encryption_key_file.resolve() if encryption_key_file else None,
            replica=replica,
            leader_ttl=leader_ttl,
            advertise_address=advertise_address,
        )
        try:
            with contextlib.suppress(KeyboardInterrupt):
                eventloop.run(run_controller(settings, lambda text: typer.echo(text)))
        except KeyFileError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None

    @app.command()
    def agent(
        server: Annotated[str, typer.Option(help="The controller's URL.")],
        join_token: Annotated[
            str | None,
            typer.Option(
                envvar="SHOAL_JOIN_TOKEN",
                help="From `shoal node join-token create`; not needed once joined.",
            ),
        ] = None,
        name: Annotated[
            str | None, typer.Option(help="Node name (default: this host's name).")
        ] = None,
        backend: Annotated[
            str,
            typer.Option(
                help="sim, qemu, tart, or auto (qemu when QEMU runs guests here, else sim)."
            ),
        ] = "sim",
        replicas: Annotated[
            int,
            typer.Option(
                min=1, max=5000, help="Simulated nodes to run in this process (NAME-1..N)."
            ),
        ] = 1,
        state_dir: Annotated[Path, typer.Option(help="Credentials and VM state.")] = Path(
            "/var/lib/shoal-agent"
        ),
        heartbeat_interval: Annotated[
            float, typer.Option(min=0.1, help="Seconds between heartbeats.")
        ] = 10.0,
        label: Annotated[
            list[str] | None,
            typer.Option(help="Node label key=value (a tag the scheduler matches)."),
        ] = None,
        sim_cpu: Annotated[int, typer.Option(min=1, help="vCPUs of each simulated node.")] = 8,
        sim_memory: Annotated[str, typer.Option(help="Memory of each simulated node.")] = "16Gi",
        sim_vms: Annotated[int, typer.Option(min=1, help="VMs each simulated node may hold.")] = 8,
        sim_boot_delay: Annotated[
            float, typer.Option(min=0, help="Seconds a simulated VM takes to boot.")
        ] = 0.5,
        sim_ports_to_host: Annotated[
            bool,
            typer.Option(
                help="Tunnels to a simulated VM's port P reach port P on this host's loopback "
                "(for tests and benchmarks of tunnels).",
            ),
        ] = False,
        sim_guest_shell: Annotated[
            bool,
            typer.Option(
                help="A simulated VM's guest runs exec and startup-script commands as local "
                "processes on this host (for tests and benchmarks of runner pools; never on a "
                "shared node).",
            ),
        ] = False,
        accel: Annotated[
            str,
            typer.Option(
                help="QEMU accelerator: auto (a probe guest decides: KVM/HVF only when clearly "
                "faster than emulation), or kvm, hvf, tcg (forced, not probed)."
            ),
        ] = "auto",
        node_cpu: Annotated[
            int | None,
            typer.Option(
                min=1,
                help="vCPUs each qemu node offers (default: the host's cores less the reserve; "
                "more than the host has overcommits).",
            ),
        ] = None,
        max_vms: Annotated[
            int, typer.Option(min=1, help="VMs this node may run at once (qemu).")
        ] = 8,
        cpu_reserve: Annotated[
            int, typer.Option(min=0, help="Host cores kept out of the node's capacity (qemu).")
        ] = 0,
        memory_reserve: Annotated[
            str, typer.Option(help="Host memory kept out of the node's capacity (qemu).")
        ] = "1Gi",
        network: Annotated[
            str,
            typer.Option(help="Guest network (qemu): user, bridge:<bridge> or tap:<interface>."),
        ] = "user",
        node_address: Annotated[
            str,
            typer.Option(help="Address node-port mappings (a VM's ports[].node) listen on (qemu)."),
        ] = "0.0.0.0",
        boot_timeout: Annotated[
            float,
            typer.Option(min=1, help="Seconds a guest may take to answer SSH before it Fails."),
        ] = 600.0,
        stop_timeout: Annotated[
            float, typer.Option(min=0, help="Seconds a guest gets to power off before it is quit.")
        ] = 30.0,
        uefi_code: Annotated[
            str | None, typer.Option(help="OVMF code file, for UEFI and macOS guests (qemu).")
        ] = None,
        opencore: Annotated[
            str | None, typer.Option(help="OpenCore boot disk, for macOS guests (qemu).")
        ] = None,
        apple_osk_file: Annotated[
            Path | None,
            typer.Option(help="File holding the Apple SMC key, for macOS guests (qemu)."),
        ] = None,
        image_cache_budget: ImageCacheBudgetOpt = None,
        tart_binary: Annotated[str, typer.Option(help="The tart executable (tart).")] = "tart",
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    ) -> None:
        """Run an agent: join the controller, heartbeat, and run the VMs bound to this node."""
        from shoal.agent.runner import AgentPlan, run_agents
        from shoal.backends.choose import BackendOptions, choose
        from shoal.backends.qemu import QemuSettings
        from shoal.backends.sim import SimSettings

        _logging(verbose)
        if replicas > 1 and backend != "sim":
            raise typer.BadParameter("--replicas is for simulated nodes (--backend sim)")
        base = name or socket.gethostname().split(".")[0].lower()
        names = [base] if replicas == 1 else [f"{base}-{i}" for i in range(1, replicas + 1)]
        sim = SimSettings(
            boot_delay=sim_boot_delay,
            cpu=sim_cpu,
            memory=_size(sim_memory),
            max_vms=sim_vms,
            ports_to_host=sim_ports_to_host,
            guest_shell_dir=state_dir.resolve() / "sim-guests" if sim_guest_shell else None,
        )
        options = BackendOptions(
            backend,
            sim,
            QemuSettings(
                state_dir=Path("."),
                accelerator=accel,
                cpu=node_cpu,
                network=network,
                node_address=node_address,
                boot_timeout=boot_timeout,
                stop_timeout=stop_timeout,
                uefi_code=uefi_code,
                opencore=opencore,
                apple_osk=apple_osk_file.read_text().strip() if apple_osk_file else None,
                guest_os=("linux", "macos") if opencore else ("linux",),
                max_vms=max_vms,
                cpu_reserve=cpu_reserve,
                memory_reserve=_size(memory_reserve),
                image_cache_budget=_budget(image_cache_budget),
            ),
            tart_binary,
        )
        try:
            choice = asyncio.run(choose(options, state_dir.resolve()))
        except ValueError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"backend: {choice.reason}", err=True)
        plan = AgentPlan(
            server=server.rstrip("/"),
            names=names,
            backend_factory=choice.factory,
            state_dir=state_dir.resolve(),
            join_token=join_token,
            heartbeat_interval=heartbeat_interval,
            labels=_labels(label or []),
        )
        try:
            asyncio.run(run_agents(plan))
        except ValueError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            pass
