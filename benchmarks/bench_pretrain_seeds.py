"""How robust is a pretraining recipe? The default model's recipe (or, with ``--world lifelong``, the
lifelong world's, ``editors.defaults.WORLD_RECIPES``) over several seeds, and the first seed under a
perturbation of floating-point rounding (1 vs 2 threads: other reduction orders, so another
trajectory; ``--no-rounding-run`` leaves it out), each measured on the abilities the methods need and
on what they are needed for: IKE and SERAC Reliability on the first 20 test cases (token protocol).

    python benchmarks/bench_pretrain_seeds.py [--seeds 0 1 2 3 4] [--parallel 2] [--markdown FILE]
    python benchmarks/bench_pretrain_seeds.py --world lifelong --seeds 0 1 2 --no-rounding-run --out DIR

Each run is its own process (its own peak memory; two runs side by side on 2 cores); the
table gives per run each ability, the extra training the check asked for, IKE/SERAC Reliability,
time and peak RSS, then min / median / max over the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from editors.abilities import ABILITIES, MissingAbilityError  # noqa: E402  (torch-free)

COLUMNS = [ability.key for ability in ABILITIES]
SCORED_METHODS = ("ike", "serac")


def one_run(seed: int, threads: int, out: Path, cases: int, world: str) -> dict:
    """Pretrain on ``world`` with ``seed`` on ``threads`` threads, then IKE and SERAC on its first
    ``cases`` test cases."""
    import torch

    torch.set_num_threads(threads)
    from editors.defaults import world_recipe
    from editors.pretrain import pretrain
    from editors.run import run
    from editors.run_dir import RunSettings
    from kebench_hf.world import cached_world

    data = cached_world(world)
    started = time.perf_counter()
    try:
        summary = pretrain(data, out / "model", world_recipe(world, seed=seed))
    except MissingAbilityError as error:  # the model is saved all the same: measure what it does
        print(error, file=sys.stderr)
        summary = json.loads((out / "model" / "pretrain.json").read_text())
    result = {"seed": seed, "threads": threads, "pretrain_seconds": round(time.perf_counter() - started, 1),
              "extensions": summary["extensions"], "passed": summary["passed"], **summary["accuracy"]}
    for method in SCORED_METHODS:
        began = time.perf_counter()
        scores = run(RunSettings(method=method, out=out / method, model=str(out / "model"), data=str(data),
                                 limit=cases, generate=False, bootstrap=0))
        result[f"{method}_reliability"] = scores["token"]["scores"]["reliability"]
        result[f"{method}_seconds"] = round(time.perf_counter() - began, 1)
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def table(results: list[dict]) -> str:
    keys = [*COLUMNS, "ike_reliability", "serac_reliability", "extensions", "pretrain_seconds", "peak_rss_mib"]
    percent, scores = set(COLUMNS), {f"{method}_reliability" for method in SCORED_METHODS}
    lines = ["| run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]

    def cell(key: str, value: float | None) -> str:
        if value is None:
            return "-"
        if key in percent:
            return f"{100 * value:.1f}"
        return f"{value:.1f}" if key in scores else f"{value:g}"

    for result in results:
        name = f"seed {result['seed']}, {result['threads']} thread{'s' if result['threads'] > 1 else ''}"
        verdict = "passed" if result["passed"] else "**failed**"
        lines.append(f"| {name}: {verdict} | " + " | ".join(cell(key, result.get(key)) for key in keys) + " |")
    for label, reduce in (("min", min), ("median", statistics.median), ("max", max)):
        values = {key: [r[key] for r in results if r.get(key) is not None] for key in keys}
        lines.append(f"| **{label}** | " + " | ".join(cell(key, reduce(values[key]) if values[key] else None)
                                                      for key in keys) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--parallel", type=int, default=2, help="1-thread runs side by side")
    parser.add_argument("--cases", type=int, default=20, help="test cases IKE and SERAC are scored on")
    parser.add_argument("--world", default="default", help="the generated world pretrained on, with its recipe "
                        "(default: the default world and recipe; lifelong: editors.defaults.WORLD_RECIPES)")
    parser.add_argument("--no-rounding-run", action="store_true", help="leave out the first seed on 2 threads")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--out", type=Path, help="directory of the runs (default: a new temporary one); "
                        "runs finished there are kept, interrupted ones resume")
    parser.add_argument("--one", nargs=3, metavar=("SEED", "THREADS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        seed, threads, out = int(args.one[0]), int(args.one[1]), Path(args.one[2])
        result = one_run(seed, threads, out, args.cases, args.world)
        (out / "bench.json").write_text(json.dumps(result, indent=2))
        return

    root = args.out or Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    started = time.perf_counter()

    def launch(seed: int, threads: int) -> None:
        out = root / f"seed{seed}-threads{threads}"
        if (out / "bench.json").exists():  # finished in an earlier invocation with this --out
            return
        out.mkdir(parents=True, exist_ok=True)  # an interrupted run resumes from its checkpoint
        command = [sys.executable, __file__, "--one", str(seed), str(threads), str(out), "--cases", str(args.cases),
                   "--world", args.world]
        with (out / "log.txt").open("a") as log:
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False,
                                  env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        if done.returncode:
            print(f"run {out.name} failed (exit {done.returncode}); log: {out / 'log.txt'}", file=sys.stderr)

    # the last run: the first seed again on 2 threads, i.e. the same training with other rounding
    runs = [(seed, 1) for seed in args.seeds] + ([] if args.no_rounding_run else [(args.seeds[0], 2)])
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        list(pool.map(lambda run: launch(*run), runs))
    results = [json.loads((root / f"seed{s}-threads{t}" / "bench.json").read_text())
               for s, t in runs if (root / f"seed{s}-threads{t}" / "bench.json").exists()]
    report = (f"{len(results)} of {len(runs)} runs in {root}; wall {time.perf_counter() - started:.0f} s; "
              f"{args.parallel} runs side by side\n\n{table(results)}")
    print(report)
    if args.markdown:
        args.markdown.write_text(report + "\n")


if __name__ == "__main__":
    main()
