"""Every script of ``lua/`` is called by one store method, with the KEYS and ARGV its header declares.

The store (daemon/store/) is the only code that calls scripts and the only place their KEYS and ARGV
are built. This test runs every store method once against a private Redis and Postgres, records each
script call on its way out, and checks it against the script's header comment: the number of KEYS
(``KEYS[n]`` lines; ``KEYS[n..]`` for any number more; ``(optional)`` for a last key that may be left
out) and of ARGV (``ARGV[n]``; ``then`` / ``ARGV[n..]`` / ``ARGV[2i]`` for a variable tail; the cold
keys' seeds, the last ARGV, sent only when a call is repeated after a load).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cold_fixtures import Stack

import lua
from consumer.store import _pack
from daemon import keys
from daemon.trending import window_of
from lua import LuaScript, Scripts

LUA_DIR = Path(lua.__file__).parent
_KEY = re.compile(r"^--\s+KEYS\[(\d+)\]", re.MULTILINE)
_ARGV = re.compile(r"ARGV\[(\d+)\](?!\s*\.\.)")
# a variable tail: "then ..." on an ARGV line or a line of its own, ARGV[n..], ARGV[i] / ARGV[2i]
_ARGV_TAIL = re.compile(r"^--\s+(?:then\b|ARGV\[.*\bthen\b)|ARGV\[\d+\.\.\]|ARGV\[\d*i", re.MULTILINE)


@dataclass(frozen=True)
class Header:
    keys: int  # KEYS declared one by one
    more_keys: bool  # KEYS[n..]: any number after them
    optional_last: bool  # the last declared key may be left out
    argv: int  # ARGV declared one by one
    argv_tail: bool  # a variable number after them
    seeds_last: bool  # the last declared ARGV is the cold keys' seeds (sent on a repeated call)

    def key_counts_ok(self, n: int) -> bool:
        if self.more_keys:
            return n >= self.keys
        return n == self.keys or (self.optional_last and n == self.keys - 1)

    def argv_counts_ok(self, n: int) -> bool:
        least = self.argv - (1 if self.seeds_last else 0)
        return n >= least if self.argv_tail else least <= n <= self.argv


def header(name: str) -> Header:
    """The script's leading comment, parsed (see the module docstring)."""
    lines = []
    for line in (LUA_DIR / f"{name}.lua").read_text(encoding="utf-8").splitlines():
        if line.startswith("#!"):
            continue
        if not line.startswith("--"):
            break
        lines.append(line)
    comment = "\n".join(lines)
    key_numbers = [int(n) for n in _KEY.findall(comment)]
    assert key_numbers, f"{name}.lua declares no KEYS"
    n_keys = max(key_numbers)
    argv_section = comment.split("-- ARGV:", 1)[-1].split("-- Returns", 1)[0]
    argv_numbers = [int(n) for n in _ARGV.findall(argv_section)]
    n_argv = max(argv_numbers, default=0)
    last_argv = next((line for line in argv_section.splitlines() if f"ARGV[{n_argv}]" in line), "")
    return Header(
        keys=n_keys,
        more_keys=bool(re.search(r"KEYS\[\d+\.\.\]", comment)),
        optional_last=bool(re.search(rf"KEYS\[{n_keys}\].*\(optional\)", comment)),
        argv=n_argv,
        argv_tail=bool(_ARGV_TAIL.search(argv_section)),
        seeds_last="seeds of missing cold keys" in last_argv,
    )


Call = tuple[str, int, int]  # script, KEYS sent, ARGV sent


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[Call]:
    calls: list[Call] = []
    one, many = LuaScript.__call__, LuaScript.call_many

    async def record_one(self: LuaScript, client: Any, script_keys: Any, args: Any) -> Any:
        calls.append((self.name, len(script_keys), len(args)))
        return await one(self, client, script_keys, args)

    async def record_many(self: LuaScript, client: Any, batch: Any, **kwargs: Any) -> Any:
        calls.extend((self.name, len(k), len(a)) for k, a in batch)
        return await many(self, client, batch, **kwargs)

    monkeypatch.setattr(LuaScript, "__call__", record_one)
    monkeypatch.setattr(LuaScript, "call_many", record_many)
    return calls


