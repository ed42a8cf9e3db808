"""`ade serve --workers N`: N API processes accepting on one listening socket (bound here, inherited by
each), so one port spreads over every core; each process has its own hub (DESIGN.md §2a: nothing one
process holds is needed by another). SIGTERM or SIGINT is passed on to every process, which drains its
streams and stops; the exit code is the worst of theirs."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from types import FrameType

LISTEN_BACKLOG = 4096


def listening_socket(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


def serve_processes(host: str, port: int, workers: int) -> int:
    sock = listening_socket(host, port)
    fd = sock.fileno()
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "ade.cli", "serve", "--fd", str(fd)],
            pass_fds=(fd,),
            start_new_session=True,
        )
        for _ in range(workers)
    ]

    def pass_on(signum: int, _: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, pass_on)
    codes = [child.wait() for child in children]
    sock.close()
    stopped = {0, -signal.SIGTERM, -signal.SIGINT}  # uvicorn ends by re-raising the signal it stopped on
    return max((abs(code) for code in codes if code not in stopped), default=0)
