"""A/B of two (or more) checkouts of the project on the same machine, in the same run.

    python -m loadtest.ab OUTDIR TREE [TREE ...] --parts single likes bulk consume [--rounds 3]

Each TREE is a checkout with its own ``.venv`` (``make install`` in it; ``git worktree add`` makes
one). For every round, for every part, each tree runs ``python -m loadtest.bench --runs 1 --duration
10 --only <part>`` in turn, so that the trees share the machine's slow and fast moments. The JSON of
every run goes to OUTDIR; the summary prints each part's headline figures per tree: the median of the
rounds and every round's value.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

FIGURES = {
    "single": ["real_median_rps", "bare_median_rps", "ratio_median"],
    "likes": ["real_median_rps", "bare_median_rps", "ratio_bare_median", "ratio_naive_median"],
    "bulk": ["median_events_per_s"],
    "consume": ["real_median_eps", "bare_median_eps", "ratio_median", "redis_us_per_event_median"],
    "reads": ["single_items_per_s_median", "batch_items_per_s_median", "ratio_median"],
    "flush": ["flusher_median_rows_per_s", "reference_median_rows_per_s", "ratio_median"],
}


def run(out: Path, trees: list[Path], parts: list[str], rounds: int, duration: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for r in range(1, rounds + 1):
        for part in parts:
            for tree in trees:
                target = out / f"{tree.name}-{part}-{r}.json"
                cmd = [str(tree / ".venv/bin/python"), "-m", "loadtest.bench", "--runs", "1"]
                cmd += ["--duration", str(duration), "--only", part, "--output", str(target)]
                with open(target.with_suffix(".log"), "w") as log:
                    code = subprocess.run(cmd, cwd=tree, stdout=log, stderr=subprocess.STDOUT, check=False)
                print(f"round {r} {part} {tree.name}: exit {code.returncode}", flush=True)


def summary(out: Path) -> str:
    values: dict[tuple[str, str], dict[str, list[float]]] = {}
    for path in sorted(out.glob("*.json")):
        tree, part, _ = path.stem.rsplit("-", 2)
        section = json.loads(path.read_text()).get(part) or {}
        for name in FIGURES.get(part, []):
            if section.get(name) is not None:
                values.setdefault((part, name), {}).setdefault(tree, []).append(float(section[name]))
    lines = []
    for (part, name), trees in sorted(values.items()):
        cells = ", ".join(
            f"{tree} {statistics.median(v):,.3f} ({' '.join(f'{x:,.2f}' for x in v)})"
            for tree, v in trees.items()
        )
        lines.append(f"{part} {name}: {cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("trees", type=Path, nargs="+")
    parser.add_argument(
        "--parts", nargs="+", choices=sorted(FIGURES), default=["single", "likes", "bulk", "consume"]
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--summary-only", action="store_true", help="only summarise OUTDIR")
    ns = parser.parse_args(argv)
    if not ns.summary_only:
        run(ns.out, [t.resolve() for t in ns.trees], ns.parts, ns.rounds, ns.duration)
    print(summary(ns.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
