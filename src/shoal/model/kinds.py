"""The pydantic model of every kind: what a client may send and what the API returns."""

import base64
import binascii
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from shoal.model.meta import Condition, DNSLabel, Labels, ObjectMeta, StrictModel
from shoal.quantity import parse_bytes

# Held by a bound VM until its agent has released the VM's disk and state.
AGENT_FINALIZER = "shoal.dev/agent"
# Held by a namespace until everything in it is gone.
NAMESPACE_FINALIZER = "shoal.dev/namespace"
MAX_VM_CPU = 512
MIN_VM_MEMORY = 64 * 2**20
MIN_VM_DISK = 64 * 2**20


def _memory(value: str) -> str:
    if parse_bytes(value) < MIN_VM_MEMORY:
        raise ValueError("must be at least 64Mi")
    return value


def _disk(value: str) -> str:
    if parse_bytes(value) < MIN_VM_DISK:
        raise ValueError("must be at least 64Mi")
    return value


def _size(value: str) -> str:
    parse_bytes(value)
    return value


MemoryQuantity = Annotated[str, Field(max_length=32, examples=["4Gi"]), AfterValidator(_memory)]
DiskQuantity = Annotated[str, Field(max_length=32, examples=["20Gi"]), AfterValidator(_disk)]
SizeQuantity = Annotated[str, Field(max_length=32, examples=["64Gi"]), AfterValidator(_size)]
Cpu = Annotated[int, Field(ge=1, le=MAX_VM_CPU)]
GuestOS = Literal["linux", "macos"]
Arch = Literal["amd64", "arm64"]
PowerState = Literal["Running", "Stopped", "Suspended"]
Phase = Literal[
    "Pending",
    "Scheduled",
    "Starting",
    "Running",
    "Suspended",
    "Saved",  # a warm-pool entry, saved and ready to hand out
    "Stopping",
    "Stopped",
    "Failed",
    "Terminating",
]
Port = Annotated[int, Field(ge=1, le=65535)]


class TypeMeta(StrictModel):
    apiVersion: Literal["shoal.dev/v1"] = "shoal.dev/v1"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)


# -- Namespace -------------------------------------------------------------------------------


class NamespaceSpec(StrictModel):
    pass


class NamespaceStatus(StrictModel):
    phase: Literal["Active", "Terminating"] = "Active"


class Namespace(TypeMeta):
    kind: Literal["Namespace"] = "Namespace"
    spec: NamespaceSpec = Field(default_factory=NamespaceSpec)
    status: NamespaceStatus = Field(default_factory=NamespaceStatus)


# -- Node ------------------------------------------------------------------------------------


class NodeSpec(StrictModel):
    unschedulable: bool = False
    dedicatedNamespaces: list[DNSLabel] = Field(default_factory=list)
    maxVMs: Annotated[int, Field(ge=0, le=10000)] | None = None
    maxMacOSVMs: Annotated[int, Field(ge=0, le=1000)] = 2


class Resources(StrictModel):
    cpu: Annotated[int, Field(ge=0, le=100000)] = 0
    memory: SizeQuantity | Literal["0"] = "0"
    disk: SizeQuantity | Literal["0"] = "0"
    vms: Annotated[int, Field(ge=0, le=10000)] = 0


class ImagePull(StrictModel):
    image: Annotated[str, Field(min_length=1, max_length=512)]
    state: Literal["Caching", "Failed"]
    bytes: Annotated[int, Field(ge=0)] = 0
    totalBytes: Annotated[int, Field(ge=0)] = 0
    message: Annotated[str, Field(max_length=4096)] = ""


