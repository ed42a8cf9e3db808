"""Soak test: many concurrent runs while workers are SIGKILLed and Redis (and the API) restart at random.

It starts its own system (`tests.system.AdeSystem`: a private Redis with AOF, `ade serve`, two
`ade worker`s, `ADE_LEASE_TTL_S=1`) in a temporary directory and keeps `--concurrency` runs in flight for
`--duration` seconds of fault injection. Each run has one SSE subscriber: a small reader of its own (not
the project's client, which de-duplicates) that records every raw sequence the server sends and, when a
stream breaks before `event: end`, reconnects with `Last-Event-ID` = the last id it received, as a browser's
EventSource does. Then it stops injecting, waits (bounded) for every run to end, and checks:

- every log's sequences are exactly 1..n and its last (and only terminal) event is `run.completed`;
- every run's record (GET /runs/{id}) is terminal with the log's status;
- every subscriber ended at `event: end`, received each of the log's sequences (events lost = log
  sequences it never got), nothing more than once (duplicates delivered), and the same event (event_id)
  as the log for each sequence;
- "longest without progress": the largest gap between consecutive events' `created_at` in one log.

The last line printed is the summary; the exit status is 1 when an event was lost, duplicated or differs,
a log is malformed, or a run or subscriber did not end.

Usage: scripts/soak [--duration 60] [--concurrency 8] [--seed N] [--no-api-restart] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.system, and ade from the checkout

from tests.system import BOOTSTRAP_TOKEN, AdeSystem  # noqa: E402

API = "/api/v1"
LEASE_TTL_S = "1"
WORKERS = 2
FAULT_GAP_S = (3.0, 8.0)
SETTLE_TIMEOUT_S = 40.0  # after injection stops: every run must end within this
CREATE_TIMEOUT_S = 30.0  # keep retrying a run's creation (same Idempotency-Key) this long
RECONNECT_PAUSE_S = (0.05, 0.3)
HTTP_TIMEOUT = httpx.Timeout(10.0, read=40.0)  # the server sends a keepalive every 15 s
TERMINAL = {"succeeded", "failed", "cancelled"}

# What the runs do. Each kind names the outcome it has when nothing goes wrong; any run may also end
# failed/worker_lost when its worker is killed.
LINES = "for i in $(seq 1 300); do echo $i; sleep 0.01; done"
PROGRESS = (
    "for i in $(seq 1 60); do"
    ' echo "{\\"type\\":\\"progress\\",\\"current\\":$i,\\"total\\":60}" >&$ADE_EVENTS_FD;'
    " echo step $i; sleep 0.03; done"
)
MIXED = "for i in $(seq 1 150); do echo out $i; echo err $i >&2; sleep 0.01; done"


@dataclass(frozen=True)
class Kind:
    name: str
    steps: list[dict[str, str]]
    expected: tuple[str, str | None]  # (status, failure code) when no fault hits the run


KINDS = [
    Kind("lines", [{"name": "lines", "script": LINES}], ("succeeded", None)),
    Kind("progress", [{"name": "progress", "script": PROGRESS}], ("succeeded", None)),
    Kind(
        "fails",
        [{"name": "mixed", "script": MIXED}, {"name": "exit3", "script": "echo bye; exit 3"}],
        ("failed", "exit_nonzero"),
    ),
]


@dataclass
class Subscriber:
    """What one run's SSE subscriber saw, across all its connections."""

    received: list[int] = field(default_factory=list)  # every raw `id:` of an ade.event, in order
    event_ids: dict[int, str] = field(default_factory=dict)  # sequence -> event_id (first delivery)
    connections: int = 0
    refusals: Counter[str] = field(default_factory=Counter)  # non-200 answers and transport errors
    ended: bool = False


@dataclass
class TrackedRun:
    run_id: str
    kind: Kind
    subscriber: Subscriber = field(default_factory=Subscriber)


