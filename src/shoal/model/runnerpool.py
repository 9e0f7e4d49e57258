"""RunnerPool: CI runners on demand, one fresh VM per queued job (ci/runners/)."""

from typing import Annotated, Literal

from pydantic import Field, model_validator

from shoal.model.kinds import (
    Arch,
    Cpu,
    DiskQuantity,
    EnvVar,
    GuestAccess,
    GuestOS,
    MemoryQuantity,
    SecretRef,
    TypeMeta,
)
from shoal.model.meta import Condition, DNSLabel, Labels, StrictModel

Url = Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^https?://[^\s/]+(/\S*)?$")]
RunnerLabel = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\s,]+$")]
Provider = Literal["github", "jenkins", "buildkite"]
# Held by a pool until its VMs, runner Secrets and CI-side runners are gone.
RUNNER_POOL_FINALIZER = "shoal.dev/runnerpool"
# A VM of the pool is called <pool>-<10 chars>: the pool's name leaves room for that.
MAX_POOL_NAME = 52


class GitHubTarget(StrictModel):
    """Where GitHub Actions jobs come from: an organization's or one repository's. The
    credentials Secret holds `token` (a token that may manage self-hosted runners), or `appId`,
    `installationId` and `privateKey` of a GitHub App; and `webhookSecret`, which the pool's
    webhook checks deliveries against."""

    apiURL: Url = "https://api.github.com"
    """GitHub's REST API; for GitHub Enterprise Server, https://HOST/api/v3."""
    organization: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    """The organization whose jobs the pool serves. Give exactly one of organization and
    repository."""
    repository: Annotated[str, Field(pattern=r"^[^/\s]+/[^/\s]+$", max_length=200)] | None = None
    """The repository whose jobs the pool serves, as owner/name. Give exactly one of
    organization and repository."""
    runnerGroup: Annotated[str, Field(min_length=1, max_length=256)] = "Default"
    """The organization's runner group the runners join; a repository's runners are in its
    Default group."""
    labels: list[RunnerLabel] = Field(min_length=1, max_length=100)
    """The runners' labels: a job runs on the pool's runners when all its runs-on labels are
    among these and GitHub's own (self-hosted, the OS, the architecture)."""

    @model_validator(mode="after")
    def _one_scope(self) -> "GitHubTarget":
        if (self.organization is None) == (self.repository is None):
            raise ValueError("give exactly one of organization or repository")
        if self.repository is not None and self.runnerGroup != "Default":
            raise ValueError(
                "runnerGroup: runner groups are an organization's; a repository's runners are "
                "in its Default group"
            )
        return self


class JenkinsTarget(StrictModel):
    """A Jenkins controller whose queued builds for `label` get one agent VM each. The
    credentials Secret holds `username` and `apiToken`."""

    url: Url
    """Jenkins' root URL, such as https://jenkins.example.com/."""
    label: RunnerLabel
    """The label whose queued builds get an agent VM each."""


class BuildkiteTarget(StrictModel):
    """A Buildkite organization's queue. The credentials Secret holds `agentToken` (the agent
    registration token: the metrics API and the agents use it) and `apiToken` (a REST API token
    with read_agents, to find and stop the pool's agents)."""

    organization: Annotated[str, Field(min_length=1, max_length=100)]
    """The organization's slug, as in its Buildkite URLs."""
    queue: Annotated[str, Field(min_length=1, max_length=100)] = "default"
    """The queue whose jobs get an agent VM each."""
    apiURL: Url = "https://api.buildkite.com"
    """Buildkite's REST API."""
    agentAPIURL: Url = "https://agent.buildkite.com"
    """Buildkite's Agent API: the pool reads the queue's metrics there, and its agents
    connect to it."""


class RunnerTemplate(StrictModel):
    """The VM each runner gets: a VMConfig, an image, or both (fields here override the
    VMConfig's). The pool sets the rest itself: ephemeral, deleteWhenScriptExits, and the
    startup script that starts the runner."""

    config: DNSLabel | None = None
    """A VMConfig of the pool's namespace the runner VMs start from."""
    image: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    """The image to boot: the name of an Image, or an OCI reference."""
    cpu: Cpu | None = None
    """vCPUs of each runner VM, 1 to 512."""
    memory: MemoryQuantity | None = None
    """Memory of each runner VM, in bytes with a suffix like 8Gi; at least 64Mi."""
    disk: DiskQuantity | None = None
    """Disk size of each runner VM, in bytes with a suffix like 50Gi; at least 64Mi."""
    os: GuestOS | None = None
    """The guest's operating system: linux or macos."""
    arch: Arch | None = None
    """The guest's CPU architecture: amd64 or arm64."""
    nodeSelector: Labels = Field(default_factory=dict)
    """Node labels (tags) a node must all have to take a runner VM."""
    preferredNodeSelector: Labels = Field(default_factory=dict)
    """Soft tags: nodes that have them score higher, nodes that lack them still qualify."""
    priority: Annotated[int, Field(ge=-1000000, le=1000000)] | None = None
    """The runner VMs' priority: higher is scheduled first."""
    access: GuestAccess | None = None
    """How the agent logs in to the guest to start the runner (an ssh-auth Secret)."""
    env: list[EnvVar] = Field(default_factory=list, max_length=200)
    """The environment of the runner VMs' guest commands and startup script: values, or keys
    of Secrets."""

    @model_validator(mode="after")
    def _image_or_config(self) -> "RunnerTemplate":
        if self.config is None and self.image is None:
            raise ValueError("give image, config (a VMConfig), or both")
        return self


