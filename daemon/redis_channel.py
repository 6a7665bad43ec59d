"""The pipeliner's own Redis connection: RESP packing, a protocol whose replies hiredis parses as bytes
arrive, handed to the waiting futures in order (see daemon/pipeliner.py)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

import hiredis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError
from redis.exceptions import TimeoutError as RedisTimeoutError

from daemon.breaker import Breaker


class Owner(Protocol):
    _breaker: Breaker | None

    def _answered(self, n: int) -> None: ...


class Channel(asyncio.Protocol):
    """One Redis connection: commands written in batches, replies parsed by hiredis as bytes arrive and
    handed to the futures in order. A lost connection, a protocol error or no reply for ``socket_timeout``
    fails every call still waiting on it (and closes it: the next batch opens a new one)."""

    def __init__(self, owner: Owner, settings: dict[str, Any]) -> None:
        kwargs: dict[str, Any] = {"replyError": BaseParser.parse_error}
        if settings.get("decode_responses"):
            kwargs["encoding"] = settings.get("encoding", "utf-8")
            kwargs["errors"] = settings.get("encoding_errors", "strict")
        self.reader = hiredis.Reader(**kwargs)
        self.owner = owner
        self.breaker = owner._breaker  # told of answers and timeouts (daemon/breaker.py)
        self.timeout = settings.get("socket_timeout")
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.replies = 0
        self.progress_at = 0.0  # loop time of the last reply, or of a send to an idle connection
        self._watch: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, batch: list[tuple[bytes, asyncio.Future[Any]]]) -> None:
        if self.closed or self.transport is None:
            error = RedisConnectionError("Connection closed by server.")
            for _, future in batch:
                resolve(future, error)
            self.owner._answered(len(batch))
            return
        if not self.waiting:
            self.progress_at = asyncio.get_running_loop().time()
        self.waiting.extend([future for _, future in batch])
        self.transport.write(b"".join([command for command, _ in batch]))
        if self._watch is None and self.timeout:
            self._watch = asyncio.get_running_loop().call_later(self.timeout, self._check)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiting = self.waiting
        n = 0
        try:
            while (reply := reader.gets()) is not False:
                n += 1
                future = waiting.popleft()
                if not future.done():
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            self.fail(RedisConnectionError(f"Protocol error from Redis: {exc}"))
        finally:
            if n:
                self.replies += n
                self.progress_at = asyncio.get_running_loop().time()
                if self.breaker is not None and self.breaker.open:
                    self.breaker.answered()
            self.owner._answered(n)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(
            RedisConnectionError(
                f"Connection to Redis lost: {exc}" if exc else "Connection closed by server."
            )
        )

    def _check(self) -> None:
        self._watch = None
        if not self.waiting or self.closed:
            return
        loop = asyncio.get_running_loop()
        left = self.progress_at + self.timeout - loop.time()
        if left <= 0:  # calls waiting, and no reply for a whole timeout
            if self.breaker is not None:  # first: the calls queued behind these must not be sent
                self.breaker.timed_out()
            self.fail(RedisTimeoutError("Timeout reading from Redis"))
        else:
            self._watch = loop.call_later(left, self._check)

    def fail(self, error: Exception) -> None:
        self.closed = True
        if self.breaker is not None and not isinstance(error, RedisTimeoutError):
            self.breaker.failed()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self.transport is not None:
            self.transport.abort()
        waiting, self.waiting = self.waiting, deque()
        for future in waiting:
            resolve(future, error)
        if waiting:
            self.owner._answered(len(waiting))


def direct_settings(client: Any) -> dict[str, Any] | None:
    """The connection settings of a plain TCP client the pipeliner can open its own connection with."""
    if not isinstance(client, aioredis.Redis):  # the breaker's subclass included
        return None
    pool = client.connection_pool
    settings = dict(pool.connection_kwargs)
    if pool.connection_class is not aioredis.Connection or "path" in settings:
        return None
    if str(settings.get("protocol") or 2) != "2" or settings.get("credential_provider") is not None:
        return None
    return settings


def resolve(future: asyncio.Future[Any], reply: Any) -> None:
    if future.done():  # the caller was cancelled
        return
    if isinstance(reply, Exception):
        future.set_exception(reply)
    else:
        future.set_result(reply)


def pack(args: Sequence[Any], encoding: str) -> bytes:
    """One command in RESP (the arguments redis-py's encoder accepts: bytes, str, int, float).

    The common case (ASCII strings and ints: every command this service sends) is built as one str and
    encoded once, ~25% faster than encoding argument by argument.
    """
    parts = [f"*{len(args)}\r\n"]
    append = parts.append
    for arg in args:
        kind = type(arg)
        if kind is str and arg.isascii():
            append(f"${len(arg)}\r\n{arg}\r\n")
        elif kind is int:
            text = str(arg)
            append(f"${len(text)}\r\n{text}\r\n")
        else:
            return _pack_any(args, encoding)
    return "".join(parts).encode()


def _pack_any(args: Sequence[Any], encoding: str) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode(encoding)
        elif isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, int) and not isinstance(arg, bool):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            kind = type(arg).__name__
            raise DataError(f"Invalid input of type {kind!r}: convert to bytes, str, int or float first.")
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)
