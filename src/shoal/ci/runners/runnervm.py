"""The objects one runner is made of in shoal: a Secret holding its registration (a JIT config,
an agent secret or token) and an ephemeral VM whose startup script starts the runner with that
Secret's keys in its environment, and which deletes itself when the runner exits."""

import base64
import secrets
import string
from collections.abc import Mapping
from typing import Any

from shoal.ci.runners.provider import SUFFIX_LENGTH, PoolIdentity, QueuedJob, Registration
from shoal.model.meta import API_VERSION

POOL_LABEL = "runners.shoal.dev/pool"
RUNNER_ID = "runners.shoal.dev/runner-id"  # the CI system's id of the runner
JOB = "runners.shoal.dev/job"  # the job a runner was started for (providers that bind jobs)
SEEN_ONLINE = "runners.shoal.dev/seen-online"
SEEN_BUSY = "runners.shoal.dev/seen-busy"


def new_vm_name(pool: str) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return f"{pool}-" + "".join(secrets.choice(alphabet) for _ in range(SUFFIX_LENGTH))


def runner_secret(
    identity: PoolIdentity, vm_name: str, registration: Registration
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Secret",
        "metadata": {
            "name": vm_name,
            "namespace": identity.namespace,
            "labels": {POOL_LABEL: identity.pool},
        },
        "type": "opaque",
        "data": {
            key: base64.b64encode(value.encode()).decode()
            for key, value in registration.env.items()
        },
    }


def runner_vm(
    identity: PoolIdentity,
    vm_name: str,
    template: Mapping[str, Any],
    command: str,
    registration: Registration,
    job: QueuedJob | None,
) -> dict[str, Any]:
    spec = {key: value for key, value in template.items() if value not in (None, {}, [])}
    spec["env"] = [
        *(template.get("env") or []),
        {"name": "SHOAL_RUNNER_POOL", "value": identity.pool},
        {"name": "SHOAL_RUNNER_NAME", "value": identity.runner_name(vm_name)},
        *(
            {"name": key, "valueFrom": {"secretKeyRef": {"name": vm_name, "key": key}}}
            for key in sorted(registration.env)
        ),
    ]
    spec.update(startupScript=command, ephemeral=True, deleteWhenScriptExits=True)
    annotations = {RUNNER_ID: registration.id}
    if job is not None:
        annotations[JOB] = job.id
    return {
        "apiVersion": API_VERSION,
        "kind": "VirtualMachine",
        "metadata": {
            "name": vm_name,
            "namespace": identity.namespace,
            "labels": {POOL_LABEL: identity.pool},
            "annotations": annotations,
        },
        "spec": spec,
    }


def template_check_vm(namespace: str, template: Mapping[str, Any]) -> dict[str, Any]:
    """A VM as the pool would make it, without a registration: what admission checks a pool's
    template against when the pool is created."""
    identity = PoolIdentity(namespace, "check")
    return runner_vm(identity, "check-0000000000", template, "true", Registration(id=""), None)
