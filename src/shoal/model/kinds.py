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
    """What every kind has: apiVersion and metadata (the API describes them the same for all)."""

    apiVersion: Literal["shoal.dev/v1"] = "shoal.dev/v1"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)


# -- Namespace -------------------------------------------------------------------------------


class NamespaceSpec(StrictModel):
    """A namespace has nothing to set: it is a name that scopes objects and role bindings."""


class NamespaceStatus(StrictModel):
    """Whether the namespace is in use or being emptied."""

    phase: Literal["Active", "Terminating"] = "Active"
    """Active, or Terminating once it is deleted: its objects are being deleted, and the
    namespace goes when the last one is gone."""


class Namespace(TypeMeta):
    """A scope for names, and the unit of access: RoleBindings grant roles in one namespace.
    Cluster-scoped."""

    kind: Literal["Namespace"] = "Namespace"
    spec: NamespaceSpec = Field(default_factory=NamespaceSpec)
    status: NamespaceStatus = Field(default_factory=NamespaceStatus)


# -- Node ------------------------------------------------------------------------------------


class NodeSpec(StrictModel):
    """What an operator decides about a node: whether and which VMs it takes."""

    unschedulable: bool = False
    """Cordoned: the scheduler places no new VMs on the node; the VMs already there stay
    (`shoal node cordon` and `uncordon` set it)."""
    dedicatedNamespaces: list[DNSLabel] = Field(default_factory=list)
    """When not empty, only VMs of these namespaces are placed on the node."""
    maxVMs: Annotated[int, Field(ge=0, le=10000)] | None = None
    """At most this many VMs on the node, below the VM count its agent reports as allocatable.
    Unset: the agent's count."""
    maxMacOSVMs: Annotated[int, Field(ge=0, le=1000)] = 2
    """At most this many macOS guests on the node at once. Default 2, what Apple's licence
    allows per Mac."""


class Resources(StrictModel):
    """An amount of each resource a node has or offers VMs."""

    cpu: Annotated[int, Field(ge=0, le=100000)] = 0
    """CPUs, counted as the vCPUs VMs ask for."""
    memory: SizeQuantity | Literal["0"] = "0"
    """Memory, in bytes with a suffix like 64Gi."""
    disk: SizeQuantity | Literal["0"] = "0"
    """Disk space for VM disks, in bytes with a suffix like 500Gi."""
    vms: Annotated[int, Field(ge=0, le=10000)] = 0
    """How many VMs, whatever their size."""


class ImagePull(StrictModel):
    """An image the node's agent is pulling into its cache for an ImageCache, or failed to."""

    image: Annotated[str, Field(min_length=1, max_length=512)]
    """The image, as the ImageCache names it: an Image's name or an OCI reference."""
    state: Literal["Caching", "Failed"]
    """Caching while the pull runs; Failed when it failed (it is tried again after a minute)."""
    bytes: Annotated[int, Field(ge=0)] = 0
    """Compressed bytes pulled so far."""
    totalBytes: Annotated[int, Field(ge=0)] = 0
    """Compressed bytes to pull in all; 0 until known."""
    message: Annotated[str, Field(max_length=4096)] = ""
    """Why the pull failed."""


