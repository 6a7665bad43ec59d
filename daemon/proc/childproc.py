"""The lifecycle of one foreground server child process; the servers themselves are in ``servers``.

A server runs in its own session (a Ctrl-C in the terminal reaches only the parent, which stops it) and
gets its graceful-stop signal when the thread that started it dies (Linux parent-death signal).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
_PR_SET_PDEATHSIG = 1
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - non-glibc platforms
    _LIBC = None


class ServerError(RuntimeError):
    """A server could not be started, queried or stopped."""


class MissingBinaryError(ServerError):
    """A server binary is not installed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def poll_until(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.02) -> bool:
    """Call ``check`` until it returns True or the deadline passes; True if it did."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
        interval_s = min(interval_s * 1.5, 0.25)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class ChildServer:
    """Common lifecycle of one foreground server child process."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, data_dir: Path, port: int | None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port if port is not None else free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._run_as: str | None = None  # a user name when we are root and the server must not be

    # -- to implement ---------------------------------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Runs before each start."""

    def _after_exit(self, pid: int, children: list[tuple[int, str]]) -> None:
        """Runs after the server process has been reaped."""

    def _children(self, pid: int) -> list[tuple[int, str]]:
        return []

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.is_running():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        if port_in_use(self.port):
            raise ServerError(f"{self.name}: port 127.0.0.1:{self.port} is already in use")
        with open(self.log_path, "ab") as log:
            self.proc = self._spawn(self._command(), stdout=log, stderr=subprocess.STDOUT, pdeathsig=True)
        if not poll_until(lambda: not self._exited() and self._ready(), START_TIMEOUT_S):
            code = self.proc.poll()
            self.kill()
            state = f"exited with code {code}" if code is not None else f"not ready in {START_TIMEOUT_S:.0f}s"
            raise ServerError(f"{self.name} on port {self.port} {state}; log tail:\n{_tail(self.log_path)}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Graceful stop; idempotent. Escalates to SIGKILL if the server does not exit in time."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            children = self._children(self.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._after_exit(self.proc.pid, children)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            children = self._children(self.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
            self._after_exit(self.proc.pid, children)
        self.proc = None

    def restart(self) -> None:
        """Stop (if running) and start again on the same port with the same data directory."""
        self.stop()
        self.start()

    def is_running(self) -> bool:
        return self.proc is not None and not self._exited()

    def _exited(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- helpers ---------------------------------------------------------------------------------------
    def _spawn(self, cmd: list[str], *, pdeathsig: bool = False, **kwargs: object) -> subprocess.Popen[bytes]:
        user_kw: dict[str, object] = {}
        if self._run_as is not None:
            pw = pwd.getpwnam(self._run_as)
            user_kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        sig = int(self.stop_signal)

        def _die_with_parent() -> None:  # runs in the child, after the user switch
            if _LIBC is not None:
                _LIBC.prctl(_PR_SET_PDEATHSIG, sig)

        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            cmd,
            cwd="/",
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if pdeathsig else None,
            **user_kw,
            **kwargs,
        )


__all__ = [
    "ChildServer",
    "MissingBinaryError",
    "ServerError",
    "free_port",
    "pid_alive",
    "poll_until",
    "port_in_use",
]
