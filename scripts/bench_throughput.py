"""Benchmark: end-to-end events/s from a step's stdout to an SSE client, against raw Redis PUBLISH.

One run whose step prints 1,000,000 lines (`seq 1 1000000`) is created with `{"stream": true}`, so the
POST answers with the run's SSE stream; the client counts `id:` lines until `event: end` and checks they
are exactly 1..N. Baselines, measured in the same run on a fresh private Redis with payloads of the same
size: (a) `redis-benchmark` PUBLISH (if on PATH), (b) redis-py pipelines of 1000 PUBLISHes delivered to
one redis-py subscriber in another process.

The same run is then executed by an `ade runner` (HTTP only: no Redis, no data directory; its reports go
through the API's dispatcher) and streamed the same way: events/s beside the worker's.

With --probe it also times, while the stream runs, GET /healthz and the pickup of small runs started
alongside (the figures then include that little extra load).

Usage: python scripts/bench_throughput.py [--lines 1000000] [--probe]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http import http_request
from bench_pickup import (
    API,
    AdeStack,
    Pickup,
    _ade_command,
    ade_stack,
    child_process,
    cpu_seconds,
    create_configuration,
    event_time,
    exit_on_sigterm,
    machine_busy_seconds,
    one_ade_run,
    percentile,
    redis_server,
    run_events,
    stop_process,
)

CHANNEL = "bench"
PIPELINE = 1000
STREAM_TIMEOUT = httpx.Timeout(30.0, read=60.0)  # a stalled stream fails after 60 s without a byte
SUBSCRIBER_IDLE_S = 10.0
SEQUENCE = re.compile(rb'"sequence":(\d+)')
ID_LINE = re.compile(rb"\nid: (\d+)")  # a literal prefix: far faster than ^...$ with MULTILINE
RPS = re.compile(rb"([\d.]+) requests per second")
OUTPUT_BUFFER_KILL = "output buffer limits"  # redis.log, when a slow pub/sub client is disconnected
HUB_RECONNECT = "hub lost Redis"  # api.log


# --- ADE end to end --------------------------------------------------------------------------------


def count_in(path: Path, needle: str) -> int:
    try:
        return path.read_text(errors="replace").count(needle)
    except OSError:
        return 0


@dataclass(frozen=True)
class StreamResult:
    run_id: str
    events: int
    seconds: float
    sse_bytes: int
    client_end: float


def _check_ids(chunk_ids: list[bytes], expected: int) -> int:
    """Verify the ids of a chunk continue the sequence at `expected`; return the next expected id."""
    got = [int(value) for value in chunk_ids]
    if got != list(range(expected, expected + len(got))):
        bad = next(i for i, value in enumerate(got) if value != expected + i)
        raise RuntimeError(f"SSE ids not contiguous: expected {expected + bad}, got {got[bad]}")
    return expected + len(got)


async def stream_run(client: httpx.AsyncClient, configuration_id: str) -> StreamResult:
    """POST the run with `stream: true` and read its SSE body to `event: end`, checking ids 1..N."""
    url = f"{API}/configurations/{configuration_id}/runs"
    run_id = ""
    expected = 1
    total = 0
    rest = b""
    ended = 0.0
    sent = time.time()
    async with client.stream("POST", url, json={"stream": True}, timeout=STREAM_TIMEOUT) as response:
        response.raise_for_status()
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            buffer = rest + chunk
            # Cut between the two newlines ending the last complete frame: every `id:` line in `frames`
            # is then preceded by a newline (the first chunk starts with `retry:`, never with `id:`).
            cut = buffer.rfind(b"\n\n") + 1
            if cut < 1:
                rest = buffer
                continue
            frames, rest = buffer[:cut], buffer[cut:]
            if not run_id and (found := re.search(rb'"run_id":"([^"]+)"', frames)):
                run_id = found.group(1).decode()
            expected = _check_ids(ID_LINE.findall(frames), expected)
            if b"\nevent: end\n" in frames:
                ended = time.time()
                break
        else:
            raise RuntimeError(f"the SSE stream closed after id {expected - 1} without `event: end`")
    return StreamResult(run_id, expected - 1, ended - sent, total, ended)


@dataclass
class Probes:
    """What other clients see while the big run streams: /healthz and the pickup of small runs."""

    healthz_ms: list[float] = field(default_factory=list)
    pickups: list[Pickup] = field(default_factory=list)


async def _probe_healthz(ade: AdeStack, stop: asyncio.Event, probes: Probes) -> None:
    async with ade.client() as client:
        while not stop.is_set():
            sent = time.perf_counter()
            (await client.get("/healthz")).raise_for_status()
            probes.healthz_ms.append((time.perf_counter() - sent) * 1000)
            await asyncio.sleep(0.1)


async def _probe_pickup(ade: AdeStack, stop: asyncio.Event, probes: Probes) -> None:
    async with ade.client() as client:
        configuration_id = await create_configuration(client, "true")
        await asyncio.sleep(1.0)  # let the big run get going
        while not stop.is_set():
            probes.pickups.append(await one_ade_run(client, configuration_id))
            await asyncio.sleep(0.5)


@dataclass(frozen=True)
class AdeResult:
    stream: StreamResult
    worker_span_s: float
    end_lag_s: float
    status: str
    cpu_s: dict[str, float]
    payload: bytes
    mean_event_bytes: float
    buffer_kills: int
    hub_reconnects: int
    probes: Probes | None


async def ade_throughput(ade: AdeStack, root: Path, lines: int, *, probe: bool) -> AdeResult:
    assert ade.redis.process is not None
    pids = {"worker": ade.worker.pid, "API": ade.api.pid, "redis": ade.redis.process.pid}
    async with ade.client() as client:
        configuration_id = await create_configuration(client, f"seq 1 {lines}")
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        client_cpu = time.process_time()
        machine_before = machine_busy_seconds()
        probes = Probes() if probe else None
        stop = asyncio.Event()
        tasks = []
        if probes is not None:
            tasks = [asyncio.create_task(task(ade, stop, probes)) for task in (_probe_healthz, _probe_pickup)]
        try:
            result = await stream_run(client, configuration_id)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        cpu["client"] = time.process_time() - client_cpu
        cpu["others"] = max(0.0, machine_busy_seconds() - machine_before - sum(cpu.values()))
        head = await run_events(client, result.run_id, limit=2)
        last = (await run_events(client, result.run_id, after=result.events - 1))[-1]
        middle = (await run_events(client, result.run_id, after=result.events // 2, limit=1))[0]
    started = next(event for event in head if event["type"] == "run.started")
    log = root / "data" / "runs" / result.run_id / "logs" / "events.ndjson"
    return AdeResult(
        stream=result,
        worker_span_s=event_time(last) - event_time(started),
        end_lag_s=result.client_end - event_time(last),
        status=f"{last['type']} {last['payload'].get('status')}",
        cpu_s=cpu,
        payload=json.dumps(middle, separators=(",", ":")).encode(),
        mean_event_bytes=log.stat().st_size / result.events - 1,
        buffer_kills=count_in(root / "redis" / "redis.log", OUTPUT_BUFFER_KILL),
        hub_reconnects=count_in(root / "api.log", HUB_RECONNECT),
        probes=probes,
    )


@dataclass(frozen=True)
class ReplayResult:
    sse_events_per_s: float
    json_events_per_s: float
    ndjson_events_per_s: float


async def replay(ade: AdeStack, run_id: str, events: int) -> ReplayResult:
    """The finished run read again from its log: over SSE from the start, and as JSON / NDJSON pages; by a
    raw HTTP/1.1 client that checks ids and counts without decoding events (else the figure would be the
    client's parsing)."""
    port = int(ade.base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        started = time.perf_counter()
        path = f"{API}/runs/{run_id}/events?stream=true"
        writer.write(http_request("GET", path, ade.token))
        expected, rest = 1, b""
        async for chunk in _chunks(reader):
            buffer = rest + chunk
            cut = buffer.rfind(b"\n\n") + 1
            frames, rest = (buffer[:cut], buffer[cut:]) if cut > 0 else (b"", buffer)
            expected = _check_ids(ID_LINE.findall(frames), expected)
            if b"\nevent: end\n" in frames:
                break
    finally:
        writer.close()
    if expected - 1 != events:
        raise RuntimeError(f"replay gave {expected - 1} events, not {events}")
    sse_rate = events / (time.perf_counter() - started)
    port = int(ade.base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rates = []
    try:
        for fmt in ("json", "ndjson"):
            started, after = time.perf_counter(), 0
            while after < events:
                path = f"{API}/runs/{run_id}/events?after_sequence={after}&limit=1000&format={fmt}"
                body = await _get_body(reader, writer, http_request("GET", path, ade.token))
                after = _page_end(body, fmt, after)
            rates.append(events / (time.perf_counter() - started))
    finally:
        writer.close()
    return ReplayResult(sse_rate, rates[0], rates[1])


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """A response's body, piece by piece, after its status and headers (Content-Length or chunked)."""
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(status.decode(errors="replace"))
    length, chunked = 0, False
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
        chunked = chunked or (name.lower() == b"transfer-encoding" and b"chunked" in value.lower())
    if not chunked:
        yield await reader.readexactly(length)
        return
    while size := int((await reader.readline()).strip(), 16):
        yield await reader.readexactly(size)
        await reader.readexactly(2)
    await reader.readexactly(2)


async def _get_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
    """One response's body over a keep-alive connection."""
    writer.write(request)
    return b"".join([chunk async for chunk in _chunks(reader)])


def _page_end(body: bytes, fmt: str, after: int) -> int:
    """The last sequence of a page that must continue `after` densely (checked without decoding it: the
    client's JSON parsing would be the figure otherwise)."""
    if fmt == "json":
        count = body.count(b'{"type":"')
        last = int(body[body.rindex(b'"next_after_sequence":') + 22 : -1])
    else:
        count = body.count(b"\n")
        last = int(SEQUENCE.findall(body[body.rfind(b"\n", 0, -1) + 1 :])[0])
    if count == 0 or last != after + count:
        raise RuntimeError(f"a {fmt} page after {after} held {count} events ending at {last}")
    return last


def report_replay(result: ReplayResult) -> None:
    print()
    print("Replay of the finished run from its log")
    _line("SSE from the start, events/s", f"{result.sse_events_per_s:,.0f}")
    _line("JSON pages of 1,000 (raw client), events/s", f"{result.json_events_per_s:,.0f}")
    _line("NDJSON pages of 1,000 (raw client), events/s", f"{result.ndjson_events_per_s:,.0f}")


@dataclass(frozen=True)
class RunnerResult:
    stream: StreamResult
    runner_cpu_s: float
    api_cpu_s: float


async def runner_throughput(ade: AdeStack, root: Path, lines: int) -> RunnerResult:
    """The same run on an `ade runner` (a fresh workspace; the configuration has `runs_on: [bench]`)."""
    async with ade.client() as client:
        response = await client.post(f"{API}/workspaces", json={"name": "bench-runner"})
        response.raise_for_status()
        workspace_id = response.json()["id"]
        body = {"name": "bench-runner", "labels": ["bench"]}
        response = await client.post(f"{API}/workspaces/{workspace_id}/runners", json=body)
        response.raise_for_status()
        token = response.json()["token"]
        body = {"name": "bench", "steps": [{"name": "s", "script": f"seq 1 {lines}"}], "runs_on": ["bench"]}
        response = await client.post(f"{API}/workspaces/{workspace_id}/configurations", json=body)
        response.raise_for_status()
        configuration_id = response.json()["id"]
        env = {name: value for name, value in os.environ.items() if not name.startswith("ADE_")}
        env["ADE_MAX_CONSOLE_BYTES_PER_RUN"] = "0"
        command = _ade_command(
            "runner", "--url", ade.base_url, "--token", token, "--dir", str(root / "runner")
        )
        with child_process(command, env, root / "runner.log") as runner:
            api_before, runner_before = cpu_seconds(ade.api.pid), 0.0
            result = await stream_run(client, configuration_id)
            runner_cpu = cpu_seconds(runner.pid) - runner_before
            api_cpu = cpu_seconds(ade.api.pid) - api_before
    return RunnerResult(result, runner_cpu, api_cpu)


def report_runner(result: RunnerResult, worker: AdeResult) -> None:
    stream = result.stream
    rate = stream.events / stream.seconds
    worker_rate = worker.stream.events / worker.stream.seconds
    print()
    print("The same run on an `ade runner` -> chunks over HTTP -> API's dispatcher -> log + pub/sub -> SSE")
    _line("events, ids exactly 1..N", f"{stream.events:,}")
    _line("seconds, POST sent -> event: end", f"{stream.seconds:.2f}")
    _line("events/s", f"{rate:,.0f}", f"({rate / worker_rate:.2f} of the worker's {worker_rate:,.0f})")
    _line("CPU seconds: runner, API", f"{result.runner_cpu_s:.1f}, {result.api_cpu_s:.1f}")


# --- raw Redis baselines ---------------------------------------------------------------------------


def redis_benchmark(port: int, password: str, count: int, payload: bytes) -> float | None:
    """Requests/s of `redis-benchmark ... PUBLISH` (no subscriber), or None when it is not on PATH."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    # A throwaway server's password: redis-benchmark takes it only as an argument.
    args = [binary, "-h", "127.0.0.1", "-p", str(port), "-a", password, "-n", str(count), "-P", "64", "-q"]
    out = subprocess.run([*args, "PUBLISH", CHANNEL, payload], capture_output=True, timeout=120, check=True)
    found = RPS.findall(out.stdout.replace(b"\r", b"\n"))
    if not found:
        raise RuntimeError(f"cannot parse redis-benchmark output: {out.stdout[-300:]!r}")
    return float(found[-1])


def run_subscriber(url: str, count: int) -> None:
    """The baseline subscriber's own process: print `ready`, count messages, print `<last time> <n>`."""
    with redis.Redis.from_url(url) as client, client.pubsub() as pubsub:
        pubsub.subscribe(CHANNEL)
        pubsub.get_message(timeout=5.0)  # the subscribe confirmation
        print("ready", flush=True)
        received, last = 0, time.time()
        while received < count:
            message = pubsub.get_message(timeout=SUBSCRIBER_IDLE_S)
            if message is None:
                break
            if message["type"] == "message":
                received += 1
        last = time.time()
    print(f"{last} {received}", flush=True)


@contextlib.contextmanager
def subscriber(url: str, count: int) -> Iterator[subprocess.Popen[str]]:
    args = [sys.executable, str(Path(__file__).resolve()), "--subscriber", url, "--lines", str(count)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the baseline subscriber did not start")
        yield proc
    finally:
        stop_process(proc)


def redis_py_publish(url: str, count: int, payload: bytes) -> tuple[float, float]:
    """(published/s, delivered/s) for pipelined PUBLISHes with one subscriber counting them."""
    with subscriber(url, count) as sub, redis.Redis.from_url(url) as client:
        assert sub.stdout is not None
        started = time.time()
        for first in range(0, count, PIPELINE):
            pipe = client.pipeline(transaction=False)
            for _ in range(min(PIPELINE, count - first)):
                pipe.publish(CHANNEL, payload)
            pipe.execute()
        published = time.time()
        last, received = sub.stdout.readline().split()
    if int(received) != count:
        raise RuntimeError(f"the baseline subscriber got {received} of {count} messages")
    return count / (published - started), count / (float(last) - started)


# --- report ----------------------------------------------------------------------------------------


def _line(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<44}{value:>14}   {note}".rstrip())


def _report_probes(probes: Probes) -> None:
    print()
    print("While it streams (--probe; ms; compare with bench_pickup.py on an idle system)")
    _line("", "p50", "max")
    rows = [
        ("GET /healthz", probes.healthz_ms),
        ("small run: POST sent -> run.started", [p.post_to_started_ms for p in probes.pickups]),
        ("small run: POST response time", [p.post_response_ms for p in probes.pickups]),
    ]
    for label, values in rows:
        if values:
            _line(f"{label} (n={len(values)})", f"{percentile(values, 50):.1f}", f"{max(values):.1f}")


def report(
    result: AdeResult, lines: int, bench_rps: float | None, py_published: float, py_delivered: float
) -> None:
    stream = result.stream
    rate = stream.events / stream.seconds
    mb = stream.sse_bytes / 1e6
    worker_rate = stream.events / result.worker_span_s
    print()
    print(f"End to end: `seq 1 {lines}` -> worker -> log + pub/sub -> API -> SSE client")
    _line("events, ids exactly 1..N", f"{stream.events:,}", f"({result.status})")
    _line("seconds, POST sent -> event: end", f"{stream.seconds:.2f}")
    _line("events/s", f"{rate:,.0f}")
    _line("SSE MB/s", f"{mb / stream.seconds:.1f}", f"({mb:,.0f} MB in all)")
    span = f"{result.worker_span_s:.2f}"
    _line("worker: run.started -> run.completed, s", span, f"({worker_rate:,.0f} events/s)")
    _line("client lag behind run.completed, s", f"{result.end_lag_s:.2f}")
    cpu = ", ".join(f"{name} {seconds:.1f}" for name, seconds in result.cpu_s.items())
    _line(f"CPU seconds, machine ({os.cpu_count()} cores)", f"{sum(result.cpu_s.values()):.1f}", cpu)
    _line("pub/sub clients cut for output buffer", str(result.buffer_kills))
    _line("API hub reconnects", str(result.hub_reconnects))
    if result.probes is not None:
        _report_probes(result.probes)
    print()
    print(
        f"Baselines: {stream.events:,} PUBLISHes of {len(result.payload)} bytes on a fresh Redis "
        f"(mean ADE event {result.mean_event_bytes:.0f} bytes)"
    )
    _line("", "msgs/s", "ADE events/s as a fraction")
    rows: list[tuple[str, float | None]] = [
        ("redis-benchmark -P 64 -c 50, no subscriber", bench_rps),
        ("redis-py pipeline x1000, published", py_published),
        ("redis-py pipeline x1000, delivered to 1 sub", py_delivered),
    ]
    for label, value in rows:
        if value is None:
            _line(label, "n/a", "(redis-benchmark is not on PATH)")
        else:
            _line(label, f"{value:,.0f}", f"{rate / value:.3f}  (1/{value / rate:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines the step prints (default 1e6)")
    parser.add_argument(
        "--probe", action="store_true", help="also time /healthz and small runs' pickup during the stream"
    )
    parser.add_argument("--subscriber", metavar="REDIS_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.subscriber:  # the baseline subscriber's own process
        run_subscriber(args.subscriber, args.lines)
        return
    exit_on_sigterm()
    print(f"throughput benchmark: a run printing {args.lines:,} lines, then Redis baselines ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="ade-bench-") as tmp:
        root = Path(tmp)
        # A million lines is far past the default console limit per run (64 MiB): lift it, or the run's
        # console would stop at ~180k lines (one marker, the rest dropped) and measure nothing.
        with ade_stack(root / "ade", env={"ADE_MAX_CONSOLE_BYTES_PER_RUN": "0"}) as ade:
            result = asyncio.run(ade_throughput(ade, root / "ade", args.lines, probe=args.probe))
            replayed = asyncio.run(replay(ade, result.stream.run_id, result.stream.events))
            on_runner = asyncio.run(runner_throughput(ade, root / "ade", args.lines))
        with redis_server(root / "baseline-redis", appendonly=False) as server:
            bench_rps = redis_benchmark(server.port, server.password, result.stream.events, result.payload)
            py_published, py_delivered = redis_py_publish(server.url, result.stream.events, result.payload)

    report(result, args.lines, bench_rps, py_published, py_delivered)
    report_replay(replayed)
    report_runner(on_runner, result)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # everything was stopped on the way out
        sys.exit(130)
