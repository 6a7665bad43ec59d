"""Running wrk (pinned to the client CPU, in its own process group) and parsing its summary."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from loadtest.procs import CHILDREN, CPUS, WRK_DIR, BenchError, pinned

CONNECTIONS = 64  # wrk -c of the single-view runs (ratio, exact count, viral)
# wrk -c of the paced runs (latency at half the peak): few connections, each waiting its pace after an
# answer, so that requests arrive spread out rather than in bursts of every connection at once
PACED_CONNECTIONS = 32
WARMUP_S = 2  # seconds of wrk before a server is measured


def run_wrk(
    script: str,
    url: str,
    duration_s: int,
    connections: int,
    args: Iterable[str] = (),
    stop_when_threads_done: bool = False,
) -> dict[str, Any]:
    """Run wrk pinned to the client CPU; its parsed summary.

    With ``stop_when_threads_done`` (scripts that call wrk.thread:stop()), wrk's main thread still
    sleeps for -d; the harness sees its worker threads gone and interrupts that sleep with SIGINT, so
    wrk's reported duration is the real one.
    """
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
        "-s",
        str(WRK_DIR / script),
        url,
    ]
    extra = list(args)
    if extra:
        cmd += ["--", *extra]
    cmd = pinned(cmd, CPUS.client)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, stdin=subprocess.DEVNULL
    )
    CHILDREN.adopt("wrk", proc)
    try:
        if stop_when_threads_done:
            task_dir = Path(f"/proc/{proc.pid}/task")
            seen_workers = False
            deadline = time.monotonic() + duration_s + 30
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    n = len(os.listdir(task_dir))
                except OSError:
                    break
                if n > 1:
                    seen_workers = True
                elif seen_workers:
                    os.kill(proc.pid, signal.SIGINT)
                    break
                time.sleep(0.01)
        out, err = proc.communicate(timeout=duration_s + 60)
    finally:
        CHILDREN.stop(proc, 2)
    text = out.decode(errors="replace")
    if proc.returncode not in (0, -signal.SIGINT):
        raise BenchError(f"wrk exited {proc.returncode}: {err.decode(errors='replace')}\n{text}")
    return parse_wrk(text)


def half_peak_pace_ms(peak_rps: float, connections: int, answer_ms: float = 2.0) -> int:
    """wrk's delay() (whole ms, after each answer, per connection) that paces ``connections`` to about
    half of ``peak_rps``: each connection's interval is the delay plus the answer's time (``answer_ms``
    assumed), so the rate reached depends on the latency; the report gives the rate measured."""
    return max(1, round(connections / (peak_rps / 2) * 1000 - answer_ms))


def parse_wrk(text: str) -> dict[str, Any]:
    """wrk's summary (and the LT_RESULT line of the exact-count scripts) as a dict."""

    def num(pattern: str, default: float | None = None) -> float:
        m = re.search(pattern, text)
        if m is None:
            if default is None:
                raise BenchError(f"unexpected wrk output:\n{text}")
            return default
        return float(m.group(1))

    requests = int(num(r"(\d+) requests in"))
    m = re.search(r"requests in ([\d.]+)(us|ms|s|m)\b", text)
    if m is None:
        raise BenchError(f"unexpected wrk output:\n{text}")
    duration_s = float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(2)]
    result: dict[str, Any] = {
        "requests": requests,
        "duration_s": duration_s,
        "requests_per_s": num(r"Requests/sec:\s+([\d.]+)"),
        "non_2xx": int(num(r"Non-2xx or 3xx responses: (\d+)", 0)),
        "socket_errors": 0,
        "latency_avg": (re.search(r"Latency\s+(\S+)", text) or [None, None])[1],
    }
    # --latency: "  50%    1.23ms" ... "  99%   10.50ms" (wrk's own histogram, at the rate it drove)
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if m:
            result[f"latency_p{pct}_ms"] = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if errs:
        result["socket_errors"] = sum(int(g) for g in errs.groups())
    lt = re.search(r"LT_RESULT sent=(\d+) ok=(\d+) err=(\d+) idle=(\d+) duration_us=(\d+)", text)
    if lt:
        sent, ok, bad, idle, dur = (int(g) for g in lt.groups())
        result.update(sent=sent, ok=ok, err=bad, idle=idle, duration_s=dur / 1e6)
    result["ok_2xx"] = requests - result["non_2xx"]
    return result
