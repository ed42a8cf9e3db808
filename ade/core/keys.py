"""Every Redis key and channel name ADE uses, with its TTL. No logic beyond formatting."""

PREFIX = "ade"


# Metadata (no TTL: the data directory is the durable copy; `ade reindex` rebuilds these).
def workspace(workspace_id: str) -> str:
    return f"{PREFIX}:workspace:{workspace_id}"


def account_workspaces(account_id: str) -> str:
    """Sorted set (all scores 0, ordered by id) of the workspaces of a build server account (`accountId`)."""
    return f"{PREFIX}:account:{account_id}:workspaces"


def configuration(configuration_id: str) -> str:
    return f"{PREFIX}:configuration:{configuration_id}"


def workspace_configurations(workspace_id: str) -> str:
    """Sorted set (all scores 0, ordered by id = creation time) of a workspace's configurations."""
    return f"{PREFIX}:workspace:{workspace_id}:configurations"


def run(run_id: str) -> str:
    return f"{PREFIX}:run:{run_id}"


def workspace_runs(workspace_id: str) -> str:
    """Sorted set (all scores 0, lexical order = ULID order = creation time) of a workspace's runs."""
    return f"{PREFIX}:workspace:{workspace_id}:runs"


def api_key(key_id: str) -> str:
    return f"{PREFIX}:api_key:{key_id}"


def workspace_api_keys(workspace_id: str) -> str:
    return f"{PREFIX}:workspace:{workspace_id}:api_keys"


# Docker images (no TTL: `docker_images/<id>.json` in the data directory is the durable copy). A slug names
# one image in a workspace's view: its own images' slugs and every public slug are distinct.
def docker_image(image_id: str) -> str:
    return f"{PREFIX}:docker_image:{image_id}"


def workspace_docker_images(workspace_id: str) -> str:
    """Sorted set (all scores 0, ordered by id) of the images a workspace created (public ones included)."""
    return f"{PREFIX}:workspace:{workspace_id}:docker_images"


def workspace_image_slugs(workspace_id: str) -> str:
    """Hash: slug -> id of each image the workspace created."""
    return f"{PREFIX}:workspace:{workspace_id}:docker_image_slugs"


PUBLIC_DOCKER_IMAGES = f"{PREFIX}:docker_images:public"  # sorted set of public image ids
PUBLIC_IMAGE_SLUGS = f"{PREFIX}:docker_images:public_slugs"  # hash: slug -> id of the public image
IMAGE_SLUG_USES = f"{PREFIX}:docker_images:slug_uses"  # hash: slug -> how many images (any workspace) have it


# Runners (no TTL: `runners/<id>.json` in the data directory is the durable copy), except their heartbeats,
# which live in Redis only (a runner sends one every second; `ade reindex` leaves them to the next one).
def runner(runner_id: str) -> str:
    return f"{PREFIX}:runner:{runner_id}"


def workspace_runners(workspace_id: str) -> str:
    """Sorted set (all scores 0, ordered by id) of the runners registered for one workspace."""
    return f"{PREFIX}:workspace:{workspace_id}:runners"


GLOBAL_RUNNERS = f"{PREFIX}:runners:global"  # sorted set of the runners that serve every workspace
ALL_RUNNERS = f"{PREFIX}:runners"  # sorted set of every runner id
RUNNER_HEARTBEATS = f"{PREFIX}:runners:heartbeats"  # hash: runner id -> its last heartbeat (JSON)


def audit(workspace_id: str | None) -> str:
    """List of a workspace's audit entries (encoded), oldest first; `None`: every workspace's."""
    return f"{PREFIX}:audit:{workspace_id}" if workspace_id else f"{PREFIX}:audit"


def sse_slots(actor: str) -> str:
    """Sorted set of an API key's open SSE connections, scored by when each slot expires (ms)."""
    return f"{PREFIX}:sse:{actor}"


SSE_SLOT_TTL_S = 60  # renewed every TTL/3 by the process holding it (api/stream_slots.py)


# Streams: one writer lease and one pub/sub channel per stream (a run or a build).
def stream_lease(stream_id: str) -> str:
    return f"{PREFIX}:lease:{stream_id}"


ALL_RUNS = f"{PREFIX}:runs"  # every run id, for id-prefix lookups by the bootstrap token


def configuration_runs(configuration_id: str) -> str:
    return f"{PREFIX}:configuration:{configuration_id}:runs"


def run_attempts(original_run_id: str) -> str:
    """Counter of a run lineage's attempts (re-runs)."""
    return f"{PREFIX}:run:{original_run_id}:attempts"


def run_cancel(stream_id: str) -> str:
    """Set (to the requesting actor) when a cancel of a run or build is requested; read by its worker."""
    return f"{PREFIX}:cancel:{stream_id}"


# Builds.
def build(build_id: str) -> str:
    return f"{PREFIX}:build:{build_id}"


ALL_BUILDS = f"{PREFIX}:builds"


def workspace_builds(workspace_id: str) -> str:
    return f"{PREFIX}:workspace:{workspace_id}:builds"


def configuration_builds(configuration_id: str) -> str:
    return f"{PREFIX}:configuration:{configuration_id}:builds"