class NodeStatus(StrictModel):
    """What the node's agent reports at every heartbeat: resources, platform, cache, health."""

    capacity: Resources = Field(default_factory=Resources)
    """What the node has in all."""
    allocatable: Resources = Field(default_factory=Resources)
    """What the node offers VMs, at most its capacity. The scheduler places a VM only where its
    cpu, memory, disk and a VM slot fit within it, next to the VMs bound there already."""
    arch: Arch | None = None
    """The host's CPU architecture: only VMs of this arch are placed on the node."""
    os: Literal["linux", "darwin"] | None = None
    """The host's operating system: linux or darwin (macOS)."""
    backend: Annotated[str, Field(max_length=32)] | None = None
    """What runs the node's VMs: qemu, tart, or sim (simulated VMs, for tests)."""
    accelerator: Annotated[str, Field(max_length=32)] | None = None
    """The accelerator guests run under: kvm, hvf, or tcg (QEMU's emulation); unset on a
    backend without one (sim)."""
    acceleratorReason: Annotated[str, Field(max_length=1024)] = ""
    """Why the agent runs guests under this accelerator (or why QEMU runs none)."""
    agentVersion: Annotated[str, Field(max_length=64)] | None = None
    """The shoal version of the node's agent."""
    warmStart: list[GuestOS] = Field(default_factory=list)
    """The guest OSes whose VMs this node's backend can save as warm-pool entries (and start
    VMs from): none on a backend that cannot."""
    guestOS: list[GuestOS] = Field(default_factory=lambda: list[GuestOS](["linux"]))
    """The guest OSes the node's backend can run: a VM of another os is not placed here."""
    cachedImages: list[Annotated[str, Field(max_length=512)]] = Field(default_factory=list)
    """The images in the node's cache, as VMs name them: references (host/repo:tag,
    host/repo@sha256:...) and the names of the Images whose source.oci is one. The scheduler
    prefers nodes that hold a VM's image."""
    imagePulls: list["ImagePull"] = Field(default_factory=list, max_length=256)
    """Images the agent is pulling into its cache, or failed to (for ImageCache status)."""
    addresses: list[Annotated[str, Field(max_length=256)]] = Field(default_factory=list)
    """The node's network addresses."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready (the agent heartbeats; False once it has been silent for the grace, 40 s by
    default) and AcceleratorWorks (guests still start under the node's accelerator)."""
    lastHeartbeatTime: str | None = None
    """When the agent last reported (RFC 3339, UTC)."""

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
    """A host that runs VMs: its agent creates the Node when it joins and keeps its status
    current. Cluster-scoped; its labels are the tags VMs select nodes by."""

    kind: Literal["Node"] = "Node"
    spec: NodeSpec = Field(default_factory=NodeSpec)
    status: NodeStatus = Field(default_factory=NodeStatus)


# -- VirtualMachine and VMConfig ------------------------------------------------------------


class PortMapping(StrictModel):
    """A guest port to reach from outside the guest; status.ports says where it is."""

    guest: Port
    """The guest's TCP port."""
    node: Annotated[int, Field(ge=0, le=65535)] | None = None
    """Publish the guest port on the node's address at this port; 0 picks a free one. Unset:
    not published on the node's address (shoal's own tunnels reach every port anyway)."""
    protocol: Literal["tcp"] = "tcp"
    """Only tcp."""


class SecretRef(StrictModel):
    """A Secret in the referring object's own namespace."""

    name: DNSLabel
    """The Secret's name."""


class GuestAccess(StrictModel):
    """How the agent gets into the guest (exec, startup scripts): SSH as user, with the key or
    password of an ssh-auth Secret. Images are cluster-wide and Secrets namespaced, so the Image
    gives only the user (its sshUser) and the VM or its VMConfig gives the Secret."""

    user: (
        Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")]
        | None
    ) = None
    """The guest user to log in as. Unset: the Secret's username, else the Image's sshUser
    (root for an image named by OCI reference)."""
    secretRef: SecretRef | None = None
    """An ssh-auth Secret of the namespace: the private key and/or password to log in with.
    Exec and a startup script need it."""


class SecretKeyRef(StrictModel):
    """One key of a Secret in the referring object's own namespace."""

    name: DNSLabel
    """The Secret's name."""
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._A-Za-z0-9]+$")]
    """The key in the Secret's data; the Secret must hold it."""


class EnvVarSource(StrictModel):
    """Where an environment variable's value comes from, instead of value."""

    secretKeyRef: SecretKeyRef
    """A key of a Secret: the variable gets its decoded value."""


class EnvVar(StrictModel):
    """One variable of the guest commands' environment: a value, or one key of a Secret."""

    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    """The variable's name: letters, digits and '_', not starting with a digit."""
    value: Annotated[str, Field(max_length=65536)] | None = None
    """The variable's value. Give exactly one of value and valueFrom."""
    valueFrom: EnvVarSource | None = None
    """Take the value from a key of a Secret, so it is not written in the spec. Give exactly
    one of value and valueFrom."""

    @model_validator(mode="after")
    def _one_source(self) -> "EnvVar":
        if (self.value is None) == (self.valueFrom is None):
            raise ValueError(f"env {self.name}: give exactly one of value or valueFrom")
        return self