@dataclass
class Soak:
    system: AdeSystem
    fault_rng: random.Random  # faults: when, which, which worker (reproducible with --seed)
    run_rng: random.Random  # which kind of run next, reconnect pauses
    concurrency: int
    api_restarts: bool
    started_at: float = field(default_factory=time.monotonic)
    wall_started: datetime = field(default_factory=lambda: datetime.now(UTC))
    runs: list[TrackedRun] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    killed_workers: set[str] = field(default_factory=set)  # "host:pid" names of SIGKILLed workers
    create_failures: int = 0
    fault_errors: list[str] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def at(self, created_at: str) -> float:
        """An event's `created_at` as seconds since the soak started (the clock of the fault lines)."""
        return (datetime.fromisoformat(created_at) - self.wall_started).total_seconds()

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started_at:6.1f}s] {message}", flush=True)

    # --- faults ------------------------------------------------------------------------------------

    def kill_worker(self) -> str:
        live = [worker for worker in self.system.workers if worker.poll() is None]
        victim = self.fault_rng.choice(live)
        victim.kill()  # SIGKILL
        victim.wait()
        self.killed_workers.add(f"{os.uname().nodename}:{victim.pid}")
        replacement = self.system.start_worker()
        return f"SIGKILL worker pid {victim.pid}, started pid {replacement.pid}"

    def restart_redis(self) -> str:
        self.system.redis.restart()  # AOF: same data, same port
        return "restarted Redis"

    def restart_api(self) -> str:
        api = self.system.api
        assert api is not None
        api.terminate()
        api.wait(20)
        self.system.start_api()
        self.system.wait_ready()
        return "restarted the API"

    async def inject_faults(self, duration_s: float) -> None:
        faults: list[Callable[[], str]] = [self.kill_worker, self.kill_worker, self.restart_redis]
        if self.api_restarts:
            faults.append(self.restart_api)
        stop_at = time.monotonic() + duration_s
        while (delay := self.fault_rng.uniform(*FAULT_GAP_S)) < stop_at - time.monotonic():
            await asyncio.sleep(delay)
            fault = self.fault_rng.choice(faults)
            self.faults[fault.__name__] += 1
            try:
                self.say(await asyncio.to_thread(fault))
            except Exception as exc:  # the system did not come back: stop injecting, report it
                self.fault_errors.append(f"{fault.__name__}: {exc}")
                self.say(f"{fault.__name__} FAILED: {exc}; no more faults")
                return
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))

    # --- runs and subscribers ----------------------------------------------------------------------

    async def create_run(self, client: httpx.AsyncClient, configuration_id: str) -> str | None:
        """POST a run, retrying through restarts with one Idempotency-Key (so never two runs)."""
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        deadline = time.monotonic() + CREATE_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            try:
                response = await client.post(
                    f"{API}/configurations/{configuration_id}/runs", json={}, headers=headers
                )
                if response.status_code == 201:
                    return str(response.json()["id"])
                last = f"HTTP {response.status_code} {response.text[:200]}"
            except httpx.TransportError as exc:
                last = repr(exc)
            await asyncio.sleep(self.run_rng.uniform(*RECONNECT_PAUSE_S))
        self.say(f"could not create a run for {CREATE_TIMEOUT_S:g} s: {last}")
        self.create_failures += 1
        return None

    async def subscribe(self, client: httpx.AsyncClient, run: TrackedRun) -> None:
        """Read the run's SSE stream to `event: end`, reconnecting with Last-Event-ID like EventSource."""
        sub = run.subscriber
        last_id: str | None = None
        while not sub.ended:
            headers = {} if last_id is None else {"Last-Event-ID": last_id}
            try:
                async with aconnect_sse(
                    client,
                    "GET",
                    f"{API}/runs/{run.run_id}/events",
                    params={"stream": "true"},
                    headers=headers,
                ) as source:
                    if source.response.status_code != 200:
                        sub.refusals[f"HTTP {source.response.status_code}"] += 1
                    else:
                        sub.connections += 1
                        async for sse in source.aiter_sse():
                            if sse.event == "end":
                                sub.ended = True
                                break
                            if sse.event != "ade.event":
                                continue
                            last_id = sse.id
                            sequence = int(sse.id)
                            sub.received.append(sequence)
                            sub.event_ids.setdefault(sequence, json.loads(sse.data)["event_id"])
                        else:
                            sub.refusals["closed before end"] += 1
            except httpx.TransportError as exc:
                sub.refusals[type(exc).__name__] += 1
            if not sub.ended:
                await asyncio.sleep(self.run_rng.uniform(*RECONNECT_PAUSE_S))

    async def lane(self, client: httpx.AsyncClient, configurations: dict[str, str]) -> None:
        """One of `concurrency` lanes: a run at a time, followed to its end, until injection stops."""
        while not self.stopping.is_set():
            kind = self.run_rng.choice(KINDS)
            run_id = await self.create_run(client, configurations[kind.name])
            if run_id is None:
                continue
            run = TrackedRun(run_id, kind)
            self.runs.append(run)
            await self.subscribe(client, run)

    async def drive(self, duration_s: float) -> bool:
        """Runs and faults for `duration_s`, then wait for the runs in flight; False if some never ended."""
        headers = {"Authorization": f"Bearer {BOOTSTRAP_TOKEN}"}
        limits = httpx.Limits(max_connections=4 * self.concurrency + 8)
        async with httpx.AsyncClient(
            base_url=self.system.base_url, headers=headers, timeout=HTTP_TIMEOUT, limits=limits
        ) as client:
            workspace = (await client.post(f"{API}/workspaces", json={"name": "soak"})).json()["id"]
            configurations = {}
            for kind in KINDS:
                body = {"name": kind.name, "steps": kind.steps, "timeout_s": 300}
                response = await client.post(f"{API}/workspaces/{workspace}/configurations", json=body)
                response.raise_for_status()
                configurations[kind.name] = response.json()["id"]
            lanes = [asyncio.create_task(self.lane(client, configurations)) for _ in range(self.concurrency)]
            try:
                await self.inject_faults(duration_s)
                self.stopping.set()
                in_flight = sum(1 for run in self.runs if not run.subscriber.ended)
                self.say(f"stopped injecting faults; waiting for {in_flight} runs in flight to end")
                done, pending = await asyncio.wait(lanes, timeout=SETTLE_TIMEOUT_S)
                for task in done:
                    task.result()  # a lane that crashed is a bug here: raise it
                return not pending
            finally:
                for task in lanes:
                    task.cancel()
                await asyncio.gather(*lanes, return_exceptions=True)


