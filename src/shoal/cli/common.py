"""What every command shares: target selection (context, namespace), the client, errors."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from shoal.client import API, Client, Context, Contexts, Obj

API_VERSION = "shoal.dev/v1"
NO_CONTEXT = "no context: run `shoal context add` or `shoal dev`"


class CliError(Exception):
    """A problem found on the client side; printed as `error: <message>`, exit code 1."""


ContextOpt = Annotated[
    str | None,
    typer.Option(
        "--context",
        envvar="SHOAL_CONTEXT",
        help="Context (server and credentials) to use; default: the current context.",
        show_default=False,
    ),
]
NamespaceOpt = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        "-n",
        help="Namespace to act in; default: the context's namespace.",
        show_default=False,
    ),
]


# A context given to this process from elsewhere (the `kubectl shoal` plugin: kubectl's current
# context); it stands for the current one. Child CLI processes (ssh's ProxyCommand) are started
# through the module that gave it, so that they find it too.
_given: tuple[str, Context] | None = None
_cli_module = "shoal"


def use_context(name: str, context: Context, module: str) -> None:
    global _given, _cli_module
    _given, _cli_module = (name, context), module


def cli_module() -> str:
    """The module to run (`python -m MODULE`) for a child process of this CLI."""
    return _cli_module


def load_context(name: str | None) -> tuple[str, Context]:
    if _given is not None and name is None:
        return _given
    contexts = Contexts.load()
    chosen = name or contexts.current
    if not chosen:
        raise CliError(NO_CONTEXT)
    context = contexts.contexts.get(chosen)
    if context is None:
        if name:
            known = ", ".join(sorted(contexts.contexts)) or "none"
            raise CliError(f"context {name!r} not found (known: {known})")
        raise CliError(f"current context {chosen!r} is missing from {Contexts.path()}")
    return chosen, context


@dataclass
class Target:
    """A connected client and the namespace the command acts in."""

    client: Client
    namespace: str
    context: str

    def request(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        return self.client.request(method, API + path, body=body, params=params or None)


@contextmanager
def connect(context: str | None = None, namespace: str | None = None) -> Iterator[Target]:
    name, ctx = load_context(context)
    client = Client.from_context(ctx)
    try:
        yield Target(client, namespace or ctx.namespace or "default", name)
    finally:
        client.close()


def fetch_list(client: Client, plural: str, namespace: str | None, **params: Any) -> Obj:
    """The whole list object, following continue tokens like `Client.list_all`, but keeping the
    envelope (kind, metadata.resourceVersion) of the first page so output and watches can use
    it."""
    params = {k: v for k, v in params.items() if v is not None}
    first: Obj | None = None
    items: list[Obj] = []
    cont: str | None = None
    while True:
        page = client.list(plural, namespace, limit=500, **{"continue": cont}, **params)
        if first is None:
            first = page
        items.extend(page.get("items") or [])
        cont = (page.get("metadata") or {}).get("continue")
        if not cont:
            break
    assert first is not None
    metadata = {k: v for k, v in (first.get("metadata") or {}).items() if k != "continue"}
    return {**first, "metadata": metadata, "items": items}


def scope(target: Target, all_namespaces: bool) -> str | None:
    return None if all_namespaces else target.namespace


def load_object_file(path: Path, kind: str) -> Obj:
    """An object of kind from a YAML or JSON file ('-': stdin): a whole object, or just its
    spec."""
    try:
        text = typer.get_text_stream("stdin").read() if str(path) == "-" else path.read_text()
        data = yaml.safe_load(text)
    except OSError as error:
        raise CliError(f"-f {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise CliError(f"-f {path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise CliError(f"-f {path}: expected a {kind} object (a mapping)")
    if "spec" not in data:
        data = {"spec": data}
    data.setdefault("apiVersion", API_VERSION)
    data.setdefault("kind", kind)
    data.setdefault("metadata", {})
    return data
