"""Benchmark: fan-out of live events to many SSE subscribers on one API process.

Each rung `SUBSCRIBERSxRUNS@RATE` starts RUNS runs that each print RATE lines/s for `--seconds` s (a Python
loop in their step, after a warm-up that lets every subscriber connect first), and SUBSCRIBERS raw HTTP/1.1
connections spread evenly over them follow their SSE streams (chunked bodies parsed by hand: no client
library in the way). Every subscriber must see ids 1..N exactly once, in order, and `event: end`.

Latency is an event's `created_at` to its arrival at a subscriber, for every event created after all
subscribers had their first frames. The client keeps its own cost low so that the API gets the CPU: per
HTTP chunk it checks the ids, and takes each event's `created_at` from the first subscriber that sees it.
Also reported: the API's RSS (before, peak) and CPU seconds over the rung; and while the steps print, the
writes each subscriber got per second, how busy the API, this client and the whole machine (all cores)
were, and the hub's lag (the age of the newest event it got, on arrival, sampled each second from /metrics:
it grows when the API's event loop is busy, e.g. with a long flush).

`--api-core N` gives the API process core N alone and puts everything else (this client, the worker and its
steps, Redis) on the other cores: what the API does when the load generator does not take its CPU.

Usage: python scripts/bench_fanout.py [--ladder 100x1@200,300x1@200,1000x1@200,5000x50@20] [--seconds 30]
                                      [--api-core N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pickup import API, AdeStack, ade_stack, cpu_seconds, exit_on_sigterm, machine_busy_seconds

IDS = re.compile(rb"id: (\d+)\nevent: ade")  # a literal prefix: the regex engine skips ahead fast
STAMPS = re.compile(rb'id: (\d+)\nevent: ade\.event\ndata: \{[^\n]*?"created_at":"([^"]+)"')
END = b"event: end\n"
HISTOGRAM_MS = 120_000  # latencies are counted in 1 ms buckets up to this


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def epoch_s(stamp: bytes) -> float:
    return datetime.fromisoformat(stamp.decode().replace("Z", "+00:00")).timestamp()


@dataclass
class Stream:
    """What the subscribers of one run share: each event's `created_at`, taken from the first to see it."""

    created_s: dict[int, float] = field(default_factory=dict)
    newest: int = 0


@dataclass
class Tally:
    """Every HTTP chunk's arrival (time, stream, first id, number of events); latencies are worked out at
    the end, so that counting costs the client next to nothing while the API works."""

    since_s: float = float("inf")  # events created from then on count
    arrived_s: array[float] = field(default_factory=lambda: array("d"))
    streams: list[Stream] = field(default_factory=list)
    firsts: array[int] = field(default_factory=lambda: array("q"))
    sizes: array[int] = field(default_factory=lambda: array("q"))

    def record(self, now_s: float, stream: Stream, first: int, size: int) -> None:
        self.arrived_s.append(now_s)
        self.streams.append(stream)
        self.firsts.append(first)
        self.sizes.append(size)

    def histogram_ms(self) -> array[int]:
        counts = array("q", bytes(8 * HISTOGRAM_MS))
        for now_s, stream, first, size in zip(
            self.arrived_s, self.streams, self.firsts, self.sizes, strict=True
        ):
            for sequence in range(first, first + size):
                created_s = stream.created_s[sequence]
                if created_s >= self.since_s:
                    counts[min(HISTOGRAM_MS - 1, int((now_s - created_s) * 1000))] += 1
        return counts


def percentile_ms(counts: array[int], pct: float) -> float:
    rank, seen = sum(counts) * pct / 100, 0
    for ms, n in enumerate(counts):
        seen += n
        if n and seen >= rank:
            return ms + 0.5
    return float("nan")


@dataclass
class Subscriber:
    stream: Stream
    expected: int = 1
    first_frame: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False
    writes: int = 0  # HTTP chunks received: the API's sends to this subscriber
    error: str = ""