# --- verification ----------------------------------------------------------------------------------


@dataclass
class Report:
    runs_started: int = 0
    runs_ended: int = 0
    events_checked: int = 0
    events_lost: int = 0
    duplicates: int = 0
    mismatched: int = 0  # a sequence delivered with another event_id than the log's
    unknown: int = 0  # sequences delivered that the log does not have
    subscribers_unfinished: int = 0
    bad_logs: int = 0
    faults_failed: int = 0  # a restarted API (or Redis) that did not come back
    gaps: list[tuple[float, str]] = field(default_factory=list)  # (seconds, where): each run's longest
    outcomes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)  # fail the soak
    notes: list[str] = field(default_factory=list)  # surprising, but not what the soak fails on

    @property
    def longest_gap_s(self) -> float:
        return max((seconds for seconds, _ in self.gaps), default=0.0)

    @property
    def ok(self) -> bool:
        return not (
            self.events_lost
            or self.duplicates
            or self.mismatched
            or self.unknown
            or self.subscribers_unfinished
            or self.bad_logs
            or self.runs_ended != self.runs_started
            or self.faults_failed
        )


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def check_log(events: list[dict[str, Any]]) -> str | None:
    """Problems with one run's log (sequences 1..n, one terminal run.completed last), or None."""
    sequences = [event["sequence"] for event in events]
    if sequences != list(range(1, len(events) + 1)):
        repeats = len(sequences) - len(set(sequences))
        holes = sorted(set(range(1, max(sequences, default=0) + 1)) - set(sequences))
        return f"log sequences not 1..n: {repeats} repeated, holes at {holes[:10]}"
    completed = [event for event in events if event["type"] == "run.completed"]
    if len(completed) != 1 or events[-1]["type"] != "run.completed":
        last = events[-1]["type"] if events else "nothing"
        return f"{len(completed)} run.completed event(s), last event {last}"
    return None


