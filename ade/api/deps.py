"""What every controller needs, built once per API process in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from arq.connections import ArqRedis
from redis.asyncio import Redis

from ade.artifacts import ArtifactStore
from ade.audit import AuditLog
from ade.auth import StreamTokens
from ade.hub import Hub
from ade.settings import Settings
from ade.store import Store
from ade.summary import Summaries

API_PREFIX = "/api/v1"


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    redis: Redis
    arq: ArqRedis
    store: Store
    hub: Hub
    audit: AuditLog
    stream_tokens: StreamTokens
    artifacts: ArtifactStore
    summaries: Summaries