def build_ready(fingerprint: str) -> str:
    """The id of the ready build with this fingerprint (the one to reuse)."""
    return f"{PREFIX}:build:fp:{fingerprint}:ready"


def build_active(fingerprint: str) -> str:
    """The id of the build of this fingerprint being prepared now (the one to join)."""
    return f"{PREFIX}:build:fp:{fingerprint}:active"


def build_users(build_id: str) -> str:
    """Set of unfinished runs that need this build's environment (retention never removes it then)."""
    return f"{PREFIX}:build:{build_id}:users"


RUN_CANCEL_TTL_S = 7 * 24 * 3600
CANCEL_CHANNEL = f"{PREFIX}:cancel"


# A lease's TTL is Settings.lease_ttl_s; its writer renews it every third of that.
def stream_channel(stream_id: str) -> str:
    return f"{PREFIX}:events:{stream_id}"


# Queue: arq's queue plus a wake-up channel so idle workers pick a job up at once.
QUEUE_NAME = f"{PREFIX}:queue"
BUILD_SWEEP_LOCK = f"{PREFIX}:builds:sweep-lock"
QUEUE_WAKE_CHANNEL = f"{PREFIX}:queue:wake"


# Fair share (DESIGN.md invariant 9): how many runs of a workspace hold a slot, and which wait for one.
def workspace_running(workspace_id: str) -> str:
    """Set of a workspace's run ids holding one of its slots (taken before the run starts, given back when
    it ends); its size is compared with the workspace's cap."""
    return f"{PREFIX}:workspace:{workspace_id}:running"


def workspace_capped(workspace_id: str) -> str:
    """Sorted set (all scores 0, lexical order = creation order) of a workspace's queued runs parked because
    the workspace was at its cap; the oldest is made due again when a slot is given back."""
    return f"{PREFIX}:workspace:{workspace_id}:capped"


def workspace_cap(workspace_id: str) -> str:
    """The cap the workers last applied to a workspace (what `GET /runs/{id}` of a waiting run reports)."""
    return f"{PREFIX}:workspace:{workspace_id}:cap"


RUNNING_RUNS = f"{PREFIX}:running"  # hash: run id -> workspace id of every run holding a workspace slot


# Worker liveness: each worker refreshes its key; readiness looks for any.
WORKER_TTL_S = 10


def worker(name: str) -> str:
    return f"{PREFIX}:worker:{name}"


WORKER_PATTERN = f"{PREFIX}:worker:*"

# The hub's own control channel (keeps its pub/sub connection subscribed while idle).
HUB_CONTROL_CHANNEL = f"{PREFIX}:hub:control"


# Artifacts: a hash per workspace, field = artifact key ("sha256:<hex>"), value = the Artifact (JSON).
# No TTL: `artifacts/index/<ws>.ndjson` in the data directory is the durable copy.
def workspace_artifacts(workspace_id: str) -> str:
    return f"{PREFIX}:workspace:{workspace_id}:artifacts"


# Metrics shared by every process (API and workers); /metrics renders them.
METRICS_RUNS_FINISHED = f"{PREFIX}:metrics:runs_finished"  # hash: status -> count
METRICS_PICKUP = f"{PREFIX}:metrics:pickup"  # hash: bucket upper bound (s) or "sum"/"count" -> value
METRICS_EVENTS = f"{PREFIX}:metrics:events"  # hash: "dispatched" -> count


# Liveness of runs and builds: the ones not yet ended, and where their step processes run.
ACTIVE_STREAMS = f"{PREFIX}:active"  # sorted set of run and build ids not in a terminal status
REAPER_LOCK = f"{PREFIX}:reaper-lock"
REAPER_SUSPECTS = f"{PREFIX}:reaper:suspects"  # hash: stream id -> when its lease was first seen missing (s)


def step_process(stream_id: str) -> str:
    """`<host> <pgid>` of the step process group a run or build started last (the reaper kills it when the
    worker died). One is enough with parallel steps: a sandboxed step's processes die with their worker
    (see `ade.execution.deps.process_recorder`)."""
    return f"{PREFIX}:pgid:{stream_id}"


def idempotency(scope_sha256: str) -> str:
    """The resource an Idempotency-Key created (TTL 24 h)."""
    return f"{PREFIX}:idempotency:{scope_sha256}"


# Runners (README "Runners"): runs with `runs_on` are offered to runners instead of arq's queue.
RUNNER_OFFERS = f"{PREFIX}:runner:offers"  # sorted set: run id -> when it was offered (ms); oldest first
RUNNER_OFFER_TERMS = f"{PREFIX}:runner:offer-terms"  # hash: run id -> "<workspace id> <label> <label>…"


def runner_run_alive(run_id: str) -> str:
    """Set (TTL Settings.runner_lost_after_s) while the runner executing a run is heard from; the reaper
    fails the run `runner_lost` once it is gone."""
    return f"{PREFIX}:runner:alive:{run_id}"


def runner_applied(run_id: str) -> str:
    """How many of its runner's reports of a run the API has applied (`<count> <last sequence>`): a chunk
    sent again is applied once."""
    return f"{PREFIX}:runner:applied:{run_id}"