def outcome_of(soak: Soak, run: TrackedRun, events: list[dict[str, Any]]) -> tuple[str, str | None]:
    """A label for how the run ended, and a note when neither its kind nor a killed worker explains it."""
    end = events[-1]
    code = (end["payload"].get("failure") or {}).get("code")
    label = f"{end['payload']['status']}/{code}" if code else end["payload"]["status"]
    workers = {e["payload"].get("worker") for e in events if e["type"] == "run.started"}
    if (end["payload"]["status"], code) == run.kind.expected:
        return label, None
    if code == "worker_lost" and workers & soak.killed_workers:
        return label, None
    label += " (worker alive)" if workers else " (before run.started)"
    ended_at = soak.at(end["created_at"])
    note = f"{run.run_id} ({run.kind.name}) ended {label} at {ended_at:.1f}s; worker {workers or '-'}"
    return label, note


def longest_gap(soak: Soak, run: TrackedRun, events: list[dict[str, Any]]) -> tuple[float, str]:
    """The run's longest time between consecutive events, and where it was."""
    best, where = 0.0, ""
    for before, after in pairwise(events):
        gap = soak.at(after["created_at"]) - soak.at(before["created_at"])
        if gap > best:
            best = gap
            where = (
                f"{run.run_id} ({run.kind.name}) {soak.at(before['created_at']):.1f}s-"
                f"{soak.at(after['created_at']):.1f}s, #{before['sequence']} {before['type']} "
                f"-> #{after['sequence']} {after['type']}"
            )
    return best, where


def check_subscriber(run: TrackedRun, events: list[dict[str, Any]], report: Report) -> list[str]:
    sub = run.subscriber
    in_log = {event["sequence"]: event["event_id"] for event in events}
    got = set(sub.received)
    lost = sorted(set(in_log) - got)
    duplicated = Counter(sub.received) - Counter(got)
    unknown = sorted(got - set(in_log))
    mismatched = sorted(s for s, event_id in sub.event_ids.items() if s in in_log and in_log[s] != event_id)
    report.events_lost += len(lost)
    report.duplicates += sum(duplicated.values())
    report.unknown += len(unknown)
    report.mismatched += len(mismatched)
    problems = []
    if not sub.ended:
        report.subscribers_unfinished += 1
        problems.append("subscriber never got `event: end`")
    if lost:
        problems.append(f"lost {len(lost)}: {lost[:10]}")
    if duplicated:
        problems.append(f"duplicates {dict(list(duplicated.items())[:10])}")
    if unknown:
        problems.append(f"sequences not in the log: {unknown[:10]}")
    if mismatched:
        problems.append(f"sequences with another event than the log's: {mismatched[:10]}")
    return problems


async def record_statuses(system: AdeSystem, runs: list[TrackedRun]) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {BOOTSTRAP_TOKEN}"}
    statuses: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=system.base_url, headers=headers, timeout=30) as client:
        for run in runs:
            try:
                response = await client.get(f"{API}/runs/{run.run_id}")
            except httpx.TransportError as exc:
                statuses[run.run_id] = f"unreachable ({type(exc).__name__})"
                continue
            ok = response.status_code == 200
            statuses[run.run_id] = response.json()["status"] if ok else f"HTTP {response.status_code}"
    return statuses


def verify(soak: Soak, statuses: dict[str, str]) -> Report:
    report = Report(runs_started=len(soak.runs), faults_failed=len(soak.fault_errors))
    report.problems += [f"fault failed, {error}" for error in soak.fault_errors]
    runs_dir = soak.system.data_dir / "runs"
    for run in soak.runs:
        events = read_log(runs_dir / run.run_id / "logs" / "events.ndjson")
        report.events_checked += len(events)
        problems = []
        if log_problem := check_log(events):
            report.bad_logs += 1
            problems.append(f"{log_problem}; record says {statuses[run.run_id]}")
        else:
            final = events[-1]["payload"]["status"]
            if statuses[run.run_id] == final:
                report.runs_ended += 1
            else:
                problems.append(f"record says {statuses[run.run_id]}, log says {final}")
            label, note = outcome_of(soak, run, events)
            report.outcomes[label] += 1
            if note:
                report.notes.append(note)
        report.gaps.append(longest_gap(soak, run, events))
        problems += check_subscriber(run, events, report)
        if problems:
            report.problems.append(f"{run.run_id} ({run.kind.name}): " + "; ".join(problems))
    tracked = {run.run_id for run in soak.runs}
    strays = sorted(p.name for p in runs_dir.iterdir() if p.name not in tracked) if runs_dir.exists() else []
    if strays:
        report.problems.append(f"runs nobody asked for (Idempotency-Key failed?): {strays[:10]}")
    return report


