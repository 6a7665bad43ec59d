"""The Lua scripts of the Redis core, one file per atomic operation, run as Redis Functions.

Each script may open with Redis 7's shebang line (``#!lua flags=allow-oom``: it runs while Redis is at
``maxmemory``; ``flags=no-writes``) and may use the helpers of ``lua/lib/<name>.lua`` by a line
``-- @include <name>`` (Redis has no ``require``): one definition of the cold-key protocol, records and
leases for every script that needs them.

All the scripts are loaded as ONE function library (``FUNCTION LOAD``), built here from the files: each
helper library once at its top, then every script as a function whose body is the script's file
(``KEYS`` and ``ARGV`` its parameters) and whose flags are its shebang's. The helpers are then defined
once per load, not on every call as when a script that includes them runs by ``EVALSHA`` (measured:
4-5 Redis CPU-µs of a like's ~35; docs/benchmarks.md). A helper library with per-call state clears it in
``<lib>.begin()``, which every function including it calls first. The library's and its functions' names
carry the version of the text (``engagementd_<v>``, ``<script>_<v>``), so processes of two versions of
the code can share one Redis during a rolling deploy; ``engagementd migrate`` deletes the libraries of
other versions (``Library.prune``).

``LuaScript`` calls its function with ``FCALL``; when Redis answers "Function not found" (a restart
without persistence, ``FUNCTION FLUSH``, a new cluster node) the library is loaded once per process and
client (``FUNCTION LOAD REPLACE``; on Redis Cluster the client sends it to every primary) and the call
re-sent; should the load itself be refused (at ``maxmemory``, say), the call is made with ``EVAL`` of the
script's own text instead, as before functions. ``text`` (the script with its includes) and ``sha``
remain for tools that want the plain script.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from redis.client import NEVER_DECODE
from redis.exceptions import NoScriptError, ResponseError

KeyT = str
ArgT = str | int | bytes


_INCLUDE = re.compile(r"^-- @include (\w+)$", re.MULTILINE)
_SHEBANG = re.compile(r"^#!lua(?: flags=([\w,-]+))?[ \t]*\n")
LIBRARY_PREFIX = "engagementd_"


def _file(name: str) -> str:
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


def source(name: str) -> str:
    """The text sent to Redis by EVAL: the script's file with its ``-- @include`` lines replaced."""
    return _INCLUDE.sub(lambda m: _library(m.group(1)), _file(name))


def _library(name: str) -> str:
    return resources.files(__name__).joinpath("lib", f"{name}.lua").read_text(encoding="utf-8").rstrip("\n")


def function_missing(error: object) -> bool:
    """Whether a reply is Redis's "Function not found" (the library is not loaded there)."""
    return isinstance(error, ResponseError) and str(error).startswith("Function not found")


