"""What every controller needs, built once per API process in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from arq.connections import ArqRedis
from redis.asyncio import Redis

from ade.api.stream_slots import StreamSlots
from ade.core.settings import Settings
from ade.events.hub import Hub
from ade.records.artifacts import ArtifactStore
from ade.records.audit import AuditLog
from ade.records.auth import StreamTokens
from ade.records.store import Store
from ade.records.summary import Summaries

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
    stream_slots: StreamSlots
