"""The report: machine information, the summary table, and the bulk-matrix table."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from loadtest.flushbench import TARGET as TARGET_FLUSH
from loadtest.likes import TARGET_BARE, TARGET_NAIVE
from loadtest.live import GOAL_SHARE
from loadtest.procs import REPO
from loadtest.single import EXACT_VIEWS
from loadtest.wrkrun import PACED_CONNECTIONS


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with contextlib.suppress(OSError):
        models = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        info["cpu"] = models[0] if models else None
    with contextlib.suppress(Exception):
        import granian

        info["granian"] = granian.__version__
    with contextlib.suppress(Exception):
        info["wrk"] = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split(" [")[0]
    with contextlib.suppress(Exception):
        info["git"] = (
            subprocess.run(
                ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True
            ).stdout.strip()
            or None
        )
    return info


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def summary(out: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str]] = []
    s = out.get("single")
    if s and s.get("rounds"):
        rows.append(("single: bare app req/s (median)", f"{s['bare_median_rps']:,.0f}", "calibration", "-"))
        rows.append(
            ("single: bare server's CPU share (median)", f"{s['bare_median_cpu_share']:.2f}", "~1.0", "-")
        )
        if "real_median_rps" in s:
            rows.append(("single: engagementd req/s (median)", f"{s['real_median_rps']:,.0f}", "", "-"))
            rows.append(
                ("single: engagementd CPU share (median)", f"{s['real_median_cpu_share']:.2f}", "~1.0", "-")
            )
            rows.append(
                (
                    "single: ratio real/bare (median)",
                    f"{s['ratio_median']:.3f}",
                    ">= 0.85",
                    verdict(s["ratio_median"] >= 0.85),
                )
            )
            if s.get("cpu_ratio_median") is not None:
                rows.append(
                    (
                        "single: ratio per server CPU-second (median)",
                        f"{s['cpu_ratio_median']:.3f}",
                        "(noise check)",
                        "-",
                    )
                )
            ex = s.get("exact_count", {})
            rows.append(
                (
                    "single: exact count (N views = 202s = Redis)",
                    f"{ex.get('counted_in_redis')}/{ex.get('answered_202')}",
                    f"{EXACT_VIEWS}",
                    verdict(ex.get("ok")),
                )
            )
        rows.append(
            ("single: run valid (no non-2xx, counts)", str(s.get("valid")), "True", verdict(s.get("valid")))
        )
    rows += likes_rows(out.get("likes"))
    rows += flush_rows(out.get("flush"))
    for b in (out.get("bulk"), out.get("bulk_users")):
        if not (b and b.get("rounds")):
            continue
        # The default shape keeps the old labels; another one is named in each label.
        items, ids = b.get("items", "mixed"), b.get("ids", "uniform")
        shape = "" if (items, ids) == ("mixed", "uniform") else f" ({items}, {ids})"
        if b.get("columnar"):
            shape += " columnar"
        rows.append(
            (
                f"bulk{shape}: events/s (median)",
                f"{b['median_events_per_s']:,.0f}",
                ">= 1,000,000",
                verdict(b["median_events_per_s"] >= 1_000_000),
            )
        )
        if b.get("median_events_per_server_cpu_s"):
            rows.append(
                (
                    f"bulk{shape}: events per server CPU-second (median)",
                    f"{b['median_events_per_server_cpu_s']:,.0f}",
                    "",
                    "-",
                )
            )
        rows.append((f"bulk{shape}: run valid", str(b.get("valid")), "True", verdict(b.get("valid"))))
    bm = out.get("bulk_matrix")
    if bm and "valid" in bm:
        rows.append(("bulk-matrix: all runs valid", str(bm["valid"]), "True", verdict(bm["valid"])))
    v = out.get("viral")
    if v and "commands_per_1000_views" in v:
        rows.append(("viral: views/s", f"{v['views_per_s']:,.0f}", "", "-"))
        rows.append(
            (
                "viral: Redis commands per 1,000 views",
                f"{v['commands_per_1000_views']:.2f}",
                "<= 10",
                verdict(v["commands_per_1000_views"] <= 10),
            )
        )
        rows.append(("viral: run valid (all counted)", str(v.get("valid")), "True", verdict(v.get("valid"))))
        f = v.get("flush", {})
        rows.append(
            (
                "flush: content_counters writes for 1 item",
                str(f.get("content_counters_writes")),
                "1",
                verdict(f.get("content_counters_writes") == 1),
            )
        )
        pre = v.get("pre_flush", {})
        rows.append(
            (
                "flush: earlier runs' rows (reported / written)",
                f"{pre.get('rows_reported')} / {pre.get('content_counters_writes')}",
                "equal",
                verdict(pre.get("rows_reported") == pre.get("content_counters_writes")),
            )
        )
    rows += consume_rows(out.get("consume"))
    rows += reads_rows(out.get("reads"))
    rows += cold_rows(out.get("cold"))
    rows += live_rows(out.get("live"))
    for name, err in out.get("errors", {}).items():
        rows.append((f"{name}: ERROR", err.splitlines()[0][:60] if err else "", "", "FAIL"))
    m = out["machine"]
    head = (
        f"engagementd load benchmark  {m['time']}  nproc={m['nproc']}  load avg start "
        f"{' '.join(f'{x:.2f}' for x in m['loadavg_start'])}  end "
        f"{' '.join(f'{x:.2f}' for x in m.get('loadavg_end', []))}"
    )
    lines = [head, "", *scenario_table(out), "", *table(("measure", "value", "target", ""), rows)]
    if bm and "valid" in bm:
        lines += ["", matrix_table(bm)]
    return "\n".join(lines)


def consume_rows(c: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """The consume part: events/s of the bare loop and of engagementd consume, their ratio."""
    if not c or not c.get("rounds"):
        return []
    ids = c.get("ids", "uniform")
    return [
        (f"consume ({ids}): bare loop events/s (median)", f"{c['bare_median_eps']:,.0f}", "calibration", "-"),
        (
            f"consume ({ids}): engagementd events/s (median)",
            f"{c['real_median_eps']:,.0f}",
            ">= 100,000",
            verdict(c["real_median_eps"] >= 100_000),
        ),
        (f"consume ({ids}): ratio engagementd/bare (median)", f"{c['ratio_median']:.3f}", "", "-"),
        (
            f"consume ({ids}): events per consumer CPU-second",
            f"{c['real_events_per_cpu_s_median']:,.0f}",
            "(noise check)",
            "-",
        ),
        (f"consume ({ids}): Redis CPU-us per event", f"{c['redis_us_per_event_median']:.2f}", "", "-"),
    ]


def reads_rows(r: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """The reads part: items/s through the single and the batch stats endpoints, their ratio, latencies."""
    if not r or not r.get("rounds"):
        return []
    rows = [
        ("reads: single stats items/s (median)", f"{r['single_items_per_s_median']:,.0f}", "", "-"),
        ("reads: batch stats (50 ids) items/s (median)", f"{r['batch_items_per_s_median']:,.0f}", "", "-"),
        (
            "reads: ratio batch/single (median)",
            f"{r['ratio_median']:.2f}",
            ">= 10",
            verdict(r["ratio_median"] >= 10),
        ),
    ]
    for name, lat in r.get("latency", {}).items():
        rows.append((f"reads: {name} p50 / p99 us", f"{lat['p50_us']:,.0f} / {lat['p99_us']:,.0f}", "", "-"))
    rows.append(("reads: runs valid (no non-2xx)", str(r.get("valid")), "True", verdict(r.get("valid"))))
    return rows


def cold_rows(c: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """The cold part: per kind, hot and cold latency, their p50 difference, Postgres reads per request."""
    if not c or "stats" not in c or "hot_p50_us_median" not in c.get("stats", {}):
        return []
    rows: list[tuple[str, str, str, str]] = []
    names = {"stats": "GET stats", "like": "POST like"}
    for kind, name in names.items():
        k = c[kind]
        for temp in ("hot", "cold"):
            rows.append(
                (
                    f"cold: {name} {temp} p50 / p99 (median)",
                    f"{k[f'{temp}_p50_us_median']:,.0f} / {k[f'{temp}_p99_us_median']:,.0f} us",
                    "",
                    "-",
                )
            )
            rows.append(
                (
                    f"cold: {name} {temp} req/s, 1 connection (median)",
                    f"{k[f'{temp}_requests_per_s_median']:,.0f}",
                    "",
                    "-",
                )
            )
        rows.append(
            (f"cold: {name} cold - hot at p50", f"{k['p50_cold_minus_hot_us_median']:+,.0f} us", "", "-")
        )
        rows.append(
            (
                f"cold: {name} Postgres acquires / SELECTs per cold req",
                f"{k['cold_acquires_per_request']:.3f} / {k['cold_selects_per_request']:.3f}",
                "1 / 1",
                verdict(k["one_read_per_cold_request"]),
            )
        )
        if k.get("cold_select_exec_us_per_request") is not None:
            rows.append(
                (
                    f"cold: {name} Postgres exec per cold req: SELECTs / reset",
                    f"{k['cold_select_exec_us_per_request']:,.0f} / "
                    f"{k['cold_reset_exec_us_per_request']:,.0f} us",
                    "",
                    "-",
                )
            )
        if k.get("connections_retired"):
            rows.append(
                (
                    f"cold: {name} pool connections retired (max_queries)",
                    str(k["connections_retired"]),
                    "",
                    "-",
                )
            )
        if k.get("cold_load_mean_us") is not None:
            rows.append(
                (f"cold: {name} store's Postgres read, mean", f"{k['cold_load_mean_us']:,.0f} us", "", "-")
            )
        rows.append(
            (
                f"cold: {name} Postgres statements, hot",
                str(k["hot_statements"]),
                "0",
                verdict(k["hot_statements"] == 0),
            )
        )
    cons = c.get("consistency", {})
    rows.append(
        (
            "cold: like items with 2 likes in Postgres",
            f"{cons.get('items_with_2_likes')}/{cons.get('items')}",
            "all",
            verdict(cons.get("ok")),
        )
    )
    rows.append(
        ("cold: run valid (answers, keys, reads)", str(c.get("valid")), "True", verdict(c.get("valid")))
    )
    return rows


def live_rows(lv: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """The live part: delay from a view batch to the WebSocket clients, memory per connection, Redis."""
    if not lv or lv.get("delay_p50_ms") is None:
        return []
    interval = lv["interval_ms"]
    share = lv["within_2x_interval_share"]
    cmds = lv["redis_commands_per_s"]
    c = lv["scenarios"]["c"]
    rows = [
        (
            f"live: {lv['clients']:,} clients, {lv['items']} items: delay p50 / p99 / max",
            f"{lv['delay_p50_ms']:,.0f} / {lv['delay_p99_ms']:,.0f} / {lv['delay_max_ms']:,.0f} ms",
            "",
            "-",
        ),
        (
            f"live: share within 2 x {interval} ms",
            f"{share:.2%}",
            f">= {GOAL_SHARE:.0%}",
            verdict(share >= GOAL_SHARE),
        ),
        ("live: rounds missed (client, round)", str(lv["missed"]), "0", verdict(lv["missed"] == 0)),
        ("live: api worker RSS per connection", f"{lv['rss_per_connection_kib']:.1f} KiB", "", "-"),
        (
            f"live: Redis commands/s, clients 0 / 1 / {lv['items']:,} / {lv['clients']:,}",
            " / ".join(f"{cmds.get(k) or 0:,.1f}" for k in ("none", "a", "b", "c")),
            "",
            "-",
        ),
    ]
    per_tick = lv.get("live_commands_per_tick") or {}
    if per_tick.get("b") is not None:
        rows.append(
            (
                f"live: Redis commands per live read, clients 1 / {lv['items']:,} / {lv['clients']:,}",
                " / ".join(f"{per_tick.get(k) or 0:,.1f}" for k in ("a", "b", "c")),
                "",
                "-",
            )
        )
    if cmds.get("b"):
        ratio = (cmds.get("c") or 0) / cmds["b"]
        rows.append(
            (
                f"live: Redis commands/s, {lv['clients']:,} clients / {lv['items']:,}",
                f"{ratio:.3f}",
                "~1 (0.9-1.1)",
                verdict(0.9 <= ratio <= 1.1),
            )
        )
    rows.append(
        (
            "live: fan-out spread max / client loop lag max",
            f"{c.get('fanout_spread_ms_max') or 0:,.0f} / {c.get('client_loop_lag_max_ms', 0):,.0f} ms",
            "(noise check)",
            "-",
        )
    )
    rows.append(
        ("live: run valid (all connected, exact)", str(lv.get("valid")), "True", verdict(lv.get("valid")))
    )
    return rows


def _median_of(rounds: list[dict[str, Any]], kind: str | None, key: str) -> float | None:
    """The median of ``key`` over the rounds (of the server ``kind`` in each round, or the round)."""
    values = [(r[kind] if kind else r).get(key) for r in rounds if (r.get(kind) if kind else r)]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


SCENARIO_HEADER = (
    "scenario",
    "rate",
    "p50 ms",
    "p99 ms",
    "reference (same run)",
    "ref rate",
    "ratio",
    "goal",
)


def scenario_rows(out: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per scenario measured: its rate and latency (wrk's, at saturation), its reference in the
    same run and the ratio, medians of the rounds (issue 19's table; the README shows the latest)."""
    rows: list[tuple[str, ...]] = []
    s = out.get("single")
    if s and s.get("rounds") and "real_median_rps" in s:
        rows.append(
            (
                "single view (req/s)",
                f"{s['real_median_rps']:,.0f}",
                _ms(_median_of(s["rounds"], "real", "latency_p50_ms")),
                _ms(_median_of(s["rounds"], "real", "latency_p99_ms")),
                "bare Starlette route",
                f"{s['bare_median_rps']:,.0f}",
                f"{s['ratio_median']:.3f}",
                ">= 0.9",
            )
        )
    lk = out.get("likes")
    if lk and "real_median_rps" in lk:
        for kind, name, ratio in (
            ("real", "like/unlike (req/s)", "ratio_bare_median"),
            ("limited", "like/unlike, rate limits on (req/s)", "ratio_limited_bare_median"),
        ):
            if f"{kind}_median_rps" in lk:
                rows.append(
                    (
                        name,
                        f"{lk[f'{kind}_median_rps']:,.0f}",
                        _ms(lk.get(f"{kind}_median_p50_ms")),
                        _ms(lk.get(f"{kind}_median_p99_ms")),
                        "bare like route",
                        f"{lk['bare_median_rps']:,.0f}",
                        f"{lk[ratio]:.3f}",
                        f">= {TARGET_BARE}",
                    )
                )
    paced = [("single view at ~half the peak", (s or {}).get("paced"))]
    paced += [
        (f"{name} at ~half the peak", ((lk or {}).get("paced") or {}).get(kind))
        for kind, name in (
            ("real", "like/unlike"),
            ("limited", "like/unlike, rate limits on"),
        )
    ]
    for name, w in paced:
        if w:
            rows.append(
                (
                    f"{name} (req/s)",
                    f"{w['requests_per_s']:,.0f}",
                    _ms(w.get("latency_p50_ms")),
                    _ms(w.get("latency_p99_ms")),
                    f"paced: {w['pace_ms']} ms x {PACED_CONNECTIONS} connections",
                    f"peak {w['peak_rps']:,.0f}",
                    "-",
                    "p99 < 10 ms",
                )
            )
    for b in (out.get("bulk"), out.get("bulk_users")):
        if not (b and b.get("rounds")):
            continue
        rows.append(
            (
                f"bulk, {b.get('items', 'mixed')} items{' columnar' if b.get('columnar') else ''} (events/s)",
                f"{b['median_events_per_s']:,.0f}",
                _ms(_median_of(b["rounds"], None, "latency_p50_ms")),
                _ms(_median_of(b["rounds"], None, "latency_p99_ms")),
                "-",
                "-",
                "-",
                ">= 1,000,000/s",
            )
        )
    c = out.get("consume")
    if c and c.get("real_median_eps"):
        rows.append(
            (
                "consume (events/s)",
                f"{c['real_median_eps']:,.0f}",
                "-",
                "-",
                "bare confluent-kafka loop",
                f"{c['bare_median_eps']:,.0f}",
                f"{c['ratio_median']:.3f}",
                ">= 200,000/s",
            )
        )
    fl = out.get("flush")
    if fl and "ratio_median" in fl:
        rows.append(
            (
                "flush (rows/s)",
                f"{fl['flusher_median_rows_per_s']:,.0f}",
                "-",
                "-",
                "raw COPY + upsert",
                f"{fl['reference_median_rows_per_s']:,.0f}",
                f"{fl['ratio_median']:.3f}",
                f">= {TARGET_FLUSH}",
            )
        )
    return rows


