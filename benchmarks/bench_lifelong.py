"""The lifelong curve: VLKEB's sequential-gap protocol for G in {10, 20, 50, 100}, FT-LLM and MEND.

On the default world and the tiny LLaVA (both built once and cached), each (method, G) is one
``kebench run --sequential-gap G`` run: the first ``--limit`` cases (the reference's 200) are scored,
case i after G further edits, and the G cases after them are edited only. The reference needs 200 + G
cases; the default world's test split has 100, so the runs read its 300-case *train* split (FT-LLM
trains nothing on it; MEND's editor was meta-trained on these cases, which flatters its first
scores: said beside the table). Prints one table per method (a row per G, token and generate
protocols) and writes ``OUT/METHOD/lifelong.png``.

    python benchmarks/bench_lifelong.py --out /tmp/lifelong [--methods ft-llm mend] [--limit 200]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from editors import run as runs
from editors.run_dir import RunSettings

GAPS = (10, 20, 50, 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", nargs="+", default=["ft-llm", "mend"])
    parser.add_argument("--gaps", nargs="+", type=int, default=list(GAPS))
    parser.add_argument("--limit", type=int, default=200, help="cases scored per run (the reference: 200)")
    parser.add_argument("--split", default="train", help="split to edit (default train: the test split has 100 cases)")
    args = parser.parse_args()
    for method in args.methods:
        started = time.perf_counter()
        settings = RunSettings(method=method, out=args.out / method, split=args.split, limit=args.limit, bootstrap=0)
        root = runs.lifelong(settings, args.gaps)
        print(f"\n{method} on the default world's {args.split} split, {args.limit} cases scored per gap "
              f"({time.perf_counter() - started:.0f} s):\n")
        print((root / runs.LIFELONG_TABLE).read_text())
        print(f"curves: {root / runs.LIFELONG_PLOT}")


if __name__ == "__main__":
    main()
