"""The lifelong curve: VLKEB's sequential-gap protocol for G in {10, 20, 50, 100}, FT-LLM and MEND
by default, any sequential method with ``--methods`` (LoRA, GRACE, WISE, SERAC, KE...).

On the default world and the tiny LLaVA (both built once and cached), each (method, G) is one
``kebench run --sequential-gap G`` run: the first ``--limit`` cases (the reference's 200) are scored,
case i after G further edits, and the G cases after them are edited only. The reference needs 200 + G
cases; the default world's test split has 100, so the runs read its 300-case *train* split (FT-LLM
trains nothing on it; MEND's editor was meta-trained on these cases, which flatters its first
scores: said beside the table; WISE draws its out-of-scope examples from the train split too, so
score it on ``--split test``). Prints one table per method (a row per G, token and generate
protocols) and writes ``OUT/METHOD/lifelong.png``. ``--window W`` also prints, per G, the token
scores of the cases scored with 1..W, W+1..2W, ... edits in the model (not a running mean), and draws
them for every method in ``OUT/windows-gap-G-METHODS.png`` (a panel per score). ``--data lifelong`` edits
the ``lifelong`` world (1,010 test cases: 1,000 scored edits) with a tiny LLaVA pretrained on it (once, cached:
``editors.defaults.WORLD_RECIPES``, 2,497 s on two threads); ``--data full`` the ``full`` world
(3,174 test cases) with the default model, which never learnt its names; ``--set``
overrides a hyper-parameter of every method run (``kebench run --set``). ``--report-only`` runs
nothing and prints the window tables and curves of the runs already in ``OUT``, a run stopped before
its end (a time bound) up to the cases it finished.

    python benchmarks/bench_lifelong.py --out /tmp/lifelong [--methods ft-llm mend] [--limit 200]
    python benchmarks/bench_lifelong.py --out /tmp/lifelong --methods grace wise --gaps 10 --limit 90 \
        --split test --window 20
    python benchmarks/bench_lifelong.py --out /tmp/lifelong --methods grace wise --gaps 10 --limit 1000 \
        --split test --data lifelong --window 100 --no-generate
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from editors import run as runs
from editors.commands import parse_method_options
from editors.defaults import world_model
from editors.report import plot_score_curves, score_table, table_columns
from editors.run_dir import PREDICTIONS_JSONL, PREDICTIONS_PARQUET, RunSettings, finished_cases
from kebench_hf.world import SCALES, cached_world
from metric.kebench import score_predictions, to_table

GAPS = (10, 20, 50, 100)
#: the generated worlds a tiny model is pretrained on for this benchmark (once, cached); the full world
#: is too large for the tiny models to learn
PRETRAINED_WORLDS = ("default", "lifelong")


def predictions_table(run_dir: Path) -> pa.Table:
    """A run's predictions: its parquet when it finished, else the cases its ``predictions.jsonl`` holds
    (a run stopped at a time bound: the curve up to where it got)."""
    if (run_dir / PREDICTIONS_PARQUET).exists():
        return pq.read_table(run_dir / PREDICTIONS_PARQUET)
    records = finished_cases(run_dir / PREDICTIONS_JSONL).values()
    return to_table([row for record in records if not record["error"] for row in record["rows"]])


def window_scores(run_dir: Path, gap: int, window: int) -> dict[str, dict]:
    """Token scores of the cases scored with edits in ``(k * window, (k + 1) * window]``, by window label
    (each with the edits its cases were scored after, ``"edits"``: the window's last)."""
    table = predictions_table(run_dir)
    case_ids = list(dict.fromkeys(table.column("case_id").to_pylist()))
    windows: dict[int, list[str]] = {}
    for index, case_id in enumerate(case_ids):
        windows.setdefault((index + gap) // window, []).append(case_id)  # case index scored with index + 1 + gap edits
    results = {}
    for number, ids in sorted(windows.items()):
        part = table.filter(pc.is_in(table.column("case_id"), value_set=pa.array(ids)))
        last = min((number + 1) * window, len(case_ids) + gap)
        label = f"edits {max(number * window, gap) + 1}-{last} ({len(ids)} cases)"
        results[label] = {"token": score_predictions(part, protocol="token", bootstrap=0), "edits": last}
    return results


def plot_windows(curves: dict[str, dict[str, dict]], path: Path) -> Path:
    """A panel per score, each window's token score against the edits in the model, a line per method."""
    metrics = table_columns()[0]
    lines = {method: {name: [(w["edits"], w["token"]["scores"][name]) for w in windows.values()
                             if w["token"]["scores"][name] is not None] for name in metrics}
             for method, windows in curves.items()}
    return plot_score_curves(lines, path, "token score per window (%)", legend="lower left", marker="o", markersize=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", nargs="+", default=["ft-llm", "mend"])
    parser.add_argument("--gaps", nargs="+", type=int, default=list(GAPS))
    parser.add_argument("--limit", type=int, default=200, help="cases scored per run (the reference: 200)")
    parser.add_argument("--split", default="train", help="split to edit (default train: the test split has 100 cases)")
    parser.add_argument("--window", type=int, default=0, help="also print the scores per window of this many edits")
    parser.add_argument("--data", default="default",
                        help="a generated world (default; lifelong: 1,010 test cases; full) or a KEBench directory")
    parser.add_argument("--model", help="model directory (default: the tiny LLaVA pretrained on the generated world; "
                        "the full world has none, so the default world's)")
    parser.add_argument("--no-generate", action="store_true", help="token protocol only")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="hyper-parameter of every method run")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: the window tables and curves of the runs in OUT, stopped ones up to where they got")
    args = parser.parse_args()
    windows: dict[int, dict[str, dict]] = {gap: {} for gap in args.gaps}
    for method in args.methods if args.report_only else ():
        for gap in args.gaps:
            windows[gap][method] = window_scores(args.out / method / f"gap-{gap}", gap, args.window)
            print(f"\n{method}, gap {gap}, per window of {args.window} edits:\n")
            print(score_table(windows[gap][method], "token"), flush=True)
    for method in () if args.report_only else args.methods:
        data = str(cached_world(args.data)) if args.data in SCALES else args.data
        model = args.model or (str(world_model(args.data)) if args.data in PRETRAINED_WORLDS else None)
        started = time.perf_counter()
        settings = RunSettings(method=method, out=args.out / method, model=model, data=data, split=args.split, limit=args.limit,
                               bootstrap=0, generate=not args.no_generate, method_options=parse_method_options(args.set))
        root = runs.lifelong(settings, args.gaps)
        print(f"\n{method} on the {args.data} world's {args.split} split, {args.limit} cases scored per gap "
              f"({time.perf_counter() - started:.0f} s):\n", flush=True)
        print((root / runs.LIFELONG_TABLE).read_text())
        print(f"curves: {root / runs.LIFELONG_PLOT}")
        for gap in args.gaps if args.window > 0 else ():
            windows[gap][method] = window_scores(root / f"gap-{gap}", gap, args.window)
            print(f"\n{method}, gap {gap}, per window of {args.window} edits:\n")
            print(score_table(windows[gap][method], "token"), flush=True)
    for gap, curves in windows.items() if args.window > 0 else ():
        names = "-".join(curves)
        print(f"window curves: {plot_windows(curves, args.out / f'windows-gap-{gap}-{names}.png')}")


if __name__ == "__main__":
    main()