def print_report(soak: Soak, report: Report) -> None:
    faults = ", ".join(f"{name} {count}" for name, count in sorted(soak.faults.items())) or "none"
    print(f"faults injected: {faults}")
    outcomes = ", ".join(f"{label} {count}" for label, count in report.outcomes.most_common())
    print(f"outcomes: {outcomes}")
    connections = sum(run.subscriber.connections for run in soak.runs)
    refusals: Counter[str] = Counter()
    for run in soak.runs:
        refusals.update(run.subscriber.refusals)
    reasons = ", ".join(f"{reason} {count}" for reason, count in refusals.most_common()) or "none"
    print(
        f"subscribers: {connections} SSE connections for {len(soak.runs)} runs; reconnect causes: {reasons}"
    )
    if soak.create_failures:
        print(f"run creations given up: {soak.create_failures}")
    for seconds, where in sorted(report.gaps, reverse=True)[:3]:
        print(f"without progress {seconds:.1f}s: {where}")
    for note in report.notes[:10]:
        print(f"NOTE {note}")
    for problem in report.problems[:30]:
        print(f"PROBLEM {problem}")
    if len(report.problems) > 30:
        print(f"... and {len(report.problems) - 30} more problems")
    print(
        f"soak: runs started {report.runs_started}, runs ended {report.runs_ended}, "
        f"events checked {report.events_checked}, events lost {report.events_lost}, "
        f"duplicates delivered {report.duplicates}, longest without progress {report.longest_gap_s:.1f}s",
        flush=True,
    )


# --- processes -------------------------------------------------------------------------------------


def leftover_processes(root: Path) -> list[int]:
    """Pids of live processes working in or started with `root` (steps run in the runs' work dirs)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (cwd.startswith(str(root)) or str(root).encode() in cmdline):
            found.append(int(entry.name))
    return found


def stop_system(system: AdeSystem, root: Path) -> None:
    system.stop()
    time.sleep(0.5)
    if leftovers := leftover_processes(root):
        print(f"killing {len(leftovers)} leftover process(es): {leftovers}")
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of fault injection (60)")
    parser.add_argument("--concurrency", type=int, default=8, help="runs in flight (8)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--no-api-restart", action="store_true", help="do not restart the API")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the `finally` below stops everything
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    root = Path(tempfile.mkdtemp(prefix="ade-soak-"))
    # One workspace keeps 8 runs in flight: no fair-share cap, so queue waits do not count as stalls.
    env = {"ADE_LEASE_TTL_S": LEASE_TTL_S, "ADE_MAX_RUNNING_PER_WORKSPACE": "0"}
    system = AdeSystem(root, extra_env=env)
    soak = Soak(
        system,
        random.Random(seed),
        random.Random(seed + 1),
        args.concurrency,
        api_restarts=not args.no_api_restart,
    )
    print(
        f"soak: {args.duration:g} s of faults, {args.concurrency} runs in flight, {WORKERS} workers, "
        f"seed {seed}, in {root}",
        flush=True,
    )
    ok = False
    report: Report | None = None
    try:
        system.start()
        for _ in range(WORKERS - 1):
            system.start_worker()
        all_ended = asyncio.run(soak.drive(args.duration))
        if not all_ended:
            soak.say(f"some runs did not end within {SETTLE_TIMEOUT_S:g} s")
        soak.say("verifying logs and subscribers")
        report = verify(soak, asyncio.run(record_statuses(system, soak.runs)))
        print_report(soak, report)
        ok = report.ok and all_ended
    finally:
        stop_system(system, root)
        if ok and not args.keep and not (report and report.notes):
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root} (logs: api.log, worker*.log, redis/redis.log, data/runs/*)")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # everything was stopped on the way out
        sys.exit(130)
