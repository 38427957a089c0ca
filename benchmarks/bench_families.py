"""Every adapter family through every training-free method, on tiny models pretrained here.

For each tiny architecture: ``kebench pretrain`` on the ``tiny`` generated world (vision stage +
language stage, a few minutes in all on 2 cores), then ``kebench run`` with FT-LLM, FT-vision and
IKE on its test split; prints one Markdown table (token and generate protocols), each model's
old-answer accuracy and the wall time per step. ``python benchmarks/bench_families.py [OUT_DIR]``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from editors.pretrain import SHORT_RECIPE, pretrain
from editors.report import score_cells
from editors.run import run
from editors.run_dir import RunSettings
from editors.tiny import BUILDERS
from kebench_hf.world import build_world

METHODS = ("ft-llm", "ft-vision", "ike")
#: the test fixture's recipe; IKE's k below is its most demonstrations, so every family's positions
#: hold the prompt
RECIPE = SHORT_RECIPE


def main(root: Path) -> str:
    data = build_world(root / "world", seed=0, scale="tiny")
    lines = ["| arch | old-answer acc. | method | protocol | Rel. | T-Gen. | I-Gen. | T-Loc. | I-Loc. | Port. | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arch in BUILDERS:
        started = time.perf_counter()
        model = root / "models" / arch
        summary = pretrain(data, model, replace(RECIPE, arch=arch))
        old = summary["accuracy"]["reliability_old_answer"]
        print(f"{arch}: pretrained in {time.perf_counter() - started:.0f} s, old-answer accuracy {old:.3f}",
              flush=True)
        for method in METHODS:
            started = time.perf_counter()
            options = {"k": RECIPE.max_demonstrations} if method == "ike" else {}
            scores = run(RunSettings(method=method, out=root / "runs" / arch / method, model=str(model),
                                     data=str(data), bootstrap=0, method_options=options))
            seconds = time.perf_counter() - started
            for protocol in ("token", "generate"):
                cells = score_cells(scores[protocol]["scores"])
                lines.append(f"| {arch} | {100 * old:.1f} | {method} | {protocol} | {cells} | {seconds:.0f} |")
            print(lines[-2], lines[-1], sep="\n", flush=True)
    table = "\n".join(lines)
    (root / "families.md").write_text(table + "\n")
    (root / "families.json").write_text(json.dumps({"recipe": asdict(RECIPE)}, indent=2))
    return table


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="kebench-families-"))
    print(main(out))
