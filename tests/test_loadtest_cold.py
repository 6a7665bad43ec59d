"""The cold part of loadtest.bench: its pure helpers (no server): statement classes, percentiles,
/metrics parsing, and the verdict on Postgres reads per request."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # loadtest/ is not an installed package

from loadtest.cold_stats import classify, labelled, percentile, summarise  # noqa: E402

_RESET = Counter({"SELECT pg_advisory_unlock_all()": 3, "CLOSE ALL": 3, "UNLISTEN *": 3, "RESET ALL": 3})


def test_classify_counts_one_acquire_per_pool_reset_and_the_selects() -> None:
    delta = _RESET + Counter({"SELECT i.content_id, c.views FROM unnest($1::text[])": 3, "BEGIN": 1})
    assert classify(delta) == {"acquires": 3, "selects": 3, "other": 1}


def test_percentile_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([7], 99) == 7


def test_labelled_reads_every_kind() -> None:
    body = (
        b"# HELP engagement_cold_loads_total x\n"
        b'engagement_cold_loads_total{kind="counts"} 3.0\n'
        b'engagement_cold_loads_total{kind="like"} 2.0\n'
        b"engagement_cold_load_duration_seconds_count 2.0\n"
    )
    assert labelled(body, "engagement_cold_loads_total") == {"counts": 3.0, "like": 2.0}
    assert labelled(body, "engagement_cold_load_duration_seconds_count") == {"": 2.0}


def _phase(n: int, acquires: int, selects: int, other: int = 0, p50: float = 500.0) -> dict[str, Any]:
    return {
        "requests": n,
        "p50_us": p50,
        "p99_us": 2 * p50,
        "requests_per_s": 1e6 / p50,
        "acquires": acquires,
        "selects": selects,
        "other": other,
        "bad": 0,
        "keys_missing": 0,
        "retired": 0,
        "select_exec_us_per_request": 50.0,
        "reset_exec_us_per_request": 20.0,
        "statements": {},
    }


def _round(stats_cold: dict[str, Any], like_cold: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for kind, cold in (("stats", stats_cold), ("like", like_cold)):
        row[kind] = {
            "hot": _phase(100, 0, 0),
            "cold": cold,
            "metrics_delta": {"reads": 100.0 if kind == "like" else 0.0, "read_seconds": 0.1},
            "p50_cold_minus_hot_us": cold["p50_us"] - 500.0,
        }
    return row


def test_one_read_per_cold_request_is_the_verdict() -> None:
    good = {"rounds": [_round(_phase(100, 100, 100, p50=900), _phase(100, 100, 100, p50=1200))]}
    good["consistency"] = {"ok": True}
    summarise(good)
    assert good["valid"] and good["stats"]["one_read_per_cold_request"]
    assert good["like"]["cold_selects_per_request"] == 1.0
    assert good["stats"]["p50_cold_minus_hot_us_median"] == 400.0
    assert good["like"]["cold_load_mean_us"] == 1000.0

    # a cold like that read Postgres twice (two acquires), or loaded the new pair's state (a second
    # SELECT: the row filter did not prove it new), fails the part
    for acquires, selects in ((200, 200), (100, 200)):
        bad = {
            "rounds": [_round(_phase(100, 100, 100), _phase(100, acquires, selects))],
            "consistency": {"ok": True},
        }
        summarise(bad)
        assert not bad["like"]["one_read_per_cold_request"] and not bad["valid"]

    # a connection asyncpg retired (no reset statement) still counts as that request's acquire
    retired = _phase(100, 99, 100)
    retired["retired"] = 1
    ok = {"rounds": [_round(_phase(100, 100, 100), retired)], "consistency": {"ok": True}}
    summarise(ok)
    assert ok["like"]["one_read_per_cold_request"] and ok["like"]["connections_retired"] == 1
