"""`shoal admin backup|restore`: a controller's database to a file and back (shoal.store.backup).

These run on the controller's host against its database, not through the API: they take the
controller's --data-dir / --database-url / --encryption-key-file and mean the same by them.
"""

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated

import typer

from shoal.cli.common import CliError

if TYPE_CHECKING:
    from shoal.server import ControllerSettings
    from shoal.store.store import Store

# The server side (SQLAlchemy, the controller's settings) is imported inside each command, so
# that the client commands of the CLI start fast.

app = typer.Typer(
    help="Back up and restore a controller's database (run on the controller's host).",
    no_args_is_help=True,
)

STDIO = "-"
FileArg = Annotated[
    str, typer.Argument(help="The backup file; '-' for standard output / input.", metavar="FILE")
]
DataDirOpt = Annotated[
    Path,
    typer.Option(help="The controller's data dir: its SQLite database and encryption key."),
]
DatabaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        help="SQLAlchemy URL of the controller's database, e.g. "
        "postgresql+psycopg://user:pw@host/db; default SQLite in DATA_DIR.",
        show_default=False,
    ),
]


def _settings(
    data_dir: Path, database_url: str | None, key_file: Path | None = None
) -> "ControllerSettings":
    from shoal.server import ControllerSettings

    return ControllerSettings(
        data_dir=data_dir.resolve(),
        database_url=database_url,
        encryption_key_file=key_file.resolve() if key_file else None,
    )


@contextlib.contextmanager
def _store(settings: "ControllerSettings", *, with_key: bool = False) -> Iterator["Store"]:
    """The controller's store (migrated to this shoal's schema, as a controller would), with its
    encryption key when with_key and there is one (an explicit key file must exist)."""
    import sqlalchemy as sa

    from shoal.store.sealing import KeyFileError, Sealer, load_key_file
    from shoal.store.store import Store

    sealer: Sealer | None = None
    try:
        if with_key and (settings.encryption_key_file or settings.key_file.exists()):
            sealer = load_key_file(settings.key_file, create=False)
        store = Store(settings.store_url, sealer=sealer)
    except KeyFileError as error:
        raise CliError(str(error)) from None
    except sa.exc.SQLAlchemyError as error:
        raise CliError(f"cannot open the database {_shown(settings)}: {error}") from None
    try:
        yield store
    finally:
        store.close()


def _shown(settings: "ControllerSettings") -> str:
    """The database, for messages: a URL without its password."""
    import sqlalchemy as sa

    return sa.engine.make_url(settings.store_url).render_as_string(hide_password=True)


class _Progress:
    """Rows done, on standard error: one line rewritten on a terminal, else a line each time."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.tty = sys.stderr.isatty()
        self.shown = False

    def __call__(self, rows: int) -> None:
        self.shown = True
        start = "\r" if self.tty else ""
        typer.echo(f"{start}{self.what}: {rows} rows", err=True, nl=not self.tty)

    def done(self) -> None:
        if self.shown and self.tty:
            typer.echo("", err=True)


@contextlib.contextmanager
def _output(path: str) -> Iterator[IO[bytes]]:
    """Where the backup goes: standard output, or a file written beside path (mode 0600, it
    holds token hashes) and renamed over it once whole, so a failed backup leaves no file."""
    if path == STDIO:
        yield sys.stdout.buffer
        return
    target = Path(path)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as error:
        raise CliError(f"{path}: {error.strerror or error}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


@app.command()
def backup(
    file: FileArg,
    data_dir: DataDirOpt = Path("/var/lib/shoal"),
    database_url: DatabaseUrlOpt = None,
) -> None:
    """Write a consistent snapshot of the controller's database (objects and tokens) to FILE.

    Runs while controllers keep serving. Secrets stay encrypted in the file: keep the
    encryption key file (DATA_DIR/encryption.key) with the backup, a restore needs it.
    """
    import sqlalchemy as sa

    from shoal.store.backup import backup as take_backup

    settings = _settings(data_dir, database_url)
    if settings.database_url is None and not (settings.data_dir / "shoal.db").exists():
        raise CliError(
            f"there is no database in {settings.data_dir}: give the controller's --data-dir, "
            "or --database-url"
        )
    progress = _Progress("backed up")
    with _store(settings) as store, _output(file) as out:
        try:
            info = take_backup(store, out, progress)
        except sa.exc.SQLAlchemyError as error:
            raise CliError(f"reading {_shown(settings)}: {error}") from None
        except OSError as error:
            raise CliError(f"writing {file}: {error.strerror or error}") from None
    progress.done()
    where = "standard output" if file == STDIO else file
    typer.echo(
        f"backed up {info.objects} objects, {info.tokens} tokens at resourceVersion "
        f"{info.resource_version} to {where}",
        err=file == STDIO,
    )
    if info.encryption_keys:
        typer.echo(
            f"its Secrets are sealed with encryption key {', '.join(info.encryption_keys)}: "
            f"a restore needs that key file (by default {settings.key_file}): keep it with the backup",
            err=file == STDIO,
        )


@app.command()
def restore(
    file: FileArg,
    data_dir: DataDirOpt = Path("/var/lib/shoal"),
    database_url: DatabaseUrlOpt = None,
    encryption_key_file: Annotated[
        Path | None,
        typer.Option(
            help="The key the backup's Secrets were sealed with: the backed-up controller's key "
            "file. Default: DATA_DIR/encryption.key.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(help="Replace the objects and tokens the database holds already."),
    ] = False,
    bump_resource_version: Annotated[
        int,
        typer.Option(
            min=0,
            help="How far past the backup's resourceVersion the restored controller numbers "
            "on: more than the writes made after the backup, so that no client resumes from a "
            "version it saw before.",
        ),
    ] = 1_000_000_000,
) -> None:
    """Load a backup from FILE into a controller's database, in one transaction.

    Stop every controller on the database first, and start them after. The database must be
    empty (a new data dir or database) unless --force. Watches and agents that resume from a
    version seen before the restore get 410 Gone and list again.
    """
    import sqlalchemy as sa

    from shoal.store.backup import BackupError
    from shoal.store.backup import restore as load_backup

    settings = _settings(data_dir, database_url, encryption_key_file)
    try:
        source = sys.stdin.buffer if file == STDIO else Path(file).open("rb")  # noqa: SIM115
    except OSError as error:
        raise CliError(f"{file}: {error.strerror or error}") from None
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    progress = _Progress("restored")
    with source, _store(settings, with_key=True) as store:
        try:
            info = load_backup(store, source, progress, force=force, bump=bump_resource_version)
        except BackupError as error:
            raise CliError(f"{file}: {error}") from None
        except OSError as error:
            raise CliError(f"{file}: {error.strerror or error}") from None
        except sa.exc.SQLAlchemyError as error:
            raise CliError(f"writing {_shown(settings)}: {error}") from None
    progress.done()
    typer.echo(
        f"restored {info.objects} objects, {info.tokens} tokens from resourceVersion "
        f"{info.backup_version} into {_shown(settings)}; resourceVersions go on from "
        f"{info.resource_version}"
    )