async def exercise(stack: Stack) -> None:
    """Every method of the store (and of the row filter, whose scripts live beside it), once."""
    store, settings, owner = stack.store, stack.settings, "test-owner"
    # a cold key read and seeded (before the row filter exists: it would prove the key new)
    missing = keys.counts_key(stack.shard("never"), "never")
    values, tokens = await store.read([missing])
    assert not values and missing in tokens
    await store.seed(tokens, {missing: {"views": 0}})
    assert await stack.rows().ensure(stack.pool) == settings.shards  # prepare_rows, merge_rows
    s = stack.shard("a")
    # writes
    assert (await store.set_reaction("a", "u1", "like", "k1"))[:2] == ["changed", 1]
    limited = ("like", 60_000, 1, "r1")  # the rate limit in the same call: admitted, then refused
    assert (await store.set_reaction("a", "u3", "like", "", limit=limited))[:2] == ["changed", 1]
    assert (await store.set_reaction("b", "u3", "like", "", limit=(*limited[:3], "r2")))[0] == "limited"
    assert len(await store.set_reactions([("a", "u2", "dislike", ""), ("b", "u2", "like", "")])) == 2
    assert (await store.set_subscription("cr", "u1", "subscribe", "k2"))[1] == 1
    assert (await store.add_share("a", "u1", "k3", "fp", 7, "add"))[0] == "added"
    assert await store.count_comments([("a", 1, 1)]) == 1
    await store.forget_comment_marks([("a", 1, 1)])
    buffer = stack.buffer()
    assert buffer.add("a", 5, "u1")
    assert await buffer.drain_once()  # apply_views
    assert (await store.claim(s, keys.view_record("a", "u1", "k4"), "claim", "fp", ""))[0] == "claimed"
    assert await store.record_history("u1", "a", "10.0|5")
    assert len(await store.rate_limit("u1", "like", 60_000, 100, "r1")) == 3
    # reads
    assert (await store.read_items(["a"], "u1", "20261207"))[0].counts is not None
    assert (await store.read_daily("a"))[1][1:] == [1, 5]  # a's one view of 5 s, pending
    assert (await store.top_views([window_of(s, "1h", keys.trend_bucket())], 5))[0][:2] == ["a", "1"]
    # the flusher's, the reconcile's
    captured, leased_elsewhere = await store.capture_batches(owner)
    assert captured and leased_elsewhere == []
    await store.batch_drains([shard for shard, _ in captured])
    await store.trim_history([(stack.shard("u1"), "u1", ["a", "0|10.0|5"])])
    await store.finish_batches([(shard, result[0]) for shard, result in captured], owner)
    await store.capture_uniques(range(settings.shards))
    await store.finish_uniques({s: ([], ["a"])})
    assert await store.take_lease(s, owner)
    assert await store.pending_batch(s) is None
    count = (keys.counts_key(s, "a"), "a", [("views", 1)])
    state = (keys.like_key(s, "a", "u1"), keys.state_field("a", "u1"), "1")
    assert (await store.reconcile_live(s, owner, ("", False), False, [count], [state]))[0] == "ok"
    pairs = ([keys.state_field("a", "u1")], [])
    assert (await store.settle_fallbacks(s, owner, ("", False), pairs, [keys.field("likes", "a")]))[0] == "ok"
    await store.release_lease(s, owner)
    await store.release_leases(owner)
    # the consumer's offsets
    ranges = [("t:0", 0, 9)]
    assert await store.begin_consumed("g", "batch-1", ranges, _pack([ranges, []]), _pack(ranges)) == []
    assert await store.take_journal("g", "batch-1") is not None
    assert await store.finish_consumed("g", "batch-1", ranges) is True  # a recovery took the journal
    # the purge's
    assert await store.clear_reactions("u1", ["a"]) == (1, 0)
    assert await store.clear_subscriptions("u1", ["cr"]) == 1
    await store.forget_pairs("u1", ["a"], ["cr"])
    await store.clear_history("u1")
    assert await store.sweep_records() >= 0


async def test_every_script_is_called_with_the_keys_and_argv_its_header_declares(
    stack: Stack, recorded: list[Call]
) -> None:
    await exercise(stack)
    called = {name for name, _, _ in recorded}
    scripts = {path.stem for path in LUA_DIR.glob("*.lua")}
    assert scripts == set(Scripts.__dataclass_fields__)  # one field of Scripts per file
    assert called == scripts, f"scripts no store method called: {sorted(scripts - called)}"
    wrong = []
    for name, n_keys, n_argv in sorted(set(recorded)):
        declared = header(name)
        if not (declared.key_counts_ok(n_keys) and declared.argv_counts_ok(n_argv)):
            wrong.append((name, n_keys, n_argv, declared))
    assert not wrong, wrong


def test_the_header_parser_reads_fixed_variable_optional_and_seeded_parts() -> None:
    assert header("set_reaction") == Header(8, False, True, 8, False, True)
    assert header("read_counts") == Header(2, False, False, 2, True, False)
    assert header("read_cold") == Header(2, True, False, 0, True, False)
    assert header("begin_consumed") == Header(4, False, False, 3, True, False)
    assert header("take_lease") == Header(1, False, False, 2, False, False)
    assert header("set_reaction").argv_counts_ok(7) and not header("set_reaction").argv_counts_ok(6)
    optional = Header(6, False, True, 0, False, False)  # a last key that may be left out
    assert optional.key_counts_ok(5) and optional.key_counts_ok(6) and not optional.key_counts_ok(4)