class NodeStatus(StrictModel):
    capacity: Resources = Field(default_factory=Resources)
    allocatable: Resources = Field(default_factory=Resources)
    arch: Arch | None = None
    os: Literal["linux", "darwin"] | None = None
    backend: Annotated[str, Field(max_length=32)] | None = None
    accelerator: Annotated[str, Field(max_length=32)] | None = None
    # Why the agent runs guests under this accelerator (or why QEMU runs none).
    acceleratorReason: Annotated[str, Field(max_length=1024)] = ""
    agentVersion: Annotated[str, Field(max_length=64)] | None = None
    # The guest OSes whose VMs this node's backend can save as warm-pool entries (and start
    # VMs from): none on a backend that cannot.
    warmStart: list[GuestOS] = Field(default_factory=list)
    guestOS: list[GuestOS] = Field(default_factory=lambda: list[GuestOS](["linux"]))
    cachedImages: list[Annotated[str, Field(max_length=512)]] = Field(default_factory=list)
    # Images the agent is pulling into its cache, or failed to (for ImageCache status).
    imagePulls: list["ImagePull"] = Field(default_factory=list, max_length=256)
    addresses: list[Annotated[str, Field(max_length=256)]] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    lastHeartbeatTime: str | None = None

    @model_validator(mode="after")
    def _allocatable_within_capacity(self) -> "NodeStatus":
        """A node reporting more to give than it has is refused, not trusted."""
        cap, alloc = self.capacity, self.allocatable
        if cap == Resources():
            return self  # capacity not reported (yet): nothing to check against
        for field, have, give in (
            ("cpu", cap.cpu, alloc.cpu),
            ("memory", _bytes_or_zero(cap.memory), _bytes_or_zero(alloc.memory)),
            ("disk", _bytes_or_zero(cap.disk), _bytes_or_zero(alloc.disk)),
            ("vms", cap.vms, alloc.vms),
        ):
            if give > have:
                raise ValueError(f"allocatable.{field} ({give}) exceeds capacity.{field} ({have})")
        return self


def _bytes_or_zero(value: str) -> int:
    return 0 if value == "0" else parse_bytes(value)


class Node(TypeMeta):
    kind: Literal["Node"] = "Node"
    spec: NodeSpec = Field(default_factory=NodeSpec)
    status: NodeStatus = Field(default_factory=NodeStatus)


# -- VirtualMachine and VMConfig ------------------------------------------------------------


class PortMapping(StrictModel):
    guest: Port
    node: Annotated[int, Field(ge=0, le=65535)] | None = None
    protocol: Literal["tcp"] = "tcp"


class SecretRef(StrictModel):
    """A Secret in the referring object's own namespace."""

    name: DNSLabel


class GuestAccess(StrictModel):
    """How the agent gets into the guest (exec, startup scripts): SSH as user, with the key or
    password of an ssh-auth Secret. Images are cluster-wide and Secrets namespaced, so the Image
    gives only the user (its sshUser) and the VM or its VMConfig gives the Secret."""

    user: (
        Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")]
        | None
    ) = None
    secretRef: SecretRef | None = None


class SecretKeyRef(StrictModel):
    name: DNSLabel
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._A-Za-z0-9]+$")]


class EnvVarSource(StrictModel):
    secretKeyRef: SecretKeyRef


class EnvVar(StrictModel):
    """One variable of the guest commands' environment: a value, or one key of a Secret."""

    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    value: Annotated[str, Field(max_length=65536)] | None = None
    valueFrom: EnvVarSource | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "EnvVar":
        if (self.value is None) == (self.valueFrom is None):
            raise ValueError(f"env {self.name}: give exactly one of value or valueFrom")
        return self


