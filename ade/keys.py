"""Every Redis key and channel name ADE uses, with its TTL. No logic beyond formatting."""

PREFIX = "ade"


# Metadata (no TTL: the data directory is the durable copy; `ade reindex` rebuilds these).
def workspace(workspace_id: str) -> str:
    return f"{PREFIX}:workspace:{workspace_id}"


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


# Streams: one writer lease and one pub/sub channel per stream (a run or a build).
def stream_lease(stream_id: str) -> str:
    return f"{PREFIX}:lease:{stream_id}"


# A lease's TTL is Settings.lease_ttl_s; its writer renews it every third of that.
def stream_channel(stream_id: str) -> str:
    return f"{PREFIX}:events:{stream_id}"


# Queue: arq's queue plus a wake-up channel so idle workers pick a job up at once.
QUEUE_NAME = f"{PREFIX}:queue"
QUEUE_WAKE_CHANNEL = f"{PREFIX}:queue:wake"

# Worker liveness: each worker refreshes its key; readiness looks for any.
WORKER_TTL_S = 10


def worker(name: str) -> str:
    return f"{PREFIX}:worker:{name}"


WORKER_PATTERN = f"{PREFIX}:worker:*"

# The hub's own control channel (keeps its pub/sub connection subscribed while idle).
HUB_CONTROL_CHANNEL = f"{PREFIX}:hub:control"
