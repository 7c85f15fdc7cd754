"""A Ray head of a test's own: `ray start --head --block` on free ports, with its
own temp dir and auth token, ended by the PIDs of the processes it started
(never `ray stop`: other Rays on the machine are not ours).

Used by tests/test_isolation.py (two drivers on one cluster) and
tests/test_job_submit.py (`ray job submit`, which needs the dashboard).
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

RAY = str(Path(sys.executable).with_name("ray"))  # this venv's ray CLI


@dataclass
class Head:
    address: str        # GCS address, for ray.init / ray_address=
    env: dict           # the environment a client needs: token auth on, this head's token
    tmp: str            # the head's temp dir (its logs are under session_latest/logs)
    dashboard: str | None  # http://127.0.0.1:PORT when started with the dashboard (ray job ...)


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports: each socket stays bound until all are chosen (a port
    released at once can be handed out again: two of Ray's components once got one)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def descendants(root: int) -> list[int]:
    """Every process below `root`, from /proc."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


@contextlib.contextmanager
def ray_head(dashboard: bool = False, num_cpus: int = 4, start_timeout_s: float = 180) -> Iterator[Head]:
    """Start a head, yield it, then SIGKILL it and every process below it, by PID
    (a job's driver too: it runs in a session of its own, but below the head)."""
    tmp = tempfile.mkdtemp(prefix="rvh-", dir="/tmp")  # short: Ray's socket paths have a length limit
    token = secrets.token_hex(32)
    Path(tmp, "auth_token").write_text(token)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": f"{tmp}/auth_token",
           "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    names = ("port", "dashboard-port", "node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port", "ray-client-server-port")
    ports = dict(zip(names, free_ports(len(names))))
    cmd = [RAY, "start", "--head", "--block", f"--temp-dir={tmp}", f"--num-cpus={num_cpus}", "--num-gpus=0",
           f"--include-dashboard={'true' if dashboard else 'false'}", "--dashboard-host=127.0.0.1",
           "--object-store-memory=200000000", "--disable-usage-stats", *(f"--{k}={v}" for k, v in ports.items())]
    log = Path(tmp, "head.log")
    head = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout_s
        while not Path(tmp, "ray_current_cluster").is_file() or "Ray runtime started" not in log.read_text():
            assert head.poll() is None, f"ray start exited {head.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"ray start not up after {start_timeout_s}s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        assert token not in log.read_text()  # the head does not print the token
        address = Path(tmp, "ray_current_cluster").read_text().strip()
        url = f"http://127.0.0.1:{ports['dashboard-port']}" if dashboard else None
        yield Head(address, env, tmp, url)
    finally:
        pids = [head.pid, *descendants(head.pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        head.wait(timeout=30)
        deadline = time.monotonic() + 30
        while not all(gone(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [p for p in pids if not gone(p)]
        shutil.rmtree(tmp, ignore_errors=True)
        assert not left, f"head processes still running: {left}"