class VMTemplate(StrictModel):
    """The fields a VMConfig can hold and a VirtualMachine can set; VM fields override."""

    image: Annotated[str, Field(min_length=1, max_length=512)]
    """The image to boot: the name of an Image, or an OCI reference
    (host[:port]/repository[:tag][@sha256:...]) its node pulls."""
    cpu: Cpu = 2
    """Virtual CPUs (vCPUs), 1 to 512, reserved on the VM's node. Default 2."""
    memory: MemoryQuantity = "2Gi"
    """The guest's memory, in bytes with a suffix like 4Gi or 512Mi; at least 64Mi. Reserved
    on the VM's node. Default 2Gi."""
    disk: DiskQuantity = "10Gi"
    """The size of the VM's disk, in bytes with a suffix like 20Gi; at least 64Mi. Reserved on
    the VM's node. Default 10Gi."""
    os: GuestOS = "linux"
    """The guest's operating system, linux or macos: only nodes that can run it (their
    status.guestOS) take the VM."""
    arch: Arch = "amd64"
    """The guest's CPU architecture, amd64 or arm64: only nodes of that arch take the VM."""
    nodeSelector: Labels = Field(default_factory=dict)
    """Node labels (tags) a node must all have to take the VM."""
    ports: list[PortMapping] = Field(default_factory=list, max_length=64)
    """Guest ports to publish, each guest port at most once; status.ports says where they
    are."""
    powerState: PowerState = "Running"
    """What the VM should be: Running, Stopped or Suspended. The start, stop, suspend and
    resume actions set it; the node's agent makes it so."""
    ephemeral: bool = False
    """Delete the VM once it has stopped (or failed)."""
    ttlSeconds: Annotated[int, Field(ge=1, le=10 * 365 * 86400)] | None = None
    """Delete the VM this many seconds after its creation, whatever it is doing."""
    priority: Annotated[int, Field(ge=-1000000, le=1000000)] = 0
    """Higher is scheduled first (among VMs waiting for a node). Default 0."""
    preferredNodeSelector: Labels = Field(default_factory=dict)
    """Soft tags: nodes that have them score higher, nodes that lack them still qualify."""
    schedulingProfile: Literal["pack", "spread"] | None = None
    """How to choose among the nodes that fit: pack (most allocated first, so others stay free
    for big VMs) or spread (least allocated first). Unset: the cluster's default."""
    restartPolicy: Literal["Never", "OnNodeLost"] = "Never"
    """What happens when the VM's node is lost: Never (the VM goes Failed, reason NodeLost) or
    OnNodeLost (it goes back to Pending and is scheduled again, restartCount + 1)."""
    startupScript: Annotated[str, Field(max_length=65536)] | None = None
    """A script run once in the guest (as sh -c, with env in its environment) the first time
    the VM is Ready; it needs access.secretRef. Its outcome is the StartupScript condition."""
    access: GuestAccess | None = None
    """How the node's agent logs in to the guest, for exec and the startup script."""
    env: list[EnvVar] = Field(default_factory=list, max_length=256)
    """The environment of guest commands (exec) and the startup script."""
    deleteWhenScriptExits: bool = False
    """With ephemeral: stop the VM when its startup script ends (and so delete it): a one-shot
    runner VM cleans up after itself. Needs startupScript and ephemeral: true."""
    leaseSeconds: Annotated[int, Field(ge=10, le=7 * 86400)] | None = None
    """An owner's lease: the VM is deleted once this long has passed since its creation or the
    last POST .../renew (what `shoal run` does while it runs), so a client that dies leaves
    nothing behind."""

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
    """A VM template: every field a VirtualMachine's spec has but config and nodeName."""


class VMConfig(TypeMeta):
    """A named VM template. A VirtualMachine that names it in spec.config starts from its spec,
    and the fields the VM sets override it."""

    kind: Literal["VMConfig"] = "VMConfig"
    spec: VMConfigSpec


class VirtualMachineSpec(VMTemplate):
    """The VM a client asks for: its image, size, placement, power state and guest access."""

    image: Annotated[str, Field(min_length=1, max_length=512)] = ""
    """The image to boot: the name of an Image, or an OCI reference
    (host[:port]/repository[:tag][@sha256:...]) its node pulls. Required unless config names
    a VMConfig that sets it. Cannot be changed once set."""
    config: DNSLabel | None = None
    """A VMConfig of the namespace to start from: on create, its spec is the base and the fields
    this VM sets override it. Cannot be changed once set."""
    nodeName: DNSLabel | None = None
    """The node the VM is bound to (choose nodes with nodeSelector). Set by the scheduler: a
    client cannot write it. Cannot be changed once set."""


