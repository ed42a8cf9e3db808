"""Benchmark: many idle SSE connections on one API process — what they cost in memory, how fast they open.

`--connections` raw HTTP/1.1 connections each open the SSE stream of one of `--runs` runs that are offered
to runners and never start (so the streams stay open and quiet). Reported: the API's RSS above its
baseline, per connection, and the opening rate (all requests sent at once, counted when each got its
`200` and the stream's first frame). The baseline, measured in the same run: a bare Litestar endpoint on the
same server stack whose stream sends one frame and then waits.

Usage: python scripts/bench_idle_sse.py [--connections 10000] [--runs 100]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fanout import rss_mb
from bench_http import bare_server
from bench_pickup import API, ade_stack, cpu_seconds, exit_on_sigterm


async def open_stream(port: int, path: str, token: str) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(status.decode(errors="replace"))
    while not (await reader.readline()).startswith(b"retry:") and not reader.at_eof():
        pass
    return writer


async def open_many(
    port: int, paths: list[str], token: str, pid: int
) -> tuple[list[asyncio.StreamWriter], str]:
    """Open every stream at once; the server's figures: opening rate, its CPU per stream, RSS per stream."""
    await asyncio.sleep(1.0)
    baseline = rss_mb(pid)
    cpu_before = cpu_seconds(pid)
    started = time.monotonic()
    writers = await asyncio.gather(*(open_stream(port, path, token) for path in paths))
    open_s = time.monotonic() - started
    open_cpu_s = cpu_seconds(pid) - cpu_before
    await asyncio.sleep(2.0)
    rss = rss_mb(pid)
    figures = (
        f"{len(paths) / open_s:7,.0f} per second, {open_cpu_s / len(paths) * 1e6:6,.0f} µs of server CPU "
        f"per stream, RSS {baseline:.0f} -> {rss:.0f} MB: +{rss - baseline:.0f} MB, "
        f"{(rss - baseline) * 1024 / len(paths):.1f} KB per connection"
    )
    return writers, figures


async def measure(base_url: str, bootstrap: str, api_pid: int, connections: int, runs: int) -> str:
    import httpx

    port = int(base_url.rsplit(":", 1)[1])
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {bootstrap}"}) as http:
        ws = (await http.post(f"{API}/workspaces", json={"name": "idle"})).json()["id"]
        key = await http.post(f"{API}/workspaces/{ws}/api-keys", json={"name": "k", "role": "viewer"})
        body = {"name": "idle", "steps": [{"name": "s", "script": "true"}], "runs_on": ["nobody"]}
        cfg = (await http.post(f"{API}/workspaces/{ws}/configurations", json=body)).json()["id"]
        run_ids = [
            (await http.post(f"{API}/configurations/{cfg}/runs", json={})).json()["id"] for _ in range(runs)
        ]
    paths = [f"{API}/runs/{run_ids[i % runs]}/events?stream=true" for i in range(connections)]
    writers, figures = await open_many(port, paths, key.json()["secret"], api_pid)
    for writer in writers:
        writer.close()
    return figures


async def measure_bare(port: int, pid: int, connections: int) -> str:
    writers, figures = await open_many(port, ["/stream"] * connections, "none", pid)
    for writer in writers:
        writer.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    exit_on_sigterm()
    env = {"ADE_MAX_STREAMS_PER_KEY": str(args.connections * 2)}
    with tempfile.TemporaryDirectory(prefix="ade-idle-") as tmp, ade_stack(Path(tmp) / "ade", env=env) as ade:
        with bare_server(ade.redis.url, Path(tmp)) as (bare_port, bare_pid):
            bare = asyncio.run(measure_bare(bare_port, bare_pid, args.connections))
        ours = asyncio.run(measure(ade.base_url, ade.token, ade.api.pid, args.connections, args.runs))
    print(f"idle SSE: {args.connections:,} connections opened at once on one server process")
    print(f"  bare Litestar stream (one frame)  {bare}")
    print(f"  ADE, over {args.runs} runs           {ours}")


if __name__ == "__main__":
    main()
