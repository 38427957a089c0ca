"""Build time and peak memory of ``kebench world`` per scale (full = the paper's proportions).

    python benchmarks/bench_world.py [--scales default full] [--out DIR]

Each scale is built in a fresh subprocess, so its peak resident memory is its own. Rendering the
KG and running the pipeline are timed separately; ``default`` is the baseline the ratios refer to.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import json, resource, sys, time
from pathlib import Path
from kebench_hf.construct.pipeline import construct, ConstructConfig
from kebench_hf.world.build import SCALES, write_kg
from kebench_hf.world.kg import IMAGED_TYPES, generate_world

scale_name, out = sys.argv[1], Path(sys.argv[2])
scale = SCALES[scale_name]
started = time.perf_counter()
world = generate_world({t: scale.entities[t] for t in IMAGED_TYPES}, scale.languages, 0)
write_kg(world, out / "kg", scale, 0)
rendered = time.perf_counter()
construct(out / "kg", out / "kebench", ConstructConfig(**{**scale.construct.__dict__, "seed": 0}))
finished = time.perf_counter()
report = json.loads((out / "kebench" / "report.json").read_text())
print(json.dumps({
    "scale": scale_name,
    "render_s": round(rendered - started, 1),
    "construct_s": round(finished - rendered, 1),
    "total_s": round(finished - started, 1),
    "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "kg_images": report["read"]["images"],
    "output": report["output"],
    "multihop": {k: v for k, v in report["portability"].items() if k.startswith("multihop")},
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", nargs="+", default=["tiny", "default", "full"])
    parser.add_argument("--out", type=Path, help="build here (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        root = args.out or Path(temporary)
        results = []
        for scale in args.scales:
            completed = subprocess.run(
                [sys.executable, "-c", _CHILD, scale, str(root / scale)], capture_output=True, text=True
            )
            if completed.returncode:
                sys.exit(f"building {scale} failed:\n{completed.stderr[-3000:]}")
            results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    baseline = next((r for r in results if r["scale"] == "default"), results[0])
    print(f"\n{'scale':8} {'cases':>6} {'images':>7} {'render s':>9} {'construct s':>12} {'total s':>8} "
          f"{'x default':>10} {'s/1k cases':>11} {'peak MiB':>9}")  # fmt: skip
    for result in results:
        cases = result["output"]["train.json"] + result["output"]["eval.json"]
        print(
            f"{result['scale']:8} {cases:6d} {result['kg_images']:7d} {result['render_s']:9.1f} "
            f"{result['construct_s']:12.1f} {result['total_s']:8.1f} "
            f"{result['total_s'] / baseline['total_s']:10.1f} {1000 * result['total_s'] / cases:11.1f} "
            f"{result['peak_rss_mib']:9.1f}"
        )


if __name__ == "__main__":
    main()