class MappedPort(StrictModel):
    """Where a guest port can be reached on the VM's node."""

    guest: Port
    """The guest's port."""
    host: Port
    """The node's port it is forwarded from."""
    address: Annotated[str, Field(max_length=256)] = "127.0.0.1"
    """The node's address the port listens on: 127.0.0.1 (loopback), or the node's address
    for a port published with spec.ports[].node."""


class VirtualMachineStatus(StrictModel):
    """What the VM is, as the scheduler and its node's agent report it."""

    phase: Phase = "Pending"
    """Where the VM is in its life: Pending, Scheduled (bound to a node), Starting, Running,
    Suspended, Saved (a warm-pool entry, saved and ready to hand out), Stopping, Stopped,
    Failed, or Terminating once it is being deleted."""
    reason: Annotated[str, Field(max_length=128)] = ""
    """Why the VM is in its phase, as one CamelCase word: Unschedulable, NodeLost,
    ImagePullFailed..."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """What is happening, in words: why the VM waits for a node, an image pull's progress, why
    it failed."""
    addresses: list[Annotated[str, Field(max_length=256)]] = Field(default_factory=list)
    """The guest's IP addresses."""
    ports: list[MappedPort] = Field(default_factory=list)
    """Where the guest's ports are forwarded on the node."""
    conditions: list[Condition] = Field(default_factory=list)
    """Scheduled, Ready (the guest answers), StartupScript (the startup script's outcome),
    and the warm-pool conditions (Saved, FreshIdentity)."""
    bootTime: str | None = None
    """When the guest last booted (RFC 3339, UTC)."""
    scheduledTime: str | None = None
    """When the scheduler bound the VM to its node (RFC 3339, UTC)."""
    restartCount: Annotated[int, Field(ge=0)] = 0
    """How many times the VM was scheduled again after its node was lost (restartPolicy:
    OnNodeLost)."""
    observedGeneration: Annotated[int, Field(ge=0)] = 0
    """The metadata.generation whose spec the node's agent last acted on."""


class VirtualMachine(TypeMeta):
    """A VM: where it runs, what it boots, and the state its node's agent keeps it in."""

    kind: Literal["VirtualMachine"] = "VirtualMachine"
    spec: VirtualMachineSpec
    status: VirtualMachineStatus = Field(default_factory=VirtualMachineStatus)


# -- Image -----------------------------------------------------------------------------------

Digest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
HostPath = Annotated[str, Field(min_length=2, max_length=4096, pattern=r"^/")]


class ImageFile(StrictModel):
    """A file of an image on the nodes' filesystem (a local import), with its digest."""

    path: HostPath
    """The file's absolute path; it must be there on every node that runs the image."""
    digest: Digest
    """The sha256 of the file's contents: sha256: and 64 hex digits."""
    size: Annotated[int, Field(ge=0)]
    """The file's size in bytes."""


class LocalSource(StrictModel):
    """An image made of files on the nodes (`shoal image import`)."""

    disk: ImageFile
    """The disk image (raw, qcow2, or any format qemu-img reads)."""
    kernel: ImageFile | None = None
    """The kernel to boot, for boot: kernel."""
    initrd: ImageFile | None = None
    """The initrd to boot the kernel with, if any."""


class ImageSource(StrictModel):
    """Where an image's bytes come from: files on the nodes, or an OCI registry. Give exactly
    one of local and oci."""

    local: LocalSource | None = None
    """Files on the nodes' filesystems, registered by `shoal image import`."""
    oci: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    """An OCI reference (host[:port]/repository[:tag][@sha256:...]) the nodes pull the image
    from into their cache."""

    @model_validator(mode="after")
    def _exactly_one(self) -> "ImageSource":
        if (self.local is None) == (self.oci is None):
            raise ValueError("give exactly one of local or oci")
        return self


