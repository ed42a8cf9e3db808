"""Prometheus metrics. Counters that several processes add to live in Redis (`keys.METRICS_*`): runs
finished by status, the pickup latency histogram, events dispatched. Each API process adds what only it
knows: its SSE subscribers and its hub's lag. `render` turns them into the text exposition format."""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from typing import Any, cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from redis.asyncio import Redis

from ade.core import keys

PICKUP_BUCKETS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RUN_STATUSES = ("queued", "waiting_for_build", "running", "succeeded", "failed", "cancelled")


async def record_run_finished(redis: Redis, status: str) -> None:
    await cast(Awaitable[int], redis.hincrby(keys.METRICS_RUNS_FINISHED, status, 1))


async def record_pickup(redis: Redis, seconds: float) -> None:
    """Time from a run's creation to its start, into a cumulative histogram."""
    async with redis.pipeline(transaction=False) as pipe:
        for bound in PICKUP_BUCKETS_S:
            if seconds <= bound:
                pipe.hincrby(keys.METRICS_PICKUP, str(bound), 1)
        pipe.hincrbyfloat(keys.METRICS_PICKUP, "sum", seconds)
        pipe.hincrby(keys.METRICS_PICKUP, "count", 1)
        await pipe.execute()


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


async def render(redis: Redis, *, sse_subscribers: int, hub_backlog_events: int, hub_lag_s: float) -> bytes:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.METRICS_RUNS_FINISHED)
        pipe.hgetall(keys.METRICS_PICKUP)
        pipe.hgetall(keys.METRICS_EVENTS)
        pipe.zcard(keys.QUEUE_NAME)
        finished, pickup, events, queue_depth = await pipe.execute()
    text: dict[str, str] = {}
    for raw in (finished, pickup, events):
        for key, value in cast(dict[bytes, bytes], raw).items():
            text[key.decode()] = value.decode()
    runs = CounterMetricFamily("ade_runs_finished", "Runs that reached a terminal status", labels=["status"])
    for status in ("succeeded", "failed", "cancelled"):
        runs.add_metric([status], float(cast(dict[bytes, bytes], finished).get(status.encode(), b"0")))
    histogram = HistogramMetricFamily("ade_pickup_latency_seconds", "From POST …/runs to run.started")
    pickup_map = {k.decode(): v.decode() for k, v in cast(dict[bytes, bytes], pickup).items()}
    buckets: list[tuple[str, float]] = [(str(b), float(pickup_map.get(str(b), 0))) for b in PICKUP_BUCKETS_S]
    buckets.append(("+Inf", float(pickup_map.get("count", 0))))
    histogram.add_metric([], buckets, float(pickup_map.get("sum", 0)))
    dispatched = CounterMetricFamily("ade_events_dispatched", "Events sequenced, logged and published")
    dispatched.add_metric([], float(cast(dict[bytes, bytes], events).get(b"dispatched", b"0")))
    families: list[Metric] = [
        runs,
        histogram,
        dispatched,
        _gauge("ade_queue_depth", "Jobs waiting in the arq queue", float(queue_depth)),
        _gauge("ade_sse_subscribers", "Open event streams on this API process", float(sse_subscribers)),
        _gauge("ade_hub_backlog_events", "Events queued for the slowest subscriber here", hub_backlog_events),
        _gauge("ade_hub_lag_seconds", "Age of the newest event the hub got, on arrival", hub_lag_s),
    ]
    registry = CollectorRegistry()
    registry.register(cast(Any, _Families(families)))
    return generate_latest(registry)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation)
    gauge.add_metric([], value)
    return gauge