class VMTemplate(StrictModel):
    """The fields a VMConfig can hold and a VirtualMachine can set; VM fields override."""

    image: Annotated[str, Field(min_length=1, max_length=512)]
    cpu: Cpu = 2
    memory: MemoryQuantity = "2Gi"
    disk: DiskQuantity = "10Gi"
    os: GuestOS = "linux"
    arch: Arch = "amd64"
    nodeSelector: Labels = Field(default_factory=dict)
    ports: list[PortMapping] = Field(default_factory=list, max_length=64)
    powerState: PowerState = "Running"
    ephemeral: bool = False
    ttlSeconds: Annotated[int, Field(ge=1, le=10 * 365 * 86400)] | None = None
    priority: Annotated[int, Field(ge=-1000000, le=1000000)] = 0
    # Soft tags: nodes that have them score higher, nodes that lack them still qualify.
    preferredNodeSelector: Labels = Field(default_factory=dict)
    # pack (most allocated first) or spread (least allocated first); empty: the cluster default.
    schedulingProfile: Literal["pack", "spread"] | None = None
    # What happens when the VM's node is lost: Never (the VM goes Failed, reason NodeLost) or
    # OnNodeLost (it goes back to Pending and is scheduled again, restartCount + 1).
    restartPolicy: Literal["Never", "OnNodeLost"] = "Never"
    startupScript: Annotated[str, Field(max_length=65536)] | None = None
    access: GuestAccess | None = None
    env: list[EnvVar] = Field(default_factory=list, max_length=256)
    # With ephemeral: stop the VM when its startup script ends (and so delete it): a one-shot
    # runner VM cleans up after itself.
    deleteWhenScriptExits: bool = False
    # An owner's lease: the VM is deleted once this long has passed since its creation or the
    # last POST .../renew (what `shoal run` does while it runs), so a client that dies leaves
    # nothing behind.
    leaseSeconds: Annotated[int, Field(ge=10, le=7 * 86400)] | None = None

    @field_validator("ports")
    @classmethod
    def _distinct_ports(cls, ports: list[PortMapping]) -> list[PortMapping]:
        guests = [p.guest for p in ports]
        if len(set(guests)) != len(guests):
            raise ValueError("each guest port may appear once")
        return ports


LEASE_RENEWED = "shoal.dev/lease-renewed"  # annotation: when the owner last renewed the lease


def secret_names(spec: dict[str, Any]) -> set[str]:
    """The Secrets (in the object's namespace) a VM or VMConfig spec refers to."""
    names: set[str] = set()
    access = spec.get("access") or {}
    if (access.get("secretRef") or {}).get("name"):
        names.add(str(access["secretRef"]["name"]))
    for var in spec.get("env") or []:
        ref = (var.get("valueFrom") or {}).get("secretKeyRef") or {}
        if ref.get("name"):
            names.add(str(ref["name"]))
    return names


class VMConfigSpec(VMTemplate):
    pass


class VMConfig(TypeMeta):
    kind: Literal["VMConfig"] = "VMConfig"
    spec: VMConfigSpec


class VirtualMachineSpec(VMTemplate):
    image: Annotated[str, Field(min_length=1, max_length=512)] = ""
    config: DNSLabel | None = None
    nodeName: DNSLabel | None = None


class MappedPort(StrictModel):
    guest: Port
    host: Port
    address: Annotated[str, Field(max_length=256)] = "127.0.0.1"


class VirtualMachineStatus(StrictModel):
    phase: Phase = "Pending"
    reason: Annotated[str, Field(max_length=128)] = ""
    message: Annotated[str, Field(max_length=32768)] = ""
    addresses: list[Annotated[str, Field(max_length=256)]] = Field(default_factory=list)
    ports: list[MappedPort] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    bootTime: str | None = None
    scheduledTime: str | None = None
    restartCount: Annotated[int, Field(ge=0)] = 0
    observedGeneration: Annotated[int, Field(ge=0)] = 0


class VirtualMachine(TypeMeta):
    kind: Literal["VirtualMachine"] = "VirtualMachine"
    spec: VirtualMachineSpec
    status: VirtualMachineStatus = Field(default_factory=VirtualMachineStatus)


# -- Image -----------------------------------------------------------------------------------

Digest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
HostPath = Annotated[str, Field(min_length=2, max_length=4096, pattern=r"^/")]


class ImageFile(StrictModel):
    """A file of an image on the nodes' filesystem (a local import), with its digest."""

    path: HostPath
    digest: Digest
    size: Annotated[int, Field(ge=0)]


class LocalSource(StrictModel):
    disk: ImageFile
    kernel: ImageFile | None = None
    initrd: ImageFile | None = None


