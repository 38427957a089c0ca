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
scores of the cases scored with 1..W, W+1..2W, ... edits in the model (not a running mean).

    python benchmarks/bench_lifelong.py --out /tmp/lifelong [--methods ft-llm mend] [--limit 200]
    python benchmarks/bench_lifelong.py --out /tmp/lifelong --methods grace wise --gaps 10 --limit 90 \
        --split test --window 20
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from editors import run as runs
from editors.report import score_table
from editors.run_dir import PREDICTIONS_PARQUET, RunSettings
from metric.kebench import score_predictions

GAPS = (10, 20, 50, 100)


def window_table(predictions: Path, gap: int, window: int) -> str:
    """Token scores of the cases scored with edits in ``(k * window, (k + 1) * window]``, a row per window."""
    table = pq.read_table(predictions)
    case_ids = list(dict.fromkeys(table.column("case_id").to_pylist()))
    windows: dict[int, list[str]] = {}
    for index, case_id in enumerate(case_ids):
        windows.setdefault((index + gap) // window, []).append(case_id)  # case index scored with index + 1 + gap edits
    results = {}
    for number, ids in sorted(windows.items()):
        part = table.filter(pc.is_in(table.column("case_id"), value_set=pa.array(ids)))
        label = f"edits {max(number * window, gap) + 1}-{(number + 1) * window} ({len(ids)} cases)"
        results[label] = {"token": score_predictions(part, protocol="token", bootstrap=0)}
    return score_table(results, "token")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", nargs="+", default=["ft-llm", "mend"])
    parser.add_argument("--gaps", nargs="+", type=int, default=list(GAPS))
    parser.add_argument("--limit", type=int, default=200, help="cases scored per run (the reference: 200)")
    parser.add_argument("--split", default="train", help="split to edit (default train: the test split has 100 cases)")
    parser.add_argument("--window", type=int, default=0, help="also print the scores per window of this many edits")
    args = parser.parse_args()
    for method in args.methods:
        started = time.perf_counter()
        settings = RunSettings(method=method, out=args.out / method, split=args.split, limit=args.limit, bootstrap=0)
        root = runs.lifelong(settings, args.gaps)
        print(f"\n{method} on the default world's {args.split} split, {args.limit} cases scored per gap "
              f"({time.perf_counter() - started:.0f} s):\n")
        print((root / runs.LIFELONG_TABLE).read_text())
        print(f"curves: {root / runs.LIFELONG_PLOT}")
        for gap in args.gaps if args.window > 0 else ():
            print(f"\n{method}, gap {gap}, per window of {args.window} edits:\n")
            print(window_table(root / f"gap-{gap}" / PREDICTIONS_PARQUET, gap, args.window))


if __name__ == "__main__":
    main()