async def follow(host: str, port: int, path: str, token: str, sub: Subscriber, tally: Tally) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        status = await reader.readline()
        if b" 200 " not in status:
            sub.error = status.decode(errors="replace")
            return
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        rest = b""
        stream = sub.stream
        while size := int((await reader.readline()).strip() or b"0", 16):
            data = rest + (await reader.readexactly(size + 2))[:-2]
            now_s = time.time()
            sub.writes += 1
            cut = data.rfind(b"\n\n") + 2
            frames, rest = data[:cut], data[cut:]
            ids = list(map(int, IDS.findall(frames)))
            if ids:
                if ids != list(range(sub.expected, sub.expected + len(ids))):
                    sub.error = f"expected ids from {sub.expected}, got {ids[:5]}…"
                    return
                sub.expected += len(ids)
                if ids[-1] > stream.newest:
                    stream.created_s.update((int(i), epoch_s(s)) for i, s in STAMPS.findall(frames))
                    stream.newest = ids[-1]
                tally.record(now_s, stream, ids[0], len(ids))
                sub.first_frame.set()
            if END in frames:
                sub.ended = True
                return
    finally:
        writer.close()


@dataclass(frozen=True)
class Rung:
    subscribers: int
    runs: int
    rate: int

    @classmethod
    def parse(cls, text: str) -> Rung:
        subscribers, _, rest = text.partition("x")
        runs, _, rate = rest.partition("@")
        return cls(int(subscribers), int(runs or 1), int(rate or 200))


async def one_rung(ade: AdeStack, rung: Rung, seconds: float) -> dict[str, float | str]:
    host, port = "127.0.0.1", int(ade.base_url.rsplit(":", 1)[1])
    lines = int(rung.rate * seconds)
    warmup_s = 3 + rung.subscribers / 300  # every subscriber connects first (~350 opens/s here)
    script = (
        "python3 -c 'import time\n"
        f"time.sleep({warmup_s})\nstart = time.monotonic()\nfor i in range({lines}):\n"
        f'    print("line-%d" % i, flush=True)\n'
        f"    time.sleep(max(0, start + (i + 1) / {rung.rate} - time.monotonic()))'"
    )
    async with ade.client() as client:
        ws = (await client.post(f"{API}/workspaces", json={"name": "fanout"})).json()["id"]
        key = (
            await client.post(f"{API}/workspaces/{ws}/api-keys", json={"name": "fanout", "role": "viewer"})
        ).json()["secret"]
        body = {"name": "fanout", "steps": [{"name": "s", "script": script}]}
        cfg = (await client.post(f"{API}/workspaces/{ws}/configurations", json=body)).json()["id"]
        rss_before = rss_mb(ade.api.pid)
        cpu_before = cpu_seconds(ade.api.pid)
        run_ids = [
            (await client.post(f"{API}/configurations/{cfg}/runs", json={})).json()["id"]
            for _ in range(rung.runs)
        ]
        printing = time.monotonic() + warmup_s  # about when the steps start printing
    streams = {run_id: Stream() for run_id in run_ids}
    tally = Tally()
    subs = [Subscriber(streams[run_ids[i % rung.runs]]) for i in range(rung.subscribers)]
    opened = time.monotonic()
    tasks = [
        asyncio.create_task(
            follow(host, port, f"{API}/runs/{run_ids[i % rung.runs]}/events?stream=true", key, sub, tally)
        )
        for i, sub in enumerate(subs)
    ]
    all_live = asyncio.gather(*(sub.first_frame.wait() for sub in subs))
    await asyncio.wait([all_live, *tasks], return_when=asyncio.FIRST_COMPLETED)  # a task done: it broke
    tally.since_s = time.time()
    open_s = time.monotonic() - opened
    peak_rss, hub_lags_s = rss_mb(ade.api.pid), []
    await asyncio.wait(tasks, timeout=max(0.0, printing - time.monotonic()))  # the rest of the warm-up
    # While the steps print: how busy the API and the whole machine are, and the hub's lag.
    started, machine_busy = time.monotonic(), machine_busy_seconds()
    api_cpu, client_cpu = cpu_seconds(ade.api.pid), time.process_time()
    async with ade.client() as client:
        while not all(task.done() for task in tasks):
            peak_rss = max(peak_rss, rss_mb(ade.api.pid))
            hub_lags_s.append(await hub_lag_s(client))
            await asyncio.wait(tasks, timeout=1.0)
    printed_s = time.monotonic() - started
    api_busy = (cpu_seconds(ade.api.pid) - api_cpu) / printed_s
    client_busy = (time.process_time() - client_cpu) / printed_s
    machine = (machine_busy_seconds() - machine_busy) / printed_s / (os.cpu_count() or 1)
    errors = [sub.error or "no `end`" for sub in subs if sub.error or not sub.ended]
    histogram = tally.histogram_ms()
    return {
        "subscribers/runs/rate": f"{rung.subscribers}/{rung.runs}/{rung.rate}",
        "events each": subs[0].expected - 1,
        "p50 ms": percentile_ms(histogram, 50),
        "p99 ms": percentile_ms(histogram, 99),
        "max ms": percentile_ms(histogram, 100),
        "API RSS MB before/peak": f"{rss_before:.0f}/{peak_rss:.0f}",
        "API CPU s": cpu_seconds(ade.api.pid) - cpu_before,
        "writes per subscriber-s": sum(sub.writes for sub in subs) / rung.subscribers / seconds,
        "while printing: API busy %": 100 * api_busy,
        "client busy %": 100 * client_busy,
        "machine busy %": 100 * machine,
        "hub lag ms p50/max": f"{1000 * statistics.median(hub_lags_s):.0f}/{1000 * max(hub_lags_s):.0f}",
        "all live in s": open_s,
        "broken": len(errors),
        "first error": errors[0] if errors else "",
    }