class ImageSpec(StrictModel):
    """Where an image is and how to boot it."""

    source: ImageSource
    """Where the image's bytes come from. Cannot be changed once set."""
    os: GuestOS = "linux"
    """The guest operating system on the image: linux or macos."""
    arch: Arch = "amd64"
    """The CPU architecture the image is built for: amd64 or arm64."""
    boot: Literal["disk", "kernel"] = "disk"
    """disk: the firmware boots the disk (as real images do); kernel: direct kernel boot of
    source.local.kernel (or the OCI image's kernel) with cmdline."""
    firmware: Literal["bios", "uefi"] = "bios"
    """The firmware that boots the disk, for boot: disk: bios or uefi."""
    cmdline: Annotated[str, Field(max_length=4096)] = ""
    """The kernel command line, for boot: kernel."""
    sshUser: Annotated[str, Field(min_length=1, max_length=64)] = "root"
    """The guest user the agent logs in as when the VM's access.user is unset and its Secret
    holds no username."""
    cpu: Cpu | None = None
    """vCPUs for VMs of the image (from the image's config when pulled): a VM that sets no
    spec.cpu and names no VMConfig gets these."""
    memory: MemoryQuantity | None = None
    """Memory for VMs of the image, in bytes with a suffix like 4Gi: a VM that sets no
    spec.memory and names no VMConfig gets this."""
    disk: DiskQuantity | None = None
    """Disk size for VMs of the image, in bytes with a suffix like 20Gi: a VM that sets no
    spec.disk and names no VMConfig gets this."""

    @model_validator(mode="after")
    def _kernel_boot_has_kernel(self) -> "ImageSpec":
        local = self.source.local
        if self.boot == "kernel" and local is not None and local.kernel is None:
            raise ValueError("boot: kernel needs source.local.kernel")
        return self


class ImageStatus(StrictModel):
    """Whether the image can be used."""

    phase: Literal["Ready", "Failed"] = "Ready"
    """Ready, or Failed (message says why)."""
    size: Annotated[int, Field(ge=0)] = 0
    """The image's size in bytes; 0 when not known."""
    message: Annotated[str, Field(max_length=4096)] = ""
    """Why the image failed, in words."""
    conditions: list[Condition] = Field(default_factory=list)
    """The image's conditions."""


class Image(TypeMeta):
    """A VM image that VMs name in spec.image: files on the nodes or an OCI reference, and how
    to boot it. Cluster-scoped."""

    kind: Literal["Image"] = "Image"
    spec: ImageSpec
    status: ImageStatus = Field(default_factory=ImageStatus)


# -- ImageCache ----------------------------------------------------------------------------


class ImageCacheSpec(StrictModel):
    """Keep an image (an Image name or an OCI reference) pulled on some nodes: the nodes named,
    the nodes whose labels match nodeSelector, or every node."""

    image: Annotated[str, Field(min_length=1, max_length=512)]
    """The image to keep cached: the name of an Image, or an OCI reference."""
    nodes: list[DNSLabel] = Field(default_factory=list, max_length=10000)
    """These nodes, by name."""
    nodeSelector: Labels = Field(default_factory=dict)
    """The nodes whose labels include all of these."""
    allNodes: bool = False
    """Every node."""

    @model_validator(mode="after")
    def _one_target(self) -> "ImageCacheSpec":
        given = sum((bool(self.nodes), bool(self.nodeSelector), self.allNodes))
        if given != 1:
            raise ValueError("give exactly one of nodes, nodeSelector or allNodes: true")
        return self


class ImageCacheNode(StrictModel):
    """How far one node is with the image."""

    state: Literal["Pending", "Caching", "Ready", "Failed"] = "Pending"
    """Pending (not started), Caching (pulling), Ready (in the node's cache) or Failed (tried
    again after a minute)."""
    bytes: Annotated[int, Field(ge=0)] = 0
    """Compressed bytes pulled so far, while Caching."""
    totalBytes: Annotated[int, Field(ge=0)] = 0
    """Compressed bytes to pull in all, while Caching; 0 until known."""
    message: Annotated[str, Field(max_length=4096)] = ""
    """Why the pull failed, when Failed."""


class ImageCacheStatus(StrictModel):
    """The image's state on each node the cache targets, gathered from the Nodes' status."""

    nodes: dict[DNSLabel, ImageCacheNode] = Field(default_factory=dict)
    """Each targeted node's state, by node name."""
    desired: Annotated[int, Field(ge=0)] = 0
    """How many nodes the cache targets."""
    ready: Annotated[int, Field(ge=0)] = 0
    """How many of them hold the image."""
    failed: Annotated[int, Field(ge=0)] = 0
    """How many of them failed to pull it."""