class ImageSource(StrictModel):
    local: LocalSource | None = None
    oci: Annotated[str, Field(min_length=1, max_length=512)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "ImageSource":
        if (self.local is None) == (self.oci is None):
            raise ValueError("give exactly one of local or oci")
        return self


class ImageSpec(StrictModel):
    source: ImageSource
    os: GuestOS = "linux"
    arch: Arch = "amd64"
    # disk: firmware boots the disk (as real images do); kernel: direct kernel boot.
    boot: Literal["disk", "kernel"] = "disk"
    firmware: Literal["bios", "uefi"] = "bios"
    cmdline: Annotated[str, Field(max_length=4096)] = ""
    sshUser: Annotated[str, Field(min_length=1, max_length=64)] = "root"
    cpu: Cpu | None = None
    memory: MemoryQuantity | None = None
    disk: DiskQuantity | None = None

    @model_validator(mode="after")
    def _kernel_boot_has_kernel(self) -> "ImageSpec":
        local = self.source.local
        if self.boot == "kernel" and local is not None and local.kernel is None:
            raise ValueError("boot: kernel needs source.local.kernel")
        return self


class ImageStatus(StrictModel):
    phase: Literal["Ready", "Failed"] = "Ready"
    size: Annotated[int, Field(ge=0)] = 0
    message: Annotated[str, Field(max_length=4096)] = ""
    conditions: list[Condition] = Field(default_factory=list)


class Image(TypeMeta):
    kind: Literal["Image"] = "Image"
    spec: ImageSpec
    status: ImageStatus = Field(default_factory=ImageStatus)


# -- ImageCache ----------------------------------------------------------------------------


class ImageCacheSpec(StrictModel):
    """Keep an image (an Image name or an OCI reference) pulled on some nodes: the nodes named,
    the nodes whose labels match nodeSelector, or every node."""

    image: Annotated[str, Field(min_length=1, max_length=512)]
    nodes: list[DNSLabel] = Field(default_factory=list, max_length=10000)
    nodeSelector: Labels = Field(default_factory=dict)
    allNodes: bool = False

    @model_validator(mode="after")
    def _one_target(self) -> "ImageCacheSpec":
        given = sum((bool(self.nodes), bool(self.nodeSelector), self.allNodes))
        if given != 1:
            raise ValueError("give exactly one of nodes, nodeSelector or allNodes: true")
        return self


class ImageCacheNode(StrictModel):
    state: Literal["Pending", "Caching", "Ready", "Failed"] = "Pending"
    bytes: Annotated[int, Field(ge=0)] = 0
    totalBytes: Annotated[int, Field(ge=0)] = 0
    message: Annotated[str, Field(max_length=4096)] = ""


class ImageCacheStatus(StrictModel):
    nodes: dict[DNSLabel, ImageCacheNode] = Field(default_factory=dict)
    desired: Annotated[int, Field(ge=0)] = 0
    ready: Annotated[int, Field(ge=0)] = 0
    failed: Annotated[int, Field(ge=0)] = 0


class ImageCache(TypeMeta):
    kind: Literal["ImageCache"] = "ImageCache"
    spec: ImageCacheSpec
    status: ImageCacheStatus = Field(default_factory=ImageCacheStatus)


# -- Secret ---------------------------------------------------------------------------------

SecretType = Literal["opaque", "ssh-auth", "basic-auth"]
SECRET_KEY_PATTERN = r"^[-._A-Za-z0-9]+$"
SecretKey = Annotated[str, Field(min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN)]
# Keys and decoded values of one Secret, in all (Kubernetes caps a whole Secret at 1 MiB).
MAX_SECRET_BYTES = 2**20
# The keys a typed Secret may hold (an opaque one: any).
SECRET_KEYS: dict[str, tuple[str, ...]] = {
    "ssh-auth": ("ssh-privatekey", "password", "username"),
    "basic-auth": ("username", "password"),
}


def decode_secret_value(value: str) -> bytes:
    """A Secret's value as bytes; ValueError (that never repeats the value) unless base64."""
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise ValueError("not valid base64") from None


def _base64(value: str) -> str:
    decode_secret_value(value)
    return value


SecretValue = Annotated[str, AfterValidator(_base64)]


class Secret(TypeMeta):
    """Credentials, as in Kubernetes: `data` maps a key to the base64 of its bytes. Values are
    encrypted at rest and never written to logs, Events or error messages. The keys each type
    needs are checked at admission (`secret_problem`), where the field can be named exactly."""

    kind: Literal["Secret"] = "Secret"
    type: SecretType = "opaque"
    data: dict[SecretKey, SecretValue] = Field(default_factory=dict)

    @field_validator("data")
    @classmethod
    def _at_most_1mib(cls, data: dict[str, str]) -> dict[str, str]:
        size = sum(len(key) + len(decode_secret_value(value)) for key, value in data.items())
        if size > MAX_SECRET_BYTES:
            raise ValueError(f"{size} bytes in all (keys and decoded values), more than 1 MiB")
        return data


def _private_key_problem(pem: bytes) -> str | None:
    """Why the agent could not log in with this private key; None when it can (or when the key
    is of a type this check does not know: the agent decides then)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in pem:
            serialization.load_ssh_private_key(pem, password=None)
        else:
            serialization.load_pem_private_key(pem, password=None)
    except TypeError:  # cryptography's word for "encrypted, and no password given"
        return "the key is protected by a passphrase, which the agent cannot give: use one without"
    except UnsupportedAlgorithm:
        return None
    except ValueError:
        return "not a private key in PEM or OpenSSH format (-----BEGIN ... PRIVATE KEY-----)"
    return None


def secret_problem(type_: str, data: dict[str, str]) -> tuple[str, str] | None:
    """What a Secret's type says of its keys, as (field, message); None when it is fine. No
    message repeats a value."""
    allowed = SECRET_KEYS.get(type_)
    if allowed is not None:
        article = "an" if type_ == "ssh-auth" else "a"
        for key in data:
            if key not in allowed:
                return f"data.{key}", (
                    f"not a key of {article} {type_} Secret (it holds {', '.join(allowed)})"
                )
    if type_ == "ssh-auth" and not {"ssh-privatekey", "password"} & set(data):
        return "data", "an ssh-auth Secret needs ssh-privatekey or password (or both)"
    if type_ == "basic-auth":
        for key in ("username", "password"):
            if key not in data:
                return f"data.{key}", "required in a basic-auth Secret"
    if type_ == "ssh-auth" and "ssh-privatekey" in data:
        problem = _private_key_problem(decode_secret_value(data["ssh-privatekey"]))
        if problem is not None:
            return "data.ssh-privatekey", problem
    if allowed is not None and "username" in data:
        try:
            username = decode_secret_value(data["username"]).decode()
        except UnicodeDecodeError:
            username = ""
        if not username or any(c.isspace() for c in username):
            return "data.username", "must be a non-empty UTF-8 name without spaces"
    return None


# -- Access: ServiceAccount, RoleBinding ---------------------------------------------------


class ServiceAccountSpec(StrictModel):
    description: Annotated[str, Field(max_length=1024)] = ""


class TokenInfo(StrictModel):
    id: str
    createdAt: str
    expiresAt: str | None = None


class ServiceAccountStatus(StrictModel):
    tokens: list[TokenInfo] = Field(default_factory=list)


class ServiceAccount(TypeMeta):
    kind: Literal["ServiceAccount"] = "ServiceAccount"
    spec: ServiceAccountSpec = Field(default_factory=ServiceAccountSpec)
    status: ServiceAccountStatus = Field(default_factory=ServiceAccountStatus)


RoleName = Literal["admin", "edit", "view", "connect"]


class RoleRef(StrictModel):
    name: RoleName


class Subject(StrictModel):
    kind: Literal["ServiceAccount", "User"]
    name: Annotated[str, Field(min_length=1, max_length=253)]
    namespace: DNSLabel | None = None


class RoleBinding(TypeMeta):
    kind: Literal["RoleBinding"] = "RoleBinding"
    roleRef: RoleRef
    subjects: list[Subject] = Field(min_length=1, max_length=256)


# -- Event --------------------------------------------------------------------------------


class ObjectReference(StrictModel):
    kind: Annotated[str, Field(min_length=1, max_length=63)]
    name: Annotated[str, Field(min_length=1, max_length=253)]
    namespace: DNSLabel | None = None
    uid: str | None = None


class Event(TypeMeta):
    kind: Literal["Event"] = "Event"
    involvedObject: ObjectReference
    reason: Annotated[str, Field(min_length=1, max_length=128)]
    message: Annotated[str, Field(max_length=32768)] = ""
    type: Literal["Normal", "Warning"] = "Normal"
    count: Annotated[int, Field(ge=1)] = 1
    firstTimestamp: str | None = None
    lastTimestamp: str | None = None
    source: Annotated[str, Field(max_length=253)] = ""