class Library:
    """The function library of a set of scripts: its text, name and version, and loading it."""

    def __init__(self, names: Sequence[str]) -> None:
        parts = {name: _parts(name) for name in names}
        helpers: list[str] = []
        for _, includes, _ in parts.values():
            helpers += [h for h in includes if h not in helpers]
        texts = {h: _library(h) for h in helpers}
        resets = {h for h, t in texts.items() if re.search(rf"^function {h}\.begin\(\)", t, re.MULTILINE)}
        body = [texts[h] for h in helpers]
        for name, (flags, includes, script) in parts.items():
            begin = "".join(f"{h}.begin()\n" for h in includes if h in resets)
            flag_list = ", ".join(f"'{f}'" for f in flags)
            body.append(
                f"redis.register_function{{function_name = '{name}_@V', flags = {{{flag_list}}},"
                f" callback = function(KEYS, ARGV)\n{begin}{script}\nend}}"
            )
        text = "\n".join(body) + "\n"
        self.version = hashlib.sha1(text.encode()).hexdigest()[:16]
        self.name = LIBRARY_PREFIX + self.version
        self.text = f"#!lua name={self.name}\n" + text.replace("_@V'", f"_{self.version}'")
        self._loading: dict[tuple[int, int], asyncio.Future[None]] = {}
        self._loaded_at: dict[tuple[int, int], float] = {}  # when the last load ended

    def function(self, name: str) -> str:
        return f"{name}_{self.version}"

    async def ensure(self, client: Any, since: float) -> None:
        """Load the library (``FUNCTION LOAD REPLACE``) for a call sent at ``since`` (``time.monotonic``)
        that met "Function not found", once per event loop and client: callers that met it together wait
        for the same load, and a call sent before the last load ended (its answer was on its way) does not
        load it again."""
        key = (id(asyncio.get_running_loop()), id(client))
        if self._loaded_at.get(key, -1.0) > since:
            return
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._load(client, key))
            self._loading[key] = loading
            loading.add_done_callback(lambda _: self._loading.pop(key, None))
        await asyncio.shield(loading)

    async def _load(self, client: Any, key: tuple[int, int]) -> None:
        await client.execute_command("FUNCTION", "LOAD", "REPLACE", self.text)
        self._loaded_at[key] = time.monotonic()

    async def prune(self, client: Any) -> list[str]:
        """Delete the libraries of other versions of the code (``engagementd_<v>`` but this one), on every
        primary; ``engagementd migrate`` does at each deploy. A process of an older version still running
        then meets "Function not found" and loads its own again, once: at most the previous version's
        library outlives a deploy, until the next one. Other libraries are left alone. Returns the names
        deleted (once per primary that had them)."""
        deleted, pattern = [], f"{LIBRARY_PREFIX}*"  # LIBRARYNAME takes a glob pattern
        for node in _primaries(client):
            listed = await client.execute_command("FUNCTION", "LIST", "LIBRARYNAME", pattern, **node)
            if isinstance(listed, dict):  # redis-py's cluster client: {node name: reply}
                (listed,) = listed.values()
            for entry in listed:
                if not isinstance(entry, dict):  # a flat reply: name, value, name, value...
                    entry = dict(zip(entry[::2], entry[1::2], strict=True))
                name = entry.get("library_name", entry.get(b"library_name"))
                name = name.decode() if isinstance(name, bytes) else name
                if not name.startswith(LIBRARY_PREFIX) or name == self.name:
                    continue
                try:
                    await client.execute_command("FUNCTION", "DELETE", name, **node)
                except ResponseError as exc:
                    if "library not found" not in str(exc).lower():  # deleted meanwhile: as good
                        raise
                deleted.append(name)
        return deleted


def _primaries(client: Any) -> list[dict[str, Any]]:
    """The ``execute_command`` options that address each primary in turn (one item, none, on one Redis)."""
    if hasattr(client, "get_primaries"):
        return [{"target_nodes": node} for node in client.get_primaries()]
    return [{}]


def _parts(name: str) -> tuple[list[str], list[str], str]:
    """A script file's flags (from its shebang), included helpers, and body (shebang and includes out)."""
    text = _file(name)
    shebang = _SHEBANG.match(text)
    flags = shebang.group(1).split(",") if shebang and shebang.group(1) else []
    body = text[shebang.end() :] if shebang else text
    return flags, _INCLUDE.findall(body), _INCLUDE.sub("", body).rstrip("\n")


