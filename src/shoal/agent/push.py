"""`shoal vm push` on the agent: copy the VM's disk out (the backend pauses the guest while it
reads), then push it as a shoal image with the images library, reporting progress as it goes.

Progress and the result travel as newline-delimited JSON in binary frames of the stream the
controller opened: {"phase", "done", "total"} while working, then {"digest", "reference"}."""

import asyncio
import contextlib
import json
import shutil
from typing import Any

from shoal.backends.base import Backend, BackendError, HasDiskExport
from shoal.images import credentials, registry
from shoal.images.errors import ImageError
from shoal.images.layout import Metadata
from shoal.images.push import push_image
from shoal.images.reference import parse

PROGRESS_EVERY = 0.25  # seconds between progress frames


class PushRefused(Exception):
    """The push cannot start or failed; the message goes to the client."""


def _line(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode() + b"\n"


async def serve_push(stream: Any, backend: Backend, request: dict[str, Any]) -> None:
    """Run one push, sending progress frames down stream; PushRefused says why it failed."""
    if not isinstance(backend, HasDiskExport):
        raise PushRefused(f"the {getattr(backend, 'name', '?')} backend cannot export disks")
    try:
        ref = parse(str(request.get("reference")))
        ref.require_host()
    except ImageError as error:
        raise PushRefused(str(error)) from None
    user, password = request.get("username"), request.get("password")
    creds = (
        (str(user), str(password))
        if user and password is not None
        else credentials.lookup(ref.require_host())
    )
    await stream.send(_line({"phase": "reading the disk", "done": 0, "total": 0}))
    try:
        exported = await backend.export_disk(str(request.get("vm")))
    except BackendError as error:
        raise PushRefused(f"cannot read the VM's disk: {error}") from None
    scratch = exported.scratch
    try:
        try:
            metadata = Metadata(**exported.metadata)
        except ValueError as error:
            raise PushRefused(f"the VM's image metadata is not valid: {error}") from None
        loop = asyncio.get_running_loop()
        latest: dict[str, int] = {"done": 0, "total": 0}

        def progress(done: int, total: int) -> None:
            latest["done"], latest["total"] = done, total

        def push() -> Any:
            client = registry.client_for(
                ref, credentials=creds, insecure=bool(request.get("insecure"))
            )
            try:
                return push_image(
                    client,
                    ref,
                    exported.disk,
                    metadata,
                    kernel=exported.kernel,
                    initrd=exported.initrd,
                    disk_format="raw",
                    workdir=scratch,
                    progress=progress,
                )
            finally:
                with contextlib.suppress(Exception):
                    client.close()

        pushing = loop.run_in_executor(None, push)
        while not pushing.done():
            await asyncio.wait({pushing}, timeout=PROGRESS_EVERY)
            await stream.send(_line({"phase": "uploading", **latest}))
        try:
            result = pushing.result()
        except ImageError as error:
            raise PushRefused(str(error)) from None
        await stream.send(
            _line(
                {
                    "digest": result.digest,
                    "reference": str(result.reference),
                    "uploadedBlobs": result.uploaded_blobs,
                    "uploadedBytes": result.uploaded_bytes,
                    "skippedBlobs": result.skipped_blobs,
                }
            )
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
