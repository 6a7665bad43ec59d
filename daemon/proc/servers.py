"""Private Redis and PostgreSQL servers run as child processes, for ``engagementd dev`` and the tests.

Each server runs in the foreground (never daemonized), bound to 127.0.0.1 on its own port, with all
state in ``data_dir``. ``start()`` waits until the server answers queries; a failed start raises
:class:`ServerError` with the tail of the server's log. Missing binaries raise
:class:`MissingBinaryError` naming the Debian package. When this process dies, the servers get their
graceful-stop signal (parent-death signal, tied to the thread that started them: start them from the
main thread or a thread that lives as long as they should).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import pwd
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
from pathlib import Path

from daemon.keys import HASH_MAX_LISTPACK_ENTRIES
from daemon.proc.childproc import (
    ChildServer,
    MissingBinaryError,
    ServerError,
    free_port,
    pid_alive,
    poll_until,
    port_in_use,
)

_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class RedisServer(ChildServer):
    """``redis-server`` on 127.0.0.1; with ``appendonly`` its data survives a stop and a restart."""

    name = "redis-server"
    stop_signal = signal.SIGTERM  # redis flushes and fsyncs the AOF on SIGTERM

    def __init__(
        self, data_dir: Path, port: int | None = None, appendonly: bool = True, cluster: bool = False
    ) -> None:
        super().__init__(data_dir, port)
        self.appendonly = appendonly
        self.cluster = cluster
        self.binary = shutil.which("redis-server") or (
            "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
        )
        if self.binary is None:
            raise MissingBinaryError(
                "redis-server not found; install the Debian package 'redis-server' "
                "(scripts/install-system-deps.sh does)"
            )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def _command(self) -> list[str]:
        assert self.binary is not None
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--daemonize", "no"]
        cmd += ["--dir", str(self.data_dir), "--logfile", str(self.log_path), "--save", ""]
        # Per-shard hashes hold hundreds of fields: see daemon/keys.py HASH_MAX_LISTPACK_ENTRIES.
        cmd += ["--hash-max-listpack-entries", str(HASH_MAX_LISTPACK_ENTRIES)]
        if self.appendonly:
            cmd += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            cmd += ["--appendonly", "no"]
        if self.cluster:
            cmd += ["--cluster-enabled", "yes", "--cluster-config-file", str(self.data_dir / "nodes.conf")]
        return cmd

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(64).startswith(b"+PONG")  # "-LOADING" while the AOF is read
        except OSError:
            return False


def _pg_bin_dirs() -> list[str]:
    def version(path: str) -> tuple[int, ...]:
        ver = Path(path).parent.name
        return tuple(int(p) for p in ver.split(".") if p.isdigit())

    return sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)


def _pg_binary(name: str) -> str:
    for bindir in _pg_bin_dirs():
        candidate = os.path.join(bindir, name)
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found is None:
        raise MissingBinaryError(
            f"PostgreSQL's {name} not found in /usr/lib/postgresql/*/bin or PATH; install the Debian "
            "package 'postgresql' (scripts/install-system-deps.sh does)"
        )
    return found


class PostgresServer(ChildServer):
    """A PostgreSQL cluster in ``data_dir`` on 127.0.0.1, trust auth for user ``postgres``.

    ``fast`` turns off fsync (tests); leave it off for a dev server whose data should survive the host.
    As root the cluster is run by the ``postgres`` system user, which then owns ``data_dir``.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # fast shutdown: roll back open transactions, checkpoint, exit

    def __init__(self, data_dir: Path, port: int | None = None, fast: bool = False) -> None:
        super().__init__(data_dir, port)
        self.fast = fast
        self.initdb = _pg_binary("initdb")
        self.postgres = _pg_binary("postgres")
        self.psql_bin = _pg_binary("psql")
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError as exc:
                raise ServerError("running as root needs the 'postgres' system user") from exc
            self._run_as = "postgres"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def _socket_dir(self) -> str:
        # Unix socket paths are limited to 107 bytes; past that, serve TCP only.
        return str(self.data_dir) if len(str(self.data_dir)) < 90 else ""

    def init(self) -> None:
        """Run initdb unless ``data_dir`` already holds a cluster."""
        self._make_dir()
        if (self.data_dir / "PG_VERSION").exists():
            return
        if any(self.data_dir.iterdir()):
            raise ServerError(f"{self.data_dir} is not empty and holds no PostgreSQL cluster")
        cmd = [self.initdb, "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8"]
        cmd += ["--locale=C", "--no-sync"]
        proc = self._spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise ServerError(f"initdb failed ({proc.returncode}):\n{out.decode(errors='replace')[-3000:]}")

    def _make_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as is None:
            self.data_dir.chmod(0o700)
            return
        pw = pwd.getpwnam(self._run_as)
        for parent in self.data_dir.parents:  # the postgres user must be able to traverse to its dir
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
        if self.data_dir.stat().st_uid != pw.pw_uid:
            for path in [self.data_dir, *self.data_dir.rglob("*")]:
                os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)
        self.data_dir.chmod(0o700)

    def _prepare(self) -> None:
        self.init()
        pidfile = self.data_dir / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        if pid_alive(pid) and self._serves_our_dir(pid):
            raise ServerError(f"a postgres (pid {pid}) is already running on {self.data_dir}")
        pidfile.unlink(missing_ok=True)  # stale: left by a killed server

    def _serves_our_dir(self, pid: int) -> bool:
        """Whether live process ``pid`` is a postmaster of this data directory (its cwd is PGDATA)."""
        try:
            return Path(os.readlink(f"/proc/{pid}/cwd")) == self.data_dir.resolve()
        except OSError as exc:
            return exc.errno not in (errno.ENOENT, errno.ESRCH)  # unknown: assume it is

    def _command(self) -> list[str]:
        cmd = [self.postgres, "-D", str(self.data_dir), "-p", str(self.port), "-k", self._socket_dir]
        cmd += ["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"]
        if self.fast:
            # Survives a crash of the server (committed WAL reaches the OS), not of the host.
            # synchronous_commit stays on: a killed server must keep what it acknowledged.
            cmd += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        return cmd

    def _ready(self) -> bool:
        if not port_in_use(self.port):
            return False
        try:
            return self.psql("SELECT 1", timeout_s=5).strip() == "1"
        except ServerError:
            return False

    def _children(self, pid: int) -> list[tuple[int, str]]:
        """(pid, start time) of the postmaster's children; each backend runs in its own session."""
        found = []
        for stat_file in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat_file).read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[1] == str(pid):  # fields[1] is ppid, fields[19] the start time
                found.append((int(stat_file.split("/")[2]), fields[19]))
        return found

    def _after_exit(self, pid: int, children: list[tuple[int, str]]) -> None:
        # After a SIGKILL the backends notice the postmaster is gone and exit; a new postmaster refuses
        # to start while they still hold shared memory, so wait for them (and SIGKILL stragglers).
        def alive() -> list[int]:
            out = []
            for child, started in children:
                try:
                    fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                if fields[19] == started and fields[0] != "Z":
                    out.append(child)
            return out

        if not poll_until(lambda: not alive(), 10.0):
            for child in alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            poll_until(lambda: not alive(), 10.0)

    # -- SQL -------------------------------------------------------------------------------------------
    def psql(self, sql: str, dbname: str = "postgres", timeout_s: float = 60.0) -> str:
        """Run ``sql`` with psql (unaligned, tuples only); its output, or ServerError on failure."""
        cmd = [self.psql_bin, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"]
        cmd += ["-p", str(self.port), "-U", "postgres", "-d", dbname, "-c", sql]
        env = {**os.environ, "PGCONNECT_TIMEOUT": "2", "PGPASSWORD": "", "PGOPTIONS": ""}
        try:
            res = subprocess.run(cmd, capture_output=True, timeout=timeout_s, env=env, cwd="/", check=False)
        except subprocess.TimeoutExpired as exc:
            raise ServerError(f"psql timed out after {timeout_s}s: {sql}") from exc
        if res.returncode != 0:
            raise ServerError(f"psql failed ({res.returncode}): {res.stderr.decode(errors='replace')}")
        return res.stdout.decode()

    def create_database(self, name: str) -> None:
        """Create database ``name`` unless it exists."""
        _check_db_name(name)
        if self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip() != "1":
            self.psql(f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting its sessions."""
        _check_db_name(name)
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _check_db_name(name: str) -> None:
    if not _DB_NAME.match(name):
        raise ValueError(f"not a plain database name: {name!r}")


__all__ = ["MissingBinaryError", "PostgresServer", "RedisServer", "ServerError", "free_port"]


def _cluster_port() -> int:
    """A free port P with P + 10000 (the cluster bus) free too; Redis refuses P > 55535."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(20_000, 22_000)  # below the ephemeral range, bus port too
        if not port_in_use(port) and not port_in_use(port + 10_000):
            return port
    raise ServerError("no free port pair for a Redis Cluster node")


class RedisClusterServers:
    """A Redis Cluster of ``size`` masters (no replicas) on 127.0.0.1, for tests of the key layout."""

    def __init__(self, data_dir: Path, size: int = 3) -> None:
        self.nodes = [
            RedisServer(data_dir / f"node{i}", _cluster_port(), appendonly=False, cluster=True)
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        create = [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
        out = subprocess.run(create, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise ServerError(f"redis-cli --cluster create failed:\n{out.stdout}{out.stderr}")

        def ready() -> bool:
            for node in self.nodes:
                info = subprocess.run(
                    [cli, "-p", str(node.port), "cluster", "info"], capture_output=True, text=True, timeout=10
                ).stdout
                if "cluster_state:ok" not in info:
                    return False
            return True

        if not poll_until(ready, 30):
            raise ServerError("the Redis Cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
