"""Does the main job give the same scores on another CPU? Emulated on this one: MKL's instruction set
(``MKL_ENABLE_INSTRUCTIONS``) and torch's own vectorised kernels (``ATEN_CPU_CAPABILITY``) are the
kernels another processor would run, so other roundings; the thread count changes reduction orders.

    python benchmarks/bench_cpu_kernels.py [--methods ike serac] [--limit 20] [--out DIR] [--markdown FILE]

Each setting is ``kebench run`` in its own process with its own empty cache (so a trained editor,
SERAC's, is trained under that setting too) on the shipped default model. The table gives, per
setting, a digest of a matrix product and of attention (proof that the kernels round differently),
then each method's token-protocol scores; the last line says whether every setting gave the same.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

#: name -> (environment, threads): the native AVX-512 kernels, then what an AVX2-only and an
#: SSE4.2-only processor would run
SETTINGS = {
    "native, 1 thread": ({}, 1),
    "native, 2 threads": ({}, 2),
    "AVX2, 1 thread": ({"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}, 1),
    "SSE4.2, 1 thread": ({"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ATEN_CPU_CAPABILITY": "default"}, 1),
    "SSE4.2, 2 threads": ({"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ATEN_CPU_CAPABILITY": "default"}, 2),
}
SCORES = ("reliability", "t_generality", "i_generality", "t_locality", "i_locality", "portability")

KERNEL_DIGEST = """
import hashlib, torch
torch.manual_seed(0)
a, b, c = torch.randn(37, 128), torch.randn(128, 384), torch.randn(8, 4, 37, 32)
outs = (a @ b, torch.nn.functional.scaled_dot_product_attention(c, c, c))
print(torch.backends.cpu.get_cpu_capability(), *(hashlib.sha256(o.numpy().tobytes()).hexdigest()[:8] for o in outs))
"""


def environment(extra: dict[str, str], threads: int, cache: Path) -> dict[str, str]:
    return {**os.environ, **extra, "OMP_NUM_THREADS": str(threads), "KEBENCH_CACHE": str(cache)}


def measure(name: str, methods: list[str], limit: int, out: Path) -> dict:
    extra, threads = SETTINGS[name]
    root = out / name.replace(", ", "-").replace(" ", "-").replace(".", "")
    env = environment(extra, threads, root / "cache")
    digest = subprocess.run([sys.executable, "-c", KERNEL_DIGEST], env=env, check=True, capture_output=True,
                            text=True).stdout.split()
    result = {"setting": name, "capability": digest[0], "matmul": digest[1], "attention": digest[2]}
    for method in methods:
        run_dir = root / method
        if not (run_dir / "scores.json").exists():
            subprocess.run([sys.executable, "-m", "kebench_hf.cli", "run", "--method", method, "--limit", str(limit),
                            "--no-generate", "--out", str(run_dir)], env=env, check=True, stdout=subprocess.DEVNULL)
        scores = json.loads((run_dir / "scores.json").read_text())["token"]["scores"]
        result[method] = [scores[key] for key in SCORES]
    return result


def table(results: list[dict], methods: list[str]) -> str:
    header = "| setting | kernels | matmul | attention | " + " | ".join(
        f"{method} {key}" for method in methods for key in ("Rel.", "T-Gen.", "I-Gen.", "T-Loc.", "I-Loc.", "Port."))
    lines = [header + " |", "|---" * (4 + 6 * len(methods)) + "|"]
    for result in results:
        cells = [f"{value:.1f}" for method in methods for value in result[method]]
        lines.append(f"| {result['setting']} | {result['capability']} | {result['matmul']} | {result['attention']} | "
                     + " | ".join(cells) + " |")
    same = all(result[method] == results[0][method] for result in results for method in methods)
    lines.append("")
    lines.append(f"every setting gives the same scores: {'yes' if same else 'NO'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["ike", "serac"])
    parser.add_argument("--limit", type=int, default=20, help="first N test cases")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", type=Path, help="runs and caches (default: a new temporary directory); resumes")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="kebench-cpu-"))
    results = [measure(name, args.methods, args.limit, out) for name in args.settings]
    text = table(results, args.methods)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