async def hub_lag_s(client: httpx.AsyncClient) -> float:
    """The age of the newest event the API's hub got, on arrival (its /metrics): the latency the API
    inherits from the worker and Redis before its own part."""
    text = (await client.get("/metrics")).text
    return float(text.split("\nade_hub_lag_seconds ", 1)[1].split("\n", 1)[0])


def pin(pid: int, cores: set[int]) -> None:
    """Every thread of process `pid` (and whatever it starts from now on) on `cores`."""
    for thread in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(thread), cores)


def isolate_api(ade: AdeStack, core: int) -> None:
    """The API on `core` alone; this process, the worker (its steps inherit it) and Redis on the others."""
    others = os.sched_getaffinity(0) - {core}
    if not others:
        raise SystemExit(f"--api-core {core}: no other core is left for the rest")
    redis = ade.redis.process
    assert redis is not None
    pin(ade.api.pid, {core})
    for pid in (os.getpid(), ade.worker.pid, redis.pid):
        pin(pid, others)
    print(f"  the API alone on core {core}; everything else on {sorted(others)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--ladder", default="100x1@200,300x1@200,1000x1@200,5000x50@20")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--api-core", type=int, default=None, help="a core of its own for the API")
    args = parser.parse_args()
    exit_on_sigterm()
    rungs = [Rung.parse(text) for text in args.ladder.split(",")]
    print(f"fan-out: SUBSCRIBERSxRUNS@EVENTS_PER_S for {args.seconds:g} s: {args.ladder}")
    most = max(rung.subscribers for rung in rungs)
    runs = str(max(rung.runs for rung in rungs))  # every run of a rung executes at once
    stack_env = {
        "ADE_MAX_STREAMS_PER_KEY": str(2 * most),
        "ADE_WORKER_CONCURRENCY": runs,
        "ADE_MAX_RUNNING_PER_WORKSPACE": runs,
    }
    with (
        tempfile.TemporaryDirectory(prefix="ade-fanout-") as tmp,
        ade_stack(Path(tmp) / "ade", env=stack_env) as ade,
    ):
        if args.api_core is not None:
            isolate_api(ade, args.api_core)
        for rung in rungs:
            result = uvloop.run(one_rung(ade, rung, args.seconds))
            print(
                "  "
                + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items())
            )


if __name__ == "__main__":
    main()
