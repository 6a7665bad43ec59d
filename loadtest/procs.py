"""Child processes of the benchmark: spawning in own process groups, CPU pinning, CPU accounting, cleanup.

Every long-lived child goes through ``CHILDREN`` and is killed (its whole process group) on exit,
Ctrl-C included. ``CPUS`` says which CPU the server under test gets and which one everything else
(the harness, wrk, Redis, Postgres, the flusher) gets; ``pin_cpus`` sets it from the affinity mask.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WRK_DIR = HERE / "wrk"
RESULTS = HERE / "results"


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Pinning:
    """The CPU of the server under test and the CPU of everything else (set by ``pin_cpus``)."""

    server: int = 0
    client: int = 1


CPUS = Pinning()


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    """``cmd`` under ``taskset -c cpu`` when a CPU is given and taskset exists."""
    if cpu is not None and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu), *cmd]
    return cmd


class Children:
    """Every long-lived child of the harness, each in its own process group; all killed on exit."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(
        self, name: str, cmd: list[str], env: dict[str, str], log_path: Path, cpu: int | None = None
    ) -> subprocess.Popen[bytes]:
        cmd = pinned(cmd, cpu)
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs.append((name, proc))
        return proc

    def adopt(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        """Track a child started elsewhere (in its own session) so it is killed on exit too."""
        self.procs.append((name, proc))

    def stop(self, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        # The group may hold workers that outlive the parent (granian's worker processes).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self.procs)):
            self.stop(proc)


CHILDREN = Children()


def _on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """SIGTERM/SIGHUP/SIGINT end the harness through SystemExit; every child is killed at exit."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    atexit.register(CHILDREN.stop_all)


def pin_cpus() -> None:
    """With 2+ CPUs: the first for the server, the second for the harness and every other child."""
    ncpu = len(os.sched_getaffinity(0))
    if ncpu >= 2:
        cpus = sorted(os.sched_getaffinity(0))
        CPUS.server, CPUS.client = cpus[0], cpus[1]
        os.sched_setaffinity(0, {CPUS.client})  # inherited by Redis, Postgres and every other child
    else:
        log("fewer than 2 CPUs: no pinning")


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) used so far by every live process of process group ``pgid``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # fields[2]: pgrp; [11], [12]: utime, stime
            total += int(fields[11]) + int(fields[12])
    return total / tick


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll_until(check: Callable[[], Any], timeout_s: float, interval_s: float = 0.02) -> Any:
    """Call ``check`` until it returns something truthy (returned) or the deadline passes (None)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval_s)
        interval_s = min(interval_s * 1.5, 0.1)


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def engagementd_cmd() -> list[str]:
    script = Path(sys.executable).parent / "engagementd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "daemon.proc.cli"]


def run_cli(args: list[str], env: dict[str, str], timeout_s: float = 300) -> str:
    """``engagementd <args>`` to completion on the client CPU; its output (BenchError on failure)."""
    cmd = pinned(engagementd_cmd() + args, CPUS.client)
    res = subprocess.run(
        cmd, env=env, cwd=REPO, capture_output=True, timeout=timeout_s, check=False, stdin=subprocess.DEVNULL
    )
    out = res.stdout.decode(errors="replace") + res.stderr.decode(errors="replace")
    if res.returncode != 0:
        raise BenchError(f"engagementd {' '.join(args)} exited {res.returncode}:\n{out[-3000:]}")
    return out