class RunnerPoolSpec(StrictModel):
    """The CI system to serve, its credentials, and the runner VMs to make."""

    provider: Provider
    """The CI system: github, jenkins or buildkite. The field of that name holds its target,
    and no other target is given."""
    github: GitHubTarget | None = None
    """The GitHub Actions target, for provider: github."""
    jenkins: JenkinsTarget | None = None
    """The Jenkins target, for provider: jenkins."""
    buildkite: BuildkiteTarget | None = None
    """The Buildkite target, for provider: buildkite."""
    credentialsRef: SecretRef
    """A Secret of the pool's namespace with the provider's credentials (the keys each
    target's description names)."""
    template: RunnerTemplate
    """The VM each runner gets."""
    maxRunners: Annotated[int, Field(ge=0, le=10000)] = 10
    """At most this many runner VMs at once; 0 stops the pool. Default 10."""
    minIdle: Annotated[int, Field(ge=0, le=10000)] = 0
    """Runners kept started ahead of demand (at most maxRunners)."""
    runnerCommand: Annotated[str, Field(min_length=1, max_length=65536)] | None = None
    """The shell script a runner VM runs to start one runner; unset: the provider's default.
    It gets the registration (JIT config, agent secret, agent token) in its environment."""
    idleTimeoutSeconds: Annotated[int, Field(ge=30, le=7 * 86400)] = 900
    """A runner that has not taken a job this many seconds after its VM was made is removed
    (a job still queued then gets a new one). Default 900."""
    syncIntervalSeconds: Annotated[int, Field(ge=5, le=3600)] = 30
    """How often, in seconds, the CI system is asked again, webhooks or not (they get lost).
    Default 30."""

    @model_validator(mode="after")
    def _target_of_provider(self) -> "RunnerPoolSpec":
        given = [p for p in ("github", "jenkins", "buildkite") if getattr(self, p) is not None]
        if given != [self.provider]:
            raise ValueError(
                f"provider {self.provider!r} takes spec.{self.provider} and no other target"
                + (f" (got {', '.join('spec.' + g for g in given)})" if given else "")
            )
        if self.minIdle > self.maxRunners:
            raise ValueError(f"minIdle {self.minIdle} is more than maxRunners {self.maxRunners}")
        return self


class RunnerCounts(StrictModel):
    """The pool's runners by state, at the last sync."""

    starting: Annotated[int, Field(ge=0)] = 0
    """Their VM exists and the CI system does not see the runner online yet."""
    idle: Annotated[int, Field(ge=0)] = 0
    """Online, without a job."""
    busy: Annotated[int, Field(ge=0)] = 0
    """Running a job."""
    finishing: Annotated[int, Field(ge=0)] = 0
    """Done: the VM is being deleted, its script ended, or the runner ended its one job."""


class RunnerPoolStatus(StrictModel):
    """What the pool's loop saw at its last sync."""

    runners: RunnerCounts = Field(default_factory=RunnerCounts)
    """The pool's runners by state."""
    jobsWaiting: Annotated[int, Field(ge=0)] = 0
    """Jobs waiting for a runner of the pool."""
    lastSyncTime: str | None = None
    """When the CI system last answered a sync (RFC 3339, UTC)."""
    message: Annotated[str, Field(max_length=4096)] = ""
    """Why jobs wait, in words: "2 jobs waiting: at maxRunners 3"; or the last sync's
    problem."""
    conditions: list[Condition] = Field(default_factory=list)
    """Synced (the CI system answered), AtMaxRunners and RunnersScheduled (runner VMs found
    nodes)."""
    observedGeneration: Annotated[int, Field(ge=0)] = 0
    """The metadata.generation whose spec the pool's loop last acted on."""


class RunnerPool(TypeMeta):
    """CI runners on demand: every queued job of the pool's CI system gets one fresh VM that
    runs one runner for that job, and is deleted after it."""

    kind: Literal["RunnerPool"] = "RunnerPool"
    spec: RunnerPoolSpec
    status: RunnerPoolStatus = Field(default_factory=RunnerPoolStatus)
