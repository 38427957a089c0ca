"""The leaderboard's scoring service on 50 submissions of 3,174 cases each, through the local hub.

Each synthetic submission has the test split's shape: 3,174 cases (2,938 with a portability row at
hops 1-4), reliability / T- / I-generality over 3 answer tokens, T-locality over 40 positions,
I-locality over 600 positions x top-10, generations for the ``generate`` protocol. Every submission
is opened as a pull request with ``submit`` on a local hub server (``kebench_hf.testing``), then one
``update_leaderboard`` pass downloads, validates, re-scores (both protocols, 1,000 bootstrap
resamples) and merges all of them.

Side by side in this process, the baseline is what ``kebench score`` does with each file: read it
(``kebench_hf.scoring.read_predictions``) and run ``score_predictions`` for both protocols, with no
hub, no submission checks and no results writing. Printed: absolute times, the service/baseline
ratio, peak RSS of the pass.

    python benchmarks/bench_leaderboard.py [--submissions 50] [--cases 3174] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from kebench_hf.testing.hub_server import prepare_local_hub

TEST_CASES, PORTABILITY_CASES = 3174, 2938


def _peak_rss_mb() -> float:
    """This process's peak RSS since start or the last ``_reset_peak_rss`` (Linux ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submissions", type=int, default=50)
    parser.add_argument("--cases", type=int, default=TEST_CASES)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory, removed after")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kebench-bench-leaderboard-"))
    hub = prepare_local_hub(workdir / "hub", workdir / "hf-home")  # before huggingface_hub is imported
    hub.server.start()

    from huggingface_hub import CommitOperationAdd, HfApi

    from kebench_hf.leaderboard.service import update_leaderboard
    from kebench_hf.leaderboard.submission import Reference, default_card
    from kebench_hf.leaderboard.synthetic import Shapes, synthetic_run
    from kebench_hf.scoring import read_predictions
    from metric.kebench import METRICS, score_predictions

    case_ids = [f"eval-{index:05d}" for index in range(args.cases)]
    with_portability = case_ids[: round(args.cases * PORTABILITY_CASES / TEST_CASES)]
    reference = Reference(
        fingerprint="bench",
        case_ids={**{name: frozenset(case_ids) for name in METRICS}, "portability": frozenset(with_portability)},
    )
    hops = {case_id: [1 + index % 4] for index, case_id in enumerate(with_portability)}
    shapes = Shapes(answer_tokens=3, text_locality_positions=40, image_locality_positions=600, image_locality_k=10)
    api = HfApi()
    requests, results = hub.new_repo_id("requests"), hub.new_repo_id("results")
    api.create_repo(requests, repo_type="dataset")

    baseline_seconds = generate_seconds = upload_seconds = predictions_bytes = 0.0
    for index in range(args.submissions):
        started = time.perf_counter()
        run = synthetic_run(
            workdir / "run", reference, hops, model=f"org/model-{index}", method=("ft_llm", "ike", "mend")[index % 3],
            skill=0.3 + 0.6 * index / max(args.submissions - 1, 1), seed=index, shapes=shapes,
        )
        generate_seconds += time.perf_counter() - started
        predictions_bytes += (run / "predictions.parquet").stat().st_size
        started = time.perf_counter()
        table = read_predictions(run / "predictions.parquet")
        for protocol in ("token", "generate"):
            score_predictions(table, protocol=protocol)
        baseline_seconds += time.perf_counter() - started
        del table
        started = time.perf_counter()
        # the pull request `submit` opens, without its local validation (the service repeats it)
        folder = f"submissions/org--model-{index}/run/{index:05d}"
        api.create_commit(
            requests,
            [CommitOperationAdd(f"{folder}/{name}", str(run / name)) for name in ("run.json", "predictions.parquet")]
            + [CommitOperationAdd(f"{folder}/card.md", default_card(json.loads((run / "run.json").read_text())).encode())],
            commit_message=f"submission {index}",
            repo_type="dataset",
            create_pr=True,
        )
        upload_seconds += time.perf_counter() - started
        shutil.rmtree(run)
        print(f"\rprepared {index + 1}/{args.submissions} submissions", end="", flush=True)
    print()

    preparation_peak = _peak_rss_mb()
    _reset_peak_rss()
    started = time.perf_counter()
    report = update_leaderboard(api, requests, results, reference)
    service_seconds = time.perf_counter() - started
    assert len(report.accepted) == args.submissions and not report.rejected and not report.failed, report.summary()

    n = args.submissions
    print(f"\n{n} submissions x {args.cases} cases; predictions file {predictions_bytes / n / 2**20:.1f} MiB each")
    print(f"{'':38}{'total s':>10}{'s/submission':>14}{'ratio':>8}")
    print(f"{'baseline: read + metric, 2 protocols':38}{baseline_seconds:10.1f}{baseline_seconds / n:14.2f}{1:8.2f}")
    print(
        f"{'scoring service pass (hub)':38}{service_seconds:10.1f}{service_seconds / n:14.2f}"
        f"{service_seconds / baseline_seconds:8.2f}"
    )
    print(f"(not in the pass: generating {generate_seconds:.1f} s, opening the pull requests {upload_seconds:.1f} s)")
    print(f"peak RSS: scoring service pass {_peak_rss_mb():.0f} MiB; preparation {preparation_peak:.0f} MiB")
    hub.server.stop()
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
