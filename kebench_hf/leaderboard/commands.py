"""``kebench submit``, ``kebench leaderboard update`` and ``kebench push-space``."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from kebench_hf.errors import HubError

# huggingface_hub and the scoring stack (datasets, evaluate, the metric) are imported by the commands that use
# them: every `kebench` invocation builds this module's parsers.
if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

    from kebench_hf.leaderboard.submission import Reference

SPACE_FILES = ("app.py", "README.md", "requirements.txt")
SPACE_CONFIG = "leaderboard.json"


def push_space(repo_id: str, results_repo: str, requests_repo: str, *, token: str | None = None) -> CommitInfo:
    """Publish the leaderboard app as a Gradio Space reading ``results_repo``."""
    from kebench_hf.hub import check_repo_id, push_folder

    check_repo_id(results_repo)
    with tempfile.TemporaryDirectory(prefix="kebench-space-") as folder:
        for name in SPACE_FILES:
            shutil.copyfile(Path(__file__).with_name(name), Path(folder) / name)
        config = {"results": results_repo, "requests": requests_repo}
        (Path(folder) / SPACE_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        return push_folder(
            folder, repo_id, repo_type="space", space_sdk="gradio", token=token, message="Publish the KEBench leaderboard"
        )


def _reference(data: str | None, run_dir: str | None = None) -> Reference:
    from kebench_hf.leaderboard.submission import RUN_FILE, Reference, read_run_json

    if data is None and run_dir is not None:
        data = read_run_json(Path(run_dir) / RUN_FILE).get("data")
    if not data:
        raise ValueError("give --data: the KEBench data directory or hub repo the leaderboard scores against")
    return Reference.load(data)


def _submit(args: argparse.Namespace) -> int:
    from huggingface_hub import HfApi

    from kebench_hf.hub import check_repo_id, hub_errors, hub_token
    from kebench_hf.leaderboard.submission import SubmissionError, submit

    check_repo_id(args.repo)
    try:
        reference = _reference(args.data, args.run_dir)
        with hub_errors(f"submitting to {args.repo}"):
            url = submit(args.run_dir, args.repo, reference, HfApi(token=hub_token()), description=args.description)
    except (SubmissionError, HubError) as error:
        print(f"kebench: submission refused: {error}", file=sys.stderr)
        return 1
    print(f"opened {url}")
    return 0


def _update(args: argparse.Namespace) -> int:
    from huggingface_hub import HfApi

    from kebench_hf.hub import check_repo_id, hub_errors, hub_token
    from kebench_hf.leaderboard.service import update_leaderboard

    check_repo_id(args.requests)
    check_repo_id(args.results)
    reference = _reference(args.data)
    dataset_id = args.dataset_id or (args.data if not Path(args.data).exists() else None)
    with hub_errors(f"updating {args.results} from {args.requests}"):
        report = update_leaderboard(
            HfApi(token=hub_token()), args.requests, args.results, reference, dataset_id=dataset_id
        )
    print(report.summary())
    return 1 if report.failed else 0


def _push_space(args: argparse.Namespace) -> int:
    info = push_space(args.repo, args.results, args.requests)
    print(f"published the leaderboard Space {info.repo_url} (commit {info.oid})")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    submit = subparsers.add_parser(
        "submit",
        help="validate a run directory and open a leaderboard submission (a pull request)",
        description="Check RUN_DIR as the scoring service will (schema, every test case for every metric, "
        "dataset version, sizes), then open a pull request on the requests dataset.",
    )
    submit.add_argument("run_dir", metavar="RUN_DIR", help="output directory of `kebench run`")
    submit.add_argument("--repo", required=True, metavar="ORG/REQUESTS", help="the leaderboard's requests dataset")
    submit.add_argument("--data", metavar="DIR_OR_REPO", help="KEBench data to check against (default: the run's)")
    submit.add_argument("--description", default="", help="a sentence for the card when RUN_DIR has no card.md")
    submit.set_defaults(func=_submit)

    leaderboard = subparsers.add_parser("leaderboard", help="the scoring service of the hub leaderboard")
    actions = leaderboard.add_subparsers(dest="leaderboard_command", metavar="ACTION", required=True)
    update = actions.add_parser(
        "update",
        help="score pending submissions, merge or reject them, write the results dataset",
        description="Re-score every open pull request of the requests dataset with the KEBench metric, reject "
        "invalid or duplicate ones with a comment, merge the others, write the results dataset and the "
        ".eval_results files of the submitted models. Running it again changes nothing.",
    )
    update.add_argument("--requests", required=True, metavar="ORG/REQUESTS")
    update.add_argument("--results", required=True, metavar="ORG/RESULTS")
    update.add_argument("--data", required=True, metavar="DIR_OR_REPO", help="the KEBench data submissions must match")
    update.add_argument(
        "--dataset-id",
        metavar="ORG/NAME",
        help="hub id of the benchmark for .eval_results (default: --data when it is a repo; none: not written)",
    )
    update.set_defaults(func=_update)

    space = subparsers.add_parser("push-space", help="publish the leaderboard Gradio app as a Space")
    space.add_argument("--repo", required=True, metavar="ORG/NAME", help="the Space")
    space.add_argument("--results", required=True, metavar="ORG/RESULTS", help="results dataset the app reads")
    space.add_argument("--requests", required=True, metavar="ORG/REQUESTS", help="requests dataset for the how-to")
    space.set_defaults(func=_push_space)