class ImageCache(TypeMeta):
    """Keep an image pulled on some nodes ahead of the VMs that need it. Cluster-scoped."""

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
    """What the Secret holds: opaque (any keys), ssh-auth (ssh-privatekey and/or password,
    optional username) or basic-auth (username and password). Cannot be changed once set."""
    data: dict[SecretKey, SecretValue] = Field(default_factory=dict)
    """Each key (letters, digits, '-', '_' and '.') and the base64 of its value's bytes: at most
    1 MiB in all, keys and decoded values. Encrypted at rest."""

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
    """What the account is for."""

    description: Annotated[str, Field(max_length=1024)] = ""
    """What the account is for, in words."""


class TokenInfo(StrictModel):
    """One of the account's tokens: never its secret, which is shown only when it is made."""

    id: str
    """The token's id (the part before the '.'): revoke the token by it."""
    createdAt: str
    """When the token was made (RFC 3339, UTC)."""
    expiresAt: str | None = None
    """When the token expires (RFC 3339, UTC); unset: never."""


class ServiceAccountStatus(StrictModel):
    """The account's tokens."""

    tokens: list[TokenInfo] = Field(default_factory=list)
    """The tokens issued to the account and not revoked."""


class ServiceAccount(TypeMeta):
    """An identity for programs (CI, tools) in a namespace: it gets tokens, and RoleBindings
    grant it roles."""

    kind: Literal["ServiceAccount"] = "ServiceAccount"
    spec: ServiceAccountSpec = Field(default_factory=ServiceAccountSpec)
    status: ServiceAccountStatus = Field(default_factory=ServiceAccountStatus)


RoleName = Literal["admin", "edit", "view", "connect"]


class RoleRef(StrictModel):
    """The role a binding grants."""

    name: RoleName
    """view (read VMs, VMConfigs, RunnerPools, WarmPools, Events and ServiceAccounts; not
    Secrets), connect (read VMs, VMConfigs and Events, and reach VMs: port-forward, ssh, VNC),
    edit (read and write all of these and Secrets, VM actions, connect, service-account tokens)
    or admin (edit, and RoleBindings)."""


class Subject(StrictModel):
    """Who a binding grants its role to."""

    kind: Literal["ServiceAccount", "User"]
    """ServiceAccount or User."""
    name: Annotated[str, Field(min_length=1, max_length=253)]
    """The service account's or the user's name."""
    namespace: DNSLabel | None = None
    """A service account's namespace. Unset: the binding's."""


class RoleBinding(TypeMeta):
    """Grants a role in its namespace to service accounts or users."""

    kind: Literal["RoleBinding"] = "RoleBinding"
    roleRef: RoleRef
    """The role granted."""
    subjects: list[Subject] = Field(min_length=1, max_length=256)
    """Who gets the role: 1 to 256 service accounts or users."""


# -- Event --------------------------------------------------------------------------------


class ObjectReference(StrictModel):
    """The object an event is about."""

    kind: Annotated[str, Field(min_length=1, max_length=63)]
    """Its kind."""
    name: Annotated[str, Field(min_length=1, max_length=253)]
    """Its name."""
    namespace: DNSLabel | None = None
    """Its namespace; unset for a cluster-scoped object."""
    uid: str | None = None
    """Its metadata.uid."""


class Event(TypeMeta):
    """Something that happened to an object. A repeat (same object, same reason) is counted
    in the one Event rather than recorded again. Events of cluster-scoped objects are in the
    namespace default."""

    kind: Literal["Event"] = "Event"
    involvedObject: ObjectReference
    """The object the event is about."""
    reason: Annotated[str, Field(min_length=1, max_length=128)]
    """What happened, as one CamelCase word: Scheduled, FailedScheduling, Created, NodeLost..."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """What happened, in words (the last time, for a repeat)."""
    type: Literal["Normal", "Warning"] = "Normal"
    """Normal, or Warning for a problem."""
    count: Annotated[int, Field(ge=1)] = 1
    """How many times it happened."""
    firstTimestamp: str | None = None
    """When it first happened (RFC 3339, UTC); set by the server if not given."""
    lastTimestamp: str | None = None
    """When it last happened (RFC 3339, UTC); set by the server if not given."""
    source: Annotated[str, Field(max_length=253)] = ""
    """What recorded it: api (a client's change), scheduler, gc, node-lifecycle, runnerpool,
    warmpool, controller, or agent/NODE."""
