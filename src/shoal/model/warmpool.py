"""WarmPool: saved, ready-to-resume VMs of a VMConfig; a deploy from that VMConfig claims one
(shoal.warmpool)."""

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from shoal.model.kinds import TypeMeta
from shoal.model.meta import Condition, DNSLabel, Labels, StrictModel, get_condition

WARM_POOL_FINALIZER = "shoal.dev/warmpool"
# On a pool's entries (VirtualMachines): the pool's name.
POOL_LABEL = "warmpools.shoal.dev/pool"
# A pool's entries are VMs named <pool>-w<5 characters>: the name leaves room for that.
MAX_WARM_POOL_NAME = 56
WarmPoolMode = Literal["suspended", "clone"]
# Set by an entry's agent once the entry is saved; from then on the entry never runs as itself,
# and reserves disk but no cpu, memory or VM slot on its node.
SAVED_CONDITION = "Saved"


def is_saved(vm: dict[str, Any]) -> bool:
    """Whether the VM is a saved warm-pool entry (whatever happens to its object after)."""
    condition = get_condition(vm, SAVED_CONDITION)
    return condition is not None and condition.get("status") == "True"


class WarmPoolSpec(StrictModel):
    # The VMConfig (in the pool's namespace) whose VMs the pool serves.
    config: DNSLabel
    # suspended: `size` entries, each booted once, saved, and resumed by one VM.
    # clone: one golden saved state on each of `size` nodes; every VM on such a node starts
    # from it (memory mapped copy-on-write, a disk overlay of its own).
    mode: WarmPoolMode = "suspended"
    size: Annotated[int, Field(ge=0, le=1000)] = 1
    # Narrows where entries are made, beyond the VMConfig's own nodeSelector.
    nodeSelector: Labels = Field(default_factory=dict)
    # An entry not claimed this long after it was saved is discarded and made again (its
    # clock, caches and packages age while it waits).
    maxIdleSeconds: Annotated[int, Field(ge=60, le=30 * 86400)] | None = None
    # An entry is discarded this long after it was made (booted), claimed or not.
    maxAgeSeconds: Annotated[int, Field(ge=60, le=365 * 86400)] | None = None

    @model_validator(mode="after")
    def _idle_within_age(self) -> "WarmPoolSpec":
        if (
            self.maxIdleSeconds is not None
            and self.maxAgeSeconds is not None
            and self.maxIdleSeconds > self.maxAgeSeconds
        ):
            raise ValueError(
                f"maxIdleSeconds {self.maxIdleSeconds} is more than maxAgeSeconds "
                f"{self.maxAgeSeconds}: an entry would reach its age first"
            )
        return self


class WarmPoolStatus(StrictModel):
    # Entries saved and ready to hand out.
    ready: Annotated[int, Field(ge=0)] = 0
    # Entries being made (booting, or being saved).
    refilling: Annotated[int, Field(ge=0)] = 0
    # Entries handed to a VM whose node has not released them yet.
    claiming: Annotated[int, Field(ge=0)] = 0
    # Why the last entry was discarded, and when.
    lastDiscardReason: Annotated[str, Field(max_length=4096)] = ""
    lastDiscardTime: str | None = None
    message: Annotated[str, Field(max_length=4096)] = ""
    conditions: list[Condition] = Field(default_factory=list)
    observedGeneration: Annotated[int, Field(ge=0)] = 0


class WarmPool(TypeMeta):
    kind: Literal["WarmPool"] = "WarmPool"
    spec: WarmPoolSpec
    status: WarmPoolStatus = Field(default_factory=WarmPoolStatus)
