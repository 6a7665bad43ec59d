"""Clients of the live count streams (api/live.py) for the tests: WebSocket (the ``websockets`` library),
Server-Sent Events (httpx), a raw socket that stops reading, and the counters the tests compare."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

Message = dict[str, Any]


def ws_url(base_url: str, path: str) -> str:
    return base_url.replace("http://", "ws://", 1) + path


@contextlib.asynccontextmanager
async def websocket(base_url: str, path: str, **headers: str) -> AsyncIterator[ClientConnection]:
    async with connect(ws_url(base_url, path), additional_headers=headers, open_timeout=20) as ws:
        yield ws


async def next_message(ws: ClientConnection, timeout_s: float = 10.0, keepalives: bool = False) -> Message:
    """The next count message (keepalives, ``{"ts"}`` only, skipped unless asked for)."""
    deadline = time.monotonic() + timeout_s
    while True:
        raw = await asyncio.wait_for(ws.recv(), max(deadline - time.monotonic(), 0.001))
        message = json.loads(raw)
        if keepalives or set(message) != {"ts"}:
            return message


async def refused(base_url: str, path: str, **headers: str) -> tuple[int, dict[str, str], Any]:
    """The HTTP answer to a WebSocket upgrade the server refuses: status, headers, JSON body."""
    try:
        async with websocket(base_url, path, **headers):
            pass
    except InvalidStatus as exc:
        response = exc.response
        return response.status_code, dict(response.headers), json.loads(response.body or b"null")
    raise AssertionError(f"the upgrade of {path} was accepted")


class EventStream:
    """``GET path`` with ``Accept: text/event-stream`` on a thread-free httpx async client."""

    def __init__(self, base_url: str, path: str, **headers: str) -> None:
        self.client = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(20.0, read=30.0))
        self.path = path
        self.headers = {"Accept": "text/event-stream", **headers}
        self._stream: Any = None
        self.response: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None
        self.comments = 0

    async def __aenter__(self) -> EventStream:
        self._stream = self.client.stream("GET", self.path, headers=self.headers)
        self.response = await self._stream.__aenter__()
        self._lines = self.response.aiter_lines()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self._stream.__aexit__(None, None, None)
        await self.client.aclose()

    async def next(self, timeout_s: float = 10.0) -> Message | None:
        """The next ``data:`` event (None when the stream ended); comments are counted, not returned."""
        assert self._lines is not None
        deadline = time.monotonic() + timeout_s
        data: list[str] = []
        while True:
            try:
                line = await asyncio.wait_for(anext(self._lines), max(deadline - time.monotonic(), 0.001))
            except StopAsyncIteration:
                return None
            if line.startswith(":"):
                self.comments += 1
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
            elif line == "" and data:
                return json.loads("\n".join(data))


def stuck_websocket(port: int, path: str) -> socket.socket:
    """A WebSocket that completes its handshake, then never reads: a tiny receive window and segment
    size keep the server's send buffer small (a few tens of kilobytes), so its sends soon block."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 88)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def metric(base_url: str, name: str, **labels: str) -> float:
    """One sample of the api's /metrics (0 when absent)."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", re.M)
    for found in pattern.finditer(text):
        have = ",".join(sorted((found.group(1) or "").split(","))) if found.group(1) else ""
        if have == want:
            return float(found.group(2))
    return 0.0


def redis_commands(redis_url: str) -> int:
    """Commands Redis has executed (INFO commandstats, scripts' own commands included), but those of the
    connections that read them (INFO, HELLO, CLIENT SETINFO)."""
    with redis.Redis.from_url(redis_url) as r:
        stats = r.info("commandstats")
    mine = ("cmdstat_info", "cmdstat_hello", "cmdstat_client|setinfo")
    return sum(int(v["calls"]) for k, v in stats.items() if k not in mine)


class Browser:
    """Debian's headless Chromium on a page, driven over the DevTools protocol (a WebSocket)."""

    def __init__(self, url: str, profile: str) -> None:
        import shutil
        import subprocess

        binary = shutil.which("chromium") or "/usr/bin/chromium"
        if not os.access(binary, os.X_OK):
            raise AssertionError("chromium not found: `make test` installs Debian's chromium")
        self.profile = profile
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",  # tests run as root
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._id = 0
        self._ws: ClientConnection | None = None

    async def __aenter__(self) -> Browser:
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            assert self.proc.poll() is None, "chromium exited"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        async with httpx.AsyncClient() as client:
            while True:
                pages = [
                    t
                    for t in (await client.get(f"http://127.0.0.1:{port}/json")).json()
                    if t["type"] == "page"
                ]
                if pages:
                    break
                assert time.monotonic() < deadline, "chromium opened no page"
                await asyncio.sleep(0.05)
        self._ws = await connect(pages[0]["webSocketDebuggerUrl"], max_size=None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except Exception:  # noqa: BLE001
            self.proc.kill()
            self.proc.wait()

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        assert self._ws is not None
        self._id += 1
        await self._ws.send(
            json.dumps(
                {
                    "id": self._id,
                    "method": "Runtime.evaluate",
                    "params": {"expression": expression, "returnByValue": True},
                }
            )
        )
        while True:
            reply = json.loads(await self._ws.recv())
            if reply.get("id") == self._id:
                return reply["result"]["result"].get("value")