def scenario_table(out: dict[str, Any]) -> list[str]:
    rows = scenario_rows(out)
    return table(SCENARIO_HEADER, rows) if rows else []


def scenario_markdown(out: dict[str, Any]) -> str:
    """The scenario table as Markdown, with the machine and the time (loadtest/results/table.md)."""
    rows = scenario_rows(out)
    m = out["machine"]
    lines = [
        f"`make bench` on {m['time']}, nproc={m['nproc']}, load average at start "
        f"{' '.join(f'{x:.2f}' for x in m['loadavg_start'])}; medians of the rounds; p50/p99 are wrk's at"
        " saturation.",
        "",
        "| " + " | ".join(SCENARIO_HEADER) + " |",
        "|" + "---|" * len(SCENARIO_HEADER),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    return "\n".join(lines) + "\n"


def flush_rows(fl: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """The flush part: rows/s of the flusher and of raw COPY + upsert, and their ratio."""
    if not fl or "ratio_median" not in fl:
        return []
    ratio = fl["ratio_median"]
    return [
        ("flush: flusher rows/s (median)", f"{fl['flusher_median_rows_per_s']:,.0f}", "", "-"),
        ("flush: raw COPY + upsert rows/s (median)", f"{fl['reference_median_rows_per_s']:,.0f}", "", "-"),
        (
            "flush: ratio flusher/reference (median)",
            f"{ratio:.3f}",
            f">= {TARGET_FLUSH}",
            verdict(ratio >= TARGET_FLUSH),
        ),
    ]


def likes_rows(lk: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """The likes part: req/s and CPU share of each server, the two ratios and their targets."""
    if not lk or "real_median_rps" not in lk:
        return []
    names = {
        "bare": "bare like route",
        "naive": "naive (PyJWT + EVALSHA)",
        "real": "engagementd",
        "limited": "engagementd, rate limits on",
    }
    rows: list[tuple[str, str, str, str]] = []
    for kind, name in names.items():
        if f"{kind}_median_rps" not in lk:
            continue
        rows.append((f"likes: {name} req/s (median)", f"{lk[f'{kind}_median_rps']:,.0f}", "", "-"))
        rows.append(
            (f"likes: {name} CPU share (median)", f"{lk[f'{kind}_median_cpu_share']:.2f}", "~1.0", "-")
        )
        if lk.get(f"{kind}_median_redis_cpu_us") is not None and kind != "bare":
            rows.append(
                (
                    f"likes: {name} Redis CPU-us per request",
                    f"{lk[f'{kind}_median_redis_cpu_us']:.1f}",
                    "",
                    "-",
                )
            )
        if lk.get(f"{kind}_median_p50_ms") is not None and lk.get(f"{kind}_median_p99_ms") is not None:
            rows.append(
                (
                    f"likes: {name} latency p50 / p99 at saturation (median)",
                    f"{lk[f'{kind}_median_p50_ms']:.2f} / {lk[f'{kind}_median_p99_ms']:.2f} ms",
                    "",
                    "-",
                )
            )
    if "ratio_limited_bare_median" in lk:
        ratio = lk["ratio_limited_bare_median"]
        rows.append(
            (
                "likes: ratio limited/bare (median)",
                f"{ratio:.3f}",
                f">= {TARGET_BARE}",
                verdict(ratio >= TARGET_BARE),
            )
        )
    for ref, target in (("bare", TARGET_BARE), ("naive", TARGET_NAIVE)):
        ratio = lk[f"ratio_{ref}_median"]
        rows.append(
            (f"likes: ratio real/{ref} (median)", f"{ratio:.3f}", f">= {target}", verdict(ratio >= target))
        )
        if lk.get(f"cpu_ratio_{ref}_median") is not None:
            rows.append(
                (
                    f"likes: ratio real/{ref} per server CPU-second",
                    f"{lk[f'cpu_ratio_{ref}_median']:.3f}",
                    "(noise check)",
                    "-",
                )
            )
    c = lk.get("consistency", {})
    rows.append(
        (
            "likes: Redis like counts = liked states",
            f"{c.get('likes_counted')}/{c.get('liked_states')}",
            "equal",
            verdict(c.get("ok")),
        )
    )
    rows.append(("likes: run valid (no non-2xx)", str(lk.get("valid")), "True", verdict(lk.get("valid"))))
    return rows


def table(header: tuple[str, ...], rows: list[tuple[str, ...]], left: int = 1) -> list[str]:
    """Rows of cells, the first ``left`` columns left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *rows]
    ]


def matrix_table(bm: dict[str, Any]) -> str:
    """One row per body shape: median events/s and events per server CPU-second."""
    rows = []
    for c in bm["combinations"]:
        per_cpu = c.get("median_events_per_server_cpu_s")
        rows.append(
            (
                c["items"],
                c["ids"],
                f"{c['pool']:,}",
                f"{c['median_distinct_ids']:,.0f}",
                f"{c['median_events_per_s']:,.0f}",
                f"{per_cpu:,.0f}" if per_cpu else "-",
                str(c["valid"]),
            )
        )
    head = (
        f"bulk matrix: median of {bm['runs']} round(s) of {bm['duration_s']} s each, "
        f"{bm['bodies']} bodies of {bm['events_per_body']:,} events, -c{bm['connections']}"
    )
    header = ("items", "ids", "id pool", "distinct ids", "events/s", "events per server CPU-s", "valid")
    return "\n".join([head, "", *table(header, rows, left=2)])
