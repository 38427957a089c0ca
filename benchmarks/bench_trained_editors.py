"""Train KE, SERAC and MEND on the default world + tiny LLaVA, then score them on its test split.

Each training and each run is its own ``kebench`` process, so its wall time and peak RSS are its
own. Prints one line per training (seconds, peak RSS, validation, SERAC's scope precision/recall)
and the six scores of both protocols per method.

    python benchmarks/bench_trained_editors.py --out /tmp/trained-editors [--methods mend ke serac]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from editors.report import score_table


def timed(command: list[str]) -> tuple[float, float]:
    """Run ``kebench command``; (wall seconds, peak RSS MiB) of that process."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "kebench_hf.cli", *command])
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"kebench {' '.join(command)} failed")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", nargs="+", default=["mend", "ke", "serac"])
    parser.add_argument("--limit", type=int, help="score only the first N test cases")
    args = parser.parse_args()

    trainings, scores = {}, {}
    for method in args.methods:
        editor = args.out / f"editor-{method}"
        seconds, rss = timed(["train-editor", "--method", method, "--out", str(editor)])
        report = json.loads((editor / "editor.json").read_text())["report"]
        trainings[method] = {"seconds": round(seconds, 1), "peak_rss_mib": round(rss), **report}
        run = args.out / f"run-{method}"
        command = ["run", "--method", method, "--editor", str(editor), "--out", str(run)]
        if args.limit:
            command += ["--limit", str(args.limit)]
        trainings[method]["run_seconds"] = round(timed(command)[0], 1)
        scores[method] = json.loads((run / "scores.json").read_text())

    print("\n| method | train s | peak RSS MiB | steps | early stop | scope P / R |\n|---|---|---|---|---|---|")
    for method, t in trainings.items():
        scope = t.get("scope_classifier")
        pr = f"{scope['precision']:.2f} / {scope['recall']:.2f}" if scope else "-"
        print(f"| {method} | {t['seconds']} | {t['peak_rss_mib']} | {t['steps']} | {t['stopped_early']} | {pr} |")
    for protocol in ("token", "generate"):
        print("\n" + score_table(scores, protocol))
    (args.out / "bench.json").write_text(json.dumps({"training": trainings, "scores": scores}, indent=2))


if __name__ == "__main__":
    main()
