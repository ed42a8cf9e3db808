"""Benchmark: fan-out of one run's live events to many SSE subscribers on one API process.

A run prints `--rate` lines/s for `--seconds` s (a Python loop in its step). N subscribers (a ladder: 100,
300, 1,000 by default) follow its SSE stream over raw HTTP/1.1 connections opened by this process (chunked
bodies parsed by hand: no client library in the way). Latency is an event's `created_at` to its arrival,
for every event written after the last subscriber connected; every subscriber must see ids 1..N exactly
once. Also reported: the API's RSS before and after, and its CPU seconds.

Usage: python scripts/bench_fanout.py [--ladder 100,300,1000] [--rate 200] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pickup import API, AdeStack, ade_stack, exit_on_sigterm, percentile
from bench_throughput import cpu_seconds

FRAME = re.compile(
    rb'id: (\d+)\nevent: ade\.event\ndata: \{"type":"[^"]*","sequence":\d+,'
    rb'"event_id":"[^"]*","created_at":"([^"]+)"'
)
END = b"event: end\n"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Subscriber:
    expected: int = 1
    latencies_ms: list[float] = field(default_factory=list)
    ended: bool = False
    error: str = ""


async def follow(host: str, port: int, path: str, token: str, sub: Subscriber, since: list[float]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        sub.error = status.decode(errors="replace")
        return
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    rest = b""
    try:
        while True:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                break
            data = rest + (await reader.readexactly(size + 2))[:-2]
            cut = data.rfind(b"\n\n") + 2
            frames, rest = data[:cut], data[cut:]
            now = time.time()
            for match in FRAME.finditer(frames):
                sequence = int(match.group(1))
                if sequence != sub.expected:
                    sub.error = f"expected id {sub.expected}, got {sequence}"
                    return
                sub.expected += 1
                created = datetime.fromisoformat(match.group(2).decode().replace("Z", "+00:00")).timestamp()
                if since and created >= since[0]:
                    sub.latencies_ms.append((now - created) * 1000)
            if END in frames:
                sub.ended = True
                return
    finally:
        writer.close()


async def one_rung(ade: AdeStack, subscribers: int, rate: int, seconds: float) -> dict[str, float | str]:
    host, port = "127.0.0.1", int(ade.base_url.rsplit(":", 1)[1])
    lines = int(rate * seconds)
    script = (
        "python3 -c 'import time\n"
        f"start = time.monotonic()\nfor i in range({lines}):\n"
        f'    print("line-%d" % i, flush=True)\n'
        f"    time.sleep(max(0, start + (i + 1) / {rate} - time.monotonic()))'"
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
        run_id = (await client.post(f"{API}/configurations/{cfg}/runs", json={})).json()["id"]
    path = f"{API}/runs/{run_id}/events?stream=true"
    since: list[float] = []
    subs = [Subscriber() for _ in range(subscribers)]
    opened = time.monotonic()
    client_cpu = time.process_time()
    tasks = []
    for sub in subs:
        tasks.append(asyncio.create_task(follow(host, port, path, key, sub, since)))
        await asyncio.sleep(0)
    await asyncio.sleep(0.5)
    since.append(time.time())
    open_s = time.monotonic() - opened
    peak_rss = 0.0
    while not all(task.done() for task in tasks):
        peak_rss = max(peak_rss, rss_mb(ade.api.pid))
        await asyncio.wait(tasks, timeout=1.0)
    latencies = sorted(value for sub in subs for value in sub.latencies_ms)
    errors = [sub.error for sub in subs if sub.error or not sub.ended]
    return {
        "subscribers": subscribers,
        "events each": subs[0].expected - 1,
        "p50 ms": percentile(latencies, 50) if latencies else float("nan"),
        "p99 ms": percentile(latencies, 99) if latencies else float("nan"),
        "max ms": latencies[-1] if latencies else float("nan"),
        "API RSS MB before/peak": f"{rss_before:.0f}/{peak_rss:.0f}",
        "API CPU s": cpu_seconds(ade.api.pid) - cpu_before,
        "client CPU s": time.process_time() - client_cpu,
        "opened in s": open_s,
        "broken": len(errors),
        "first error": errors[0] if errors else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--ladder", default="100,300,1000")
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    exit_on_sigterm()
    import tempfile

    print(f"fan-out: one run at {args.rate} events/s for {args.seconds:g} s, subscribers {args.ladder}")
    with (
        tempfile.TemporaryDirectory(prefix="ade-fanout-") as tmp,
        ade_stack(Path(tmp) / "ade", env={"ADE_MAX_STREAMS_PER_KEY": "100000"}) as ade,
    ):
        for rung in (int(value) for value in args.ladder.split(",")):
            result = asyncio.run(one_rung(ade, rung, args.rate, args.seconds))
            print(
                "  "
                + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items())
            )


if __name__ == "__main__":
    main()