def _admin(client: Any) -> Any:
    """The client for commands routed to every node, not by key (a Pipeliner's own client)."""
    return getattr(client, "admin_client", client)


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    text: str
    sha: str
    library: Library | None = field(default=None, compare=False, repr=False)
    function: str = ""  # its name in the library ("" without one: called by EVALSHA)

    @classmethod
    def load(cls, name: str, library: Library | None = None) -> LuaScript:
        text = source(name)
        function = library.function(name) if library is not None else ""
        return cls(name, text, hashlib.sha1(text.encode()).hexdigest(), library, function)

    def _command(self, keys: Sequence[KeyT]) -> tuple[Any, ...]:
        if self.function:
            return ("FCALL", self.function, len(keys))
        return ("EVALSHA", self.sha, len(keys))

    async def _loaded(self, client: Any, since: float) -> bool:
        """After "Function not found" or NOSCRIPT of a call sent at ``since``: load the library; False if
        that failed (or there is none), and the call is then made with EVAL."""
        if self.library is None:
            return False
        try:
            await self.library.ensure(_admin(client), since)
        except ResponseError:  # refused (at maxmemory, say): EVAL runs the same script without it
            return False
        return True

    async def __call__(self, client: Any, keys: Sequence[KeyT], args: Sequence[ArgT]) -> Any:
        sent = time.monotonic()
        try:
            return await client.execute_command(*self._command(keys), *keys, *args)
        except (NoScriptError, ResponseError) as exc:
            if not (isinstance(exc, NoScriptError) or function_missing(exc)):
                raise
        if await self._loaded(client, sent):
            try:
                return await client.execute_command(*self._command(keys), *keys, *args)
            except ResponseError as exc:
                if not function_missing(exc):
                    raise
        return await client.execute_command("EVAL", self.text, len(keys), *keys, *args)

    async def call_many(
        self, client: Any, calls: Sequence[tuple[Sequence[KeyT], Sequence[ArgT]]], *, raw: bool = False
    ) -> list[Any]:
        """Run many calls in one pipelined round trip; calls that met "Function not found" are
        re-sent once the library is loaded (with EVAL should loading fail).

        Errors other than those are returned in place of results, one per call, so the caller
        decides which calls to retry. Connection errors raise. ``raw``: replies are not decoded
        (scripts that return binary data).
        """
        return await self._all(client, calls, lambda commands: _pipelined(client, commands, raw))

    async def call_all(
        self, pipeliner: Any, calls: Sequence[tuple[Sequence[KeyT], Sequence[ArgT]]]
    ) -> list[Any]:
        """``call_many`` through an auto-pipeliner (daemon/pipeliner.py): each call is one future, and
        the calls leave together with whatever else the process sends meanwhile (cheaper per call than
        a redis-py pipeline). Errors in place, unloaded functions handled, as ``call_many``."""
        return await self._all(pipeliner, calls, lambda commands: _gathered(pipeliner, commands))

    async def _all(
        self,
        client: Any,
        calls: Sequence[tuple[Sequence[KeyT], Sequence[ArgT]]],
        send: Callable[[list[tuple[Any, ...]]], Awaitable[list[Any]]],
    ) -> list[Any]:
        sent = time.monotonic()
        results = await send([(*self._command(k), *k, *a) for k, a in calls])
        missing = [i for i, r in enumerate(results) if _unloaded(r)]
        if missing and await self._loaded(client, sent):
            again = await send([(*self._command(calls[i][0]), *calls[i][0], *calls[i][1]) for i in missing])
            for i, r in zip(missing, again, strict=True):
                results[i] = r
            missing = [i for i in missing if _unloaded(results[i])]
        if missing:
            again = await send(
                [("EVAL", self.text, len(calls[i][0]), *calls[i][0], *calls[i][1]) for i in missing]
            )
            for i, r in zip(missing, again, strict=True):
                results[i] = r
        return results


def _unloaded(result: Any) -> bool:
    return isinstance(result, NoScriptError) or function_missing(result)


async def _gathered(pipeliner: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    results = list(
        await asyncio.gather(*(pipeliner.execute_command(*c) for c in commands), return_exceptions=True)
    )
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, Exception):
            raise r  # cancelled: not an answer
    return results


async def _pipelined(client: Any, commands: Sequence[tuple[Any, ...]], raw: bool = False) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    options = {NEVER_DECODE: []} if raw else {}
    for command in commands:
        # execute_command, not pipe.evalsha(): redis-py's cluster pipeline refuses the named methods
        # for scripts but routes EVAL/EVALSHA/FCALL by their keys' slot.
        pipe.execute_command(*command, **options)
    return list(await pipe.execute(raise_on_error=False))


@dataclass(frozen=True, slots=True)
class Scripts:
    apply_views: LuaScript
    set_reaction: LuaScript
    set_subscription: LuaScript
    add_share: LuaScript
    count_comments: LuaScript
    clear_reactions: LuaScript
    clear_subscriptions: LuaScript
    rate_limit: LuaScript
    capture_batch: LuaScript
    finish_batch: LuaScript
    release_lease: LuaScript
    take_lease: LuaScript
    reconcile_live: LuaScript
    claim_idempotency: LuaScript
    capture_uniques: LuaScript
    record_history: LuaScript
    clear_history: LuaScript
    trim_history: LuaScript
    begin_consumed: LuaScript
    finish_consumed: LuaScript
    take_journal: LuaScript
    sweep_records: LuaScript
    finish_uniques: LuaScript
    read_counts: LuaScript
    seed_cold: LuaScript
    settle_fallbacks: LuaScript
    forget_pairs: LuaScript
    read_cold: LuaScript
    prepare_rows: LuaScript
    merge_rows: LuaScript
    top_views: LuaScript
    read_daily: LuaScript

    @classmethod
    def load(cls) -> Scripts:
        library = _shared_library(tuple(cls.__slots__))
        return cls(**{name: LuaScript.load(name, library) for name in cls.__slots__})  # type: ignore[arg-type]


@functools.cache
def _shared_library(names: tuple[str, ...]) -> Library:
    return Library(names)
