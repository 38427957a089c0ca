"""The editing engine's GPU checks, as one script for a lent accelerator (docs/models.md, "GPU").

1. ``kebench run --method ft-llm --limit 20 --device cuda --dtype bfloat16`` on LLaVA-1.5-7B's shape
   (random weights, every real dimension: 7,063,427,072 parameters, built on the GPU in bfloat16):
   seconds per edit and peak GPU memory, from the run's ``run.json``.
2. ``kebench bench`` on the GPU: the 7B shape (FT-LLM, bfloat16: the score difference is reported)
   and the deep-narrow shape (every registered method that needs no training, float32: scores checked).
3. ``kebench run --processes 2`` (accelerate's launcher; one GPU: both processes share it) on the
   deep-narrow shape: each process's cases, time and peak memory.
4. ``kebench run --method ike --device-map auto --max-memory 0=8GiB,cpu=100GiB`` on the 7B shape: the
   model spread over the GPU and the CPU.

``python benchmarks/gpu_check.py --out DIR [--device cuda] [--shape llava-7b] [--limit 20]
[--bench-limit 5]``. Each step appends to ``DIR/report.md`` as it finishes and copies its run's
``run.json`` / ``scores.json`` there, so a step that fails or runs out of time loses no other's.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import logging
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from editors.bench import bench_methods, run_bench, shape_model
from editors.report import score_cells, table_columns
from editors.run import run
from editors.run_dir import RunSettings
from editors.runtime import device_name
from kebench_hf.world import default_world


def edit_run(out: Path, shape: str, data: Path, device: str, dtype: str, limit: int, method: str = "ft-llm",
             processes: int = 1, device_map: str | None = None, max_memory: str | None = None) -> str:
    """``method`` through ``kebench run`` on ``shape`` (in ``processes`` processes, or spread by
    ``device_map``): s/edit, peak memory and the six token scores."""
    started = time.perf_counter()
    model = shape_model(shape, data, device, getattr(torch, dtype))
    built = time.perf_counter() - started
    name = f"{shape}-{method}" + (f"-{processes}-processes" if processes > 1 else "") + ("-device-map" if device_map else "")
    run_dir = out / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    if processes > 1:  # launched as a user launches it: accelerate's launcher, a process per device
        command = [sys.executable, "-m", "kebench_hf.cli", "run", "--method", method, "--model", str(model),
                   "--data", str(data), "--out", str(run_dir), "--limit", str(limit), "--device", device,
                   "--dtype", dtype, "--processes", str(processes)]
        subprocess.run(command, check=True)
        scores = json.loads((run_dir / "scores.json").read_text())
    else:
        scores = run(RunSettings(method=method, out=run_dir, model=str(model), data=str(data), limit=limit,
                                 device=device, dtype=dtype, bootstrap=0, device_map=device_map, max_memory=max_memory))
    info = json.loads((run_dir / "run.json").read_text())
    for file in ("run.json", "scores.json"):
        shutil.copy(run_dir / file, out / f"{name}-{file}")
    shards = "".join(f"\nprocess {shard['process']} on {shard['device']}: {shard['cases']} cases in "
                     f"{shard['seconds']:.0f} s, peak {shard['peak_memory_mib']:.0f} MiB" for shard in info["shards"])
    placement = info.get("device_map")
    where = f"\ndevice map: {sorted(set(map(str, placement.values())))}" if placement else ""
    return "\n".join([
        f"model built/loaded from cache in {built:.0f} s: {model}{shards}{where}",
        "| shape | device | dtype | edits | s/edit | peak memory MiB | " + " | ".join(table_columns()[1]) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(table_columns()[1]),
        f"| {shape} | {info['device_name']} | {dtype} | {info['cases'] - info['failed_cases']} "
        f"| {info['seconds_per_edit']:.3f} | {info['peak_memory_mib']:.0f} | {score_cells(scores['token']['scores'])} |",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--shape", default="llava-7b", help="the large shape (default llava-7b)")
    parser.add_argument("--limit", type=int, default=20, help="edits of the FT-LLM run (default 20)")
    parser.add_argument("--bench-limit", type=int, default=5, help="cases per bench measurement (default 5)")
    parser.add_argument("--data", type=Path, help="KEBench directory (default: the default world)")
    parser.add_argument("--max-memory", default="0=8GiB,cpu=100GiB",
                        help="the --device-map step's bounds (default 0=8GiB,cpu=100GiB: part of a 7B model on the CPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    report = args.out / "report.md"
    data = args.data or default_world()
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}"
                         for name in ("torch", "transformers", "datasets", "pyarrow", "huggingface_hub"))
    report.write_text(f"# GPU check on {device_name(args.device)}\n\n{versions}\n")
    steps: list[tuple[str, Callable[[], str]]] = [
        (f"kebench run ft-llm, {args.shape}, {args.dtype}",
         lambda: edit_run(args.out, args.shape, data, args.device, args.dtype, args.limit)),
        (f"kebench bench ft-llm, {args.shape}, {args.dtype}",
         lambda: run_bench(["ft-llm"], args.bench_limit, [args.shape], args.device, args.dtype, data)),
        ("kebench bench (every method needing no training), deep-narrow, float32",
         lambda: run_bench(bench_methods(), 2 * args.bench_limit, ["deep-narrow"], args.device, "float32", data)),
        ("kebench run ft-llm --processes 2, deep-narrow, float32",
         lambda: edit_run(args.out, "deep-narrow", data, args.device, "float32", args.limit, processes=2)),
        (f"kebench run ike --device-map auto --max-memory {args.max_memory}, {args.shape}, {args.dtype}",
         lambda: edit_run(args.out, args.shape, data, args.device, args.dtype, args.limit, method="ike",
                          device_map="auto", max_memory=args.max_memory)),
    ]
    failures = 0
    for title, step in steps:
        started = time.perf_counter()
        try:
            body = step()
        except Exception:  # noqa: BLE001 -- a failed step is reported and the next one still runs
            failures += 1
            body = "FAILED\n```\n" + traceback.format_exc() + "```"
        gc.collect()  # the step's model (14 GB for llava-7b) is gone before the next loads its own
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        with report.open("a") as handle:
            handle.write(f"\n## {title} ({time.perf_counter() - started:.0f} s)\n\n{body}\n")
        print(f"\n## {title}\n{body}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
