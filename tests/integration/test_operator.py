"""`ade dev`: embedded Redis, API and worker on one machine; Ctrl-C stops all of it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ade.redis_server import free_port


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def test_ade_dev_runs_everything_and_ctrl_c_leaves_no_process(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "ADE_REDIS_URL"}
    env.update(ADE_DATA_DIR=str(tmp_path / "data"), ADE_PORT=str(port), ADE_LOG_LEVEL="WARNING")
    dev = subprocess.Popen(
        [sys.executable, "-m", "ade.cli", "dev"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        ready = None
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert ready is not None and ready.json()["ready"] is True
        children = children_of(dev.pid)
        assert len(children) == 3  # redis-server, the API, the worker
        assert (tmp_path / "data" / "redis" / "appendonlydir").exists()  # embedded Redis under the data dir
        dev.send_signal(signal.SIGINT)
        assert dev.wait(30) == 0
        assert [pid for pid in children if alive(pid)] == []
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
