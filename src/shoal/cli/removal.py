"""Deleting objects by name, reporting each, and optionally waiting until they are gone."""

import time

import typer

from shoal.cli.common import Target
from shoal.cli.output import dig
from shoal.cli.wait import Objects, all_gone, follow
from shoal.client import Obj
from shoal.errors import ApiError


def terminating_text(objects: Objects) -> str:
    obj = next(iter(objects.values()))
    phase = dig(obj, "status.phase") or "Terminating"
    message = dig(obj, "status.message")
    finalizers = ",".join(dig(obj, "metadata.finalizers", []))
    text = f"{phase}: {message}" if message else str(phase)
    return f"{text} (finalizers: {finalizers})" if finalizers else text


def wait_gone(
    target: Target, plural: str, noun: str, obj: Obj, namespace: str | None, timeout: float
) -> None:
    """Follow obj (as the delete answered it) until the watch reports it DELETED."""
    name = obj["metadata"]["name"]
    follow(
        target.client,
        plural,
        namespace,
        field_selector=f"metadata.name={name}",
        judge=all_gone(terminating_text),
        timeout=timeout,
        title=f"waiting for {noun} {name} to be gone",
        initial=([obj], str(obj["metadata"].get("resourceVersion") or "")),
    )


def delete_each(
    target: Target,
    plural: str,
    noun: str,
    names: list[str],
    namespace: str | None,
    *,
    wait: bool = False,
    timeout: float = 600.0,
) -> None:
    """Delete every name; report failures one by one and exit 1 if any failed."""
    deadline = time.monotonic() + timeout
    failed = False
    marked: list[Obj] = []
    for name in names:
        try:
            obj = target.client.delete(plural, name, namespace)
        except ApiError as error:
            typer.echo(f"error: {error.message}", err=True)
            failed = True
            continue
        if dig(obj, "metadata.deletionTimestamp"):
            typer.echo(f"{noun} {name} is being deleted")
            marked.append(obj)
        else:
            typer.echo(f"{noun} {name} deleted")
    if wait:
        for obj in marked:
            remaining = max(0.0, deadline - time.monotonic())
            wait_gone(target, plural, noun, obj, namespace, remaining)
            typer.echo(f"{noun} {obj['metadata']['name']} is gone")
    if failed:
        raise typer.Exit(1)
