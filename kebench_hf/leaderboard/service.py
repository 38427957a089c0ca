"""The scoring service: pending pull requests of the requests dataset -> scored, merged or rejected.

One pass (``update_leaderboard``):

1. read the results dataset and the requests dataset's ``main`` tree;
2. for each open pull request, in order: check its file list (one new submission folder, allowed
   names, sizes) before downloading anything, download, validate, reject duplicates, re-score with
   the metric;
3. write the ``.eval_results`` files of the models that got new rows, then the results dataset
   (one commit, only when there are new rows);
4. merge accepted pull requests; comment on and close rejected ones.

A pull request whose folder is already in the results (a pass that stopped between 3 and 4) is
merged without re-scoring, so running the pass again is safe, and a pass with nothing pending
commits nothing.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timezone
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile
from tqdm.auto import tqdm

from kebench_hf.hub import is_hub_id
from kebench_hf.leaderboard.results import (
    EVAL_RESULTS_FILE,
    RESULTS_FILE,
    eval_results_yaml,
    read_results,
    result_rows,
    results_card,
    results_parquet,
)
from kebench_hf.leaderboard.submission import (
    CARD_FILE,
    DEFAULT_LIMITS,
    PREDICTION_FILES,
    RUN_FILE,
    SAFE_NAME,
    SUBMISSION_FILES,
    SUBMISSIONS_ROOT,
    Limits,
    Reference,
    SubmissionError,
    ValidatedSubmission,
    validate_run_dir,
)
from metric.kebench import DISPLAY_NAMES, SCORES, score_predictions

logger = logging.getLogger(__name__)


@dataclass
class UpdateReport:
    """What one pass did; ``failed`` are pull requests left open because of an error on our side."""

    accepted: dict[int, str] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    new_rows: int = 0
    eval_results_written: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"{len(self.accepted)} accepted, {len(self.rejected)} rejected, {len(self.failed)} failed;"
            f" {self.new_rows} new result rows"
        ]
        lines += [f"  #{num} accepted: {folder}" for num, folder in self.accepted.items()]
        lines += [f"  #{num} rejected: {reason}" for num, reason in self.rejected.items()]
        lines += [f"  #{num} failed (left open): {error}" for num, error in self.failed.items()]
        lines += [f"  .eval_results written for {model}" for model in self.eval_results_written]
        return "\n".join(lines)


def score_submission(submission: ValidatedSubmission) -> dict[str, dict]:
    """The metric's output for each protocol the predictions support, under the run's preset and
    averaging; bad values become the reason."""
    scores = {}
    for protocol in submission.protocols:
        # generations are judged whole, so a run averaging over tokens averages them over cases (each row
        # records the averaging it was scored with)
        average = submission.average if protocol == "token" else "case"
        try:
            scores[protocol] = score_predictions(
                submission.predictions, protocol=protocol, preset=submission.preset, average=average
            )
        except ValueError as error:
            raise SubmissionError(f"predictions ({protocol} protocol): {error}") from None
        skipped = {name: count for name, count in scores[protocol]["skipped"].items() if count}
        if skipped:
            # a protocol is ranked only on complete predictions: every case of every metric
            raise SubmissionError(f"predictions ({protocol} protocol): rows without a prediction {skipped}")
    return scores


def submission_files(
    pr_tree: list[RepoFile], base_tree: Mapping[str, str], main_paths: set[str], limits: Limits
) -> tuple[str, dict]:
    """The pull request's one new submission folder and its files (name -> size), from listings only.

    ``base_tree`` (path -> blob id) is the commit the pull request started from; ``main_paths`` what
    ``main`` holds now. Nothing is downloaded before the paths and sizes pass: a hostile name never
    becomes a local path.
    """
    pr_paths = {entry.path for entry in pr_tree}
    removed = sorted(set(base_tree) - pr_paths)
    if removed:
        raise SubmissionError(f"a submission may only add files; it removes {removed[:3]}")
    added = [entry for entry in pr_tree if base_tree.get(entry.path) != entry.blob_id]
    if not added:
        raise SubmissionError("the pull request adds no files")
    folders, files = set(), {}
    for entry in added:
        if entry.path in base_tree or entry.path in main_paths:
            raise SubmissionError(f"the pull request changes an existing file: {entry.path!r}")
        parts = entry.path.split("/")
        if len(parts) != 5 or parts[0] != SUBMISSIONS_ROOT or not all(SAFE_NAME.match(p) for p in parts[1:4]):
            raise SubmissionError(
                f"file {entry.path!r} is not in a {SUBMISSIONS_ROOT}/<model>/<method>/<timestamp>/ folder"
                " of plain names"
            )
        if parts[4] not in SUBMISSION_FILES:
            raise SubmissionError(f"file {entry.path!r} is not allowed; a submission holds {sorted(SUBMISSION_FILES)}")
        if entry.size > limits.for_file(parts[4]):
            raise SubmissionError(f"{entry.path} is {entry.size} bytes, over the limit of {limits.for_file(parts[4])}")
        folders.add("/".join(parts[:4]))
        files[parts[4]] = entry.size
    if len(folders) != 1:
        raise SubmissionError(f"one submission per pull request, found folders {sorted(folders)}")
    for required in (RUN_FILE, CARD_FILE):
        if required not in files:
            raise SubmissionError(f"the submission has no {required}")
    if sum(name in files for name in PREDICTION_FILES) != 1:
        raise SubmissionError(f"the submission must hold exactly one of {list(PREDICTION_FILES)}")
    return folders.pop(), files


def _tree(api: HfApi, repo_id: str, revision: str) -> list[RepoFile]:
    entries = api.list_repo_tree(repo_id, revision=revision, recursive=True, repo_type="dataset")
    return [entry for entry in entries if isinstance(entry, RepoFile)]


def _base_tree(api: HfApi, repo_id: str, revision: str, main_commits: set[str]) -> dict[str, str]:
    """Path -> blob id at the newest commit of ``revision`` that ``main`` also has (where the PR started)."""
    for commit in api.list_repo_commits(repo_id, revision=revision, repo_type="dataset"):
        if commit.commit_id in main_commits:
            return {entry.path: entry.blob_id for entry in _tree(api, repo_id, commit.commit_id)}
    raise SubmissionError("the pull request shares no history with main")


def _download(api: HfApi, repo_id: str, filename: str, revision: str, directory: Path, repo_type: str) -> Path | None:
    try:
        return Path(
            api.hf_hub_download(repo_id, filename, revision=revision, repo_type=repo_type, local_dir=directory)
        )
    except (EntryNotFoundError, RepositoryNotFoundError):
        return None


def _scores_line(rows: list[dict]) -> str:
    def show(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f}"

    return "\n".join(
        f"- {row['preset']} preset, {row['protocol']} protocol: "
        + ", ".join(f"{DISPLAY_NAMES[name]} {show(row[name])}" for name in SCORES)
        for row in rows
    )


def update_leaderboard(
    api: HfApi,
    requests_repo: str,
    results_repo: str,
    reference: Reference,
    *,
    dataset_id: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> UpdateReport:
    """One pass of the scoring service (see the module docstring). Returns what it did."""
    report = UpdateReport()
    api.create_repo(results_repo, repo_type="dataset", exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kebench-leaderboard-") as workdir:
        workdir = Path(workdir)
        results_path = _download(api, results_repo, RESULTS_FILE, "main", workdir / "results", "dataset")
        existing = read_results(results_path) if results_path else []
        by_hash = {row["predictions_sha256"]: row["submission"] for row in existing}
        scored_folders = {row["submission"] for row in existing}
        main_paths = {entry.path for entry in _tree(api, requests_repo, "main")}
        main_commits = {commit.commit_id for commit in api.list_repo_commits(requests_repo, repo_type="dataset")}
        pending = sorted(
            api.get_repo_discussions(
                requests_repo, discussion_type="pull_request", discussion_status="open", repo_type="dataset"
            ),
            key=lambda discussion: discussion.num,
        )
        new_rows: list[dict] = []
        to_merge: dict[int, str] = {}
        for pr in tqdm(pending, desc="submissions", unit="PR", disable=not pending):
            try:
                folder, files = submission_files(
                    _tree(api, requests_repo, pr.git_reference),
                    _base_tree(api, requests_repo, pr.git_reference, main_commits),
                    main_paths,
                    limits,
                )
                if folder in scored_folders:
                    to_merge[pr.num] = "Already scored; merging."
                    report.accepted[pr.num] = folder
                    continue
                download_dir = workdir / f"pr-{pr.num}"
                for name in files:
                    _download(api, requests_repo, f"{folder}/{name}", pr.git_reference, download_dir, "dataset")
                submission = validate_run_dir(download_dir / folder, reference, limits)
                if submission.predictions_sha256 in by_hash:
                    raise SubmissionError(
                        f"duplicate: the same predictions were already submitted as {by_hash[submission.predictions_sha256]}"
                    )
                date = pr.created_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                rows = result_rows(submission, folder, score_submission(submission), date=date, link=pr.url)
            except SubmissionError as error:
                report.rejected[pr.num] = str(error)
                continue
            except Exception as error:  # one broken submission or hub hiccup must not stop the others
                logger.exception("PR #%d of %s could not be processed", pr.num, requests_repo)
                report.failed[pr.num] = f"{type(error).__name__}: {error}"
                continue
            finally:
                shutil.rmtree(workdir / f"pr-{pr.num}", ignore_errors=True)
            new_rows.extend(rows)
            by_hash[submission.predictions_sha256] = folder
            scored_folders.add(folder)
            to_merge[pr.num] = f"Accepted and scored by the KEBench leaderboard:\n{_scores_line(rows)}"
            report.accepted[pr.num] = folder

        all_rows = existing + new_rows
        if dataset_id:
            for model in sorted({row["model"] for row in new_rows}):
                if _write_eval_results(api, model, [row for row in all_rows if row["model"] == model], dataset_id):
                    report.eval_results_written.append(model)
        if new_rows:
            api.create_commit(
                results_repo,
                [
                    CommitOperationAdd(RESULTS_FILE, results_parquet(all_rows)),
                    CommitOperationAdd("README.md", results_card(all_rows).encode()),
                ],
                commit_message=f"Add {len(new_rows)} result rows",
                repo_type="dataset",
            )
            report.new_rows = len(new_rows)
    # the results are written: a pull request left open here is merged by the next pass, not re-scored
    for num, comment in to_merge.items():
        try:
            api.merge_pull_request(requests_repo, num, comment=comment, repo_type="dataset")
        except HfHubHTTPError as error:
            report.failed[num] = f"merge failed: {error}"
    for num, reason in report.rejected.items():
        api.comment_discussion(requests_repo, num, f"Rejected by the KEBench leaderboard: {reason}", repo_type="dataset")
        api.change_discussion_status(requests_repo, num, "closed", repo_type="dataset")
    logger.info("%s", report.summary())
    return report


def _write_eval_results(api: HfApi, model: str, rows: list[dict], dataset_id: str) -> bool:
    """Write ``.eval_results/kebench.yaml`` in ``model``'s hub repo when it exists and the file differs."""
    if not is_hub_id(model):
        return False
    try:
        if not api.repo_exists(model):
            return False
        content = eval_results_yaml(rows, dataset_id)
        with tempfile.TemporaryDirectory() as directory:
            current = _download(api, model, EVAL_RESULTS_FILE, "main", Path(directory), "model")
            if current is not None and current.read_text(encoding="utf-8") == content:
                return False
        api.create_commit(
            model,
            [CommitOperationAdd(EVAL_RESULTS_FILE, content.encode())],
            commit_message="Update KEBench evaluation results",
        )
    except HfHubHTTPError as error:
        logger.warning("could not write %s in %s: %s", EVAL_RESULTS_FILE, model, error)
        return False
    return True
