"""The Lua scripts of the Redis core, one file per atomic operation.

Each script is loaded once with ``importlib.resources`` and called by SHA. ``LuaScript`` reloads itself
when Redis answers NOSCRIPT (after ``SCRIPT FLUSH`` or a restart), both for single calls and for
pipelined batches of calls.

A script may open with Redis 7's shebang line (``#!lua flags=allow-oom``: it runs while Redis is at
``maxmemory``) and may use the helpers of ``lua/lib/<name>.lua`` by a line ``-- @include <name>``, which
loading replaces with that file: one definition of the cold-key protocol, records and leases for every
script that needs them (Redis has no ``require``).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.client import NEVER_DECODE
from redis.exceptions import NoScriptError

KeyT = str
ArgT = str | int | bytes


_INCLUDE = re.compile(r"^-- @include (\w+)$", re.MULTILINE)


def source(name: str) -> str:
    """The text sent to Redis: the script's file with its ``-- @include`` lines replaced."""
    text = resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda m: _library(m.group(1)), text)


def _library(name: str) -> str:
    return resources.files(__name__).joinpath("lib", f"{name}.lua").read_text(encoding="utf-8").rstrip("\n")


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    text: str
    sha: str

    @classmethod
    def load(cls, name: str) -> LuaScript:
        text = source(name)
        return cls(name, text, hashlib.sha1(text.encode()).hexdigest())

    async def __call__(self, client: Any, keys: Sequence[KeyT], args: Sequence[ArgT]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.text, len(keys), *keys, *args)

    async def call_many(
        self, client: Any, calls: Sequence[tuple[Sequence[KeyT], Sequence[ArgT]]], *, raw: bool = False
    ) -> list[Any]:
        """Run many calls in one pipelined round trip; calls that met NOSCRIPT are re-sent with EVAL.

        Errors other than NOSCRIPT are returned in place of results, one per call, so the caller
        decides which calls to retry. Connection errors raise. ``raw``: replies are not decoded
        (scripts that return binary data).
        """
        results = await _pipelined(client, [("evalsha", self.sha, keys, args) for keys, args in calls], raw)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            retried = await _pipelined(client, [("eval", self.text, *calls[i]) for i in missing], raw)
            for i, r in zip(missing, retried, strict=True):
                results[i] = r
        return results

    async def call_all(
        self, pipeliner: Any, calls: Sequence[tuple[Sequence[KeyT], Sequence[ArgT]]]
    ) -> list[Any]:
        """``call_many`` through an auto-pipeliner (daemon/pipeliner.py): each call is one future, and
        the calls leave together with whatever else the process sends meanwhile (cheaper per call than
        a redis-py pipeline). Errors in place, NOSCRIPT re-sent with EVAL, as ``call_many``."""
        results = list(
            await asyncio.gather(
                *(pipeliner.evalsha(self.sha, len(k), *k, *a) for k, a in calls), return_exceptions=True
            )
        )
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            retried = await asyncio.gather(
                *(pipeliner.eval(self.text, len(calls[i][0]), *calls[i][0], *calls[i][1]) for i in missing),
                return_exceptions=True,
            )
            for i, r in zip(missing, retried, strict=True):
                results[i] = r
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, Exception):
                raise r  # cancelled: not an answer
        return results


async def _pipelined(
    client: Any, calls: Sequence[tuple[str, str, Sequence[KeyT], Sequence[ArgT]]], raw: bool = False
) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    options = {NEVER_DECODE: []} if raw else {}
    for command, script, keys, args in calls:
        # execute_command, not pipe.evalsha(): redis-py's cluster pipeline refuses the named methods
        # for scripts but routes EVAL/EVALSHA by their keys' slot.
        pipe.execute_command(command.upper(), script, len(keys), *keys, *args, **options)
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
        return cls(**{name: LuaScript.load(name) for name in cls.__slots__})  # type: ignore[arg-type]
