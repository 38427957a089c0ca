"""A full-size run, measured: FT-LLM and IKE with the tiny LLaVA over the test split of the ``default``
and ``full`` worlds (the full one: 3,174 test cases), in 1 and 2 processes (``kebench run --processes``).

``python benchmarks/bench_full_size.py [--limit N] [--out DIR]``: each run is ``kebench run`` in its own
process tree (a fresh peak RSS each); prints a Markdown table of wall time, seconds per edit, and the peak
RSS of each process (run.json: the main process's, and each shard's for 2 processes). ``--limit`` runs
the first N test cases of each world (a machine shared with others cannot give the whole split its time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from kebench_hf.paths import cache_dir
from kebench_hf.world import build_world, default_world


def world(scale: str) -> Path:
    if scale == "default":
        return default_world()
    return build_world(cache_dir() / "worlds" / scale, seed=0, scale=scale)


def measure(data: Path, method: str, processes: int, limit: int | None, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "kebench_hf.cli", "run", "--method", method, "--data", str(data), "--out", str(out),
               "--no-generate", "--processes", str(processes)]
    if limit is not None:
        command += ["--limit", str(limit)]
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - started
    info = json.loads((out / "run.json").read_text())
    peaks = [shard["peak_memory_mib"] for shard in info["shards"]] or [info["peak_memory_mib"]]
    return {"cases": info["cases"], "wall": wall, "seconds_per_edit": info["seconds_per_edit"],
            "throughput": info["cases"] / wall, "prepare": info["prepare_seconds"], "peaks": peaks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, help="test cases per run (default: the whole split)")
    parser.add_argument("--out", type=Path, default=cache_dir() / "bench-full-size")
    parser.add_argument("--methods", nargs="+", default=["ft-llm", "ike"])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--scales", nargs="+", default=["default", "full"])
    args = parser.parse_args(argv)
    print("| world | method | processes | cases | wall s | s/edit (per process) | cases/s | prepare s | peak RSS MiB per process |")
    print("|---|---|---|---|---|---|---|---|---|")
    for scale in args.scales:
        data = world(scale)
        for method in args.methods:
            for processes in args.processes:
                m = measure(data, method, processes, args.limit, args.out / f"{scale}-{method}-{processes}")
                peaks = " / ".join(f"{peak:.0f}" for peak in m["peaks"])
                print(f"| {scale} | {method} | {processes} | {m['cases']} | {m['wall']:.0f} | {m['seconds_per_edit']:.3f} "
                      f"| {m['throughput']:.2f} | {m['prepare']:.0f} | {peaks} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
