"""What a leaderboard submission is, how it is checked, and how it is opened as a pull request.

A submission is the part of a ``kebench run`` directory that can be re-scored: ``run.json``, the
predictions file in the metric's fixed schema, and ``card.md`` (a short model/method card). The same
checks run on the submitter's machine (``kebench submit``) and in the scoring service, so a
submission that passes locally is rejected later only if it was tampered with or the data changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from huggingface_hub import CommitOperationAdd, HfApi

from kebench_hf.hub import is_hub_id
from metric.kebench import AVERAGES, EDIT_ONEHOP, METRICS, PRESETS, SCORES

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
CARD_FILE = "card.md"
PREDICTION_FILES = ("predictions.parquet", "predictions.jsonl")
SUBMISSION_FILES = frozenset({RUN_FILE, CARD_FILE, *PREDICTION_FILES})
SUBMISSIONS_ROOT = "submissions"
#: the leaderboard ranks runs on this config and split of KEBench
LEADERBOARD_CONFIG = "edit"
LEADERBOARD_SPLIT = "test"
#: a run on this config (same split) fills the edit-one-hop column of the edit runs of the same model,
#: method, preset and protocol (:func:`kebench_hf.leaderboard.results.fill_edit_onehop`)
ONEHOP_CONFIG = "edit_onehop"
#: a path component we accept in a submission path: no separators, no dots-only names, no spaces
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
#: longest model, family or method name shown on the leaderboard
MAX_NAME_LENGTH = 200
#: what a run.json without these fields (written before they existed) was made and scored with
DEFAULT_PRESET = "kebench"
DEFAULT_AVERAGE = "case"


class SubmissionError(ValueError):
    """A submission is invalid; the message is the reason written back to the submitter."""


@dataclass(frozen=True)
class Limits:
    """Size limits, checked before anything is downloaded or parsed."""

    predictions_bytes: int = 512 * 2**20
    run_bytes: int = 256 * 2**10
    card_bytes: int = 32 * 2**10

    def for_file(self, name: str) -> int:
        if name == RUN_FILE:
            return self.run_bytes
        if name == CARD_FILE:
            return self.card_bytes
        return self.predictions_bytes


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Reference:
    """The dataset version a submission must match and the case ids each metric must cover, for the
    leaderboard's config (``config``) and, in ``onehop``, for its edit-one-hop config (None: the
    data has none, and edit-one-hop runs are refused)."""

    fingerprint: str
    case_ids: Mapping[str, frozenset[str]]
    config: str = LEADERBOARD_CONFIG
    onehop: Reference | None = None

    @classmethod
    def from_split(cls, split, fingerprint: str, config: str = LEADERBOARD_CONFIG) -> Reference:
        """From the test split of ``config`` (a ``datasets.Dataset``); reads no image column. An
        edit-one-hop split's cases are asked edit-one-hop only; an edit split's the six scores."""
        if config == ONEHOP_CONFIG:
            return cls(fingerprint=fingerprint, case_ids={EDIT_ONEHOP: frozenset(split["case_id"])}, config=config)
        columns = split.select_columns(["case_id", "portability"])
        every_case = frozenset(columns["case_id"])
        with_portability = frozenset(
            case_id for case_id, hops in zip(columns["case_id"], columns["portability"], strict=True) if hops
        )
        case_ids = {name: every_case for name in METRICS if name != "portability"}
        case_ids["portability"] = with_portability
        return cls(fingerprint=fingerprint, case_ids=case_ids, config=config)

    @classmethod
    def load(cls, data: str) -> Reference:
        """From a KEBench data directory or hub repo (``kebench_hf.load_kebench``): the leaderboard's
        config and, when the data has it, the edit-one-hop config."""
        from kebench_hf.builder import dataset_fingerprint, load_kebench

        def test_split(config: str):
            dataset = load_kebench(data, config)
            split = dataset[LEADERBOARD_SPLIT] if hasattr(dataset, "keys") else dataset
            return cls.from_split(split, dataset_fingerprint(split), config)

        try:
            onehop = test_split(ONEHOP_CONFIG)
        except (FileNotFoundError, KeyError, ValueError) as error:
            logger.warning("no %s reference in %s (%s): edit-one-hop runs are refused", ONEHOP_CONFIG, data, error)
            onehop = None
        return replace(test_split(LEADERBOARD_CONFIG), onehop=onehop)

    def for_config(self, config: object) -> Reference:
        """The reference a run on ``config`` is checked against; another config is the reason."""
        if config == self.config:
            return self
        if config == ONEHOP_CONFIG and self.onehop is not None:
            return self.onehop
        accepted = [self.config] + ([ONEHOP_CONFIG] if self.onehop is not None else [])
        raise SubmissionError(
            f"{RUN_FILE}: the leaderboard scores config {' or '.join(map(repr, accepted))} split"
            f" {LEADERBOARD_SPLIT!r}; this run is on config {config!r}"
        )


@dataclass(frozen=True)
class ValidatedSubmission:
    """A submission that passed every check; ``predictions`` is ready for the metric."""

    run: dict
    card: str
    predictions: pa.Table
    predictions_file: str
    predictions_sha256: str
    protocols: tuple[str, ...]

    @property
    def model(self) -> str:
        return self.run["model"]

    @property
    def method(self) -> str:
        return self.run["method"]

    @property
    def config(self) -> str:
        """The dataset config of the run: the leaderboard's, or edit-one-hop (checked)."""
        return self.run["config"]

    @property
    def preset(self) -> str:
        """How the run built its queries; rows of different presets are never ranked together."""
        return self.run.get("preset", DEFAULT_PRESET)

    @property
    def average(self) -> str:
        """How the run's scores average (the reference's KE evaluation: over tokens)."""
        return self.run.get("average", DEFAULT_AVERAGE)


def validate_run_dir(run_dir: str | Path, reference: Reference, limits: Limits = DEFAULT_LIMITS) -> ValidatedSubmission:
    """Check a run directory as the scoring service will; raise ``SubmissionError`` with the reason."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SubmissionError(f"{run_dir} is not a directory")
    predictions_path = _predictions_path(run_dir)
    for path in (run_dir / RUN_FILE, run_dir / CARD_FILE, predictions_path):
        if path.exists() and path.stat().st_size > limits.for_file(path.name):
            raise SubmissionError(
                f"{path.name} is {path.stat().st_size} bytes, over the limit of {limits.for_file(path.name)}"
            )
    run = read_run_json(run_dir / RUN_FILE)
    reference = _check_dataset_version(run, reference)
    card = _read_card(run_dir / CARD_FILE) if (run_dir / CARD_FILE).exists() else ""
    predictions = read_predictions(predictions_path)
    check_coverage(predictions, reference)
    return ValidatedSubmission(
        run=run,
        card=card,
        predictions=predictions,
        predictions_file=predictions_path.name,
        predictions_sha256=_sha256(predictions_path),
        protocols=scorable_protocols(predictions),
    )


def _predictions_path(run_dir: Path) -> Path:
    present = [run_dir / name for name in PREDICTION_FILES if (run_dir / name).is_file()]
    if not present:
        raise SubmissionError(f"{run_dir} holds no predictions file (expected one of {', '.join(PREDICTION_FILES)})")
    return present[0]


def _reject_constant(name: str) -> float:
    raise SubmissionError(f"{RUN_FILE}: non-finite number {name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise SubmissionError(f"{RUN_FILE}: non-finite number {text} is not allowed")
    return value


def read_run_json(path: Path) -> dict:
    """``run.json`` parsed strictly: an object, finite numbers, the fields the leaderboard shows."""
    if not path.is_file():
        raise SubmissionError(f"{RUN_FILE} is missing")
    try:
        run = json.loads(
            path.read_text(encoding="utf-8"), parse_constant=_reject_constant, parse_float=_finite_float
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SubmissionError(f"{RUN_FILE} is not valid UTF-8 JSON: {error}") from None
    if not isinstance(run, dict):
        raise SubmissionError(f"{RUN_FILE} must hold a JSON object, not {type(run).__name__}")
    for name in ("model", "method", "model_family"):
        value = run.get(name)
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_LENGTH or not value.isprintable():
            raise SubmissionError(
                f"{RUN_FILE}: field {name!r} must be a printable string of 1 to {MAX_NAME_LENGTH} characters"
            )
    seconds = run.get("seconds_per_edit")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0):
        raise SubmissionError(f"{RUN_FILE}: field 'seconds_per_edit' must be a non-negative number, got {seconds!r}")
    for name, choices in (("preset", PRESETS), ("average", AVERAGES)):
        if name in run and run[name] not in choices:
            raise SubmissionError(f"{RUN_FILE}: field {name!r} must be one of {list(choices)}, got {run[name]!r:.80}")
    return run


def _check_dataset_version(run: Mapping, reference: Reference) -> Reference:
    """The reference of the run's config, once its config, split and dataset version match it."""
    config, split = run.get("config"), run.get("split")
    reference = reference.for_config(config)
    if split != LEADERBOARD_SPLIT:
        raise SubmissionError(
            f"{RUN_FILE}: the leaderboard scores config {config!r} split {LEADERBOARD_SPLIT!r};"
            f" this run is on config {config!r} split {split!r}"
        )
    fingerprint = run.get("dataset_fingerprint")
    if fingerprint != reference.fingerprint:
        raise SubmissionError(
            f"{RUN_FILE}: run on dataset version {fingerprint!r}, the leaderboard's is {reference.fingerprint!r}"
        )
    return reference


def _read_card(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise SubmissionError(f"{CARD_FILE} is not UTF-8 text: {error}") from None


def read_predictions(path: Path) -> pa.Table:
    """The predictions file, validated by the metric's reader (``kebench score`` reads it the same way)."""
    from kebench_hf.scoring import read_predictions as read_validated

    try:
        return read_validated(path)
    except (ValueError, OSError) as error:
        # the reason goes back to the submitter: name the file, not where the service keeps it
        raise SubmissionError(str(error).replace(str(path), path.name)) from None


def check_coverage(predictions: pa.Table, reference: Reference) -> None:
    """Every expected case id has rows for every metric, and no row names an unknown case or metric."""
    pairs = predictions.group_by(["metric", "case_id"]).aggregate([])
    found: dict[str, set[str]] = {}
    for metric, case_id in zip(pairs["metric"].to_pylist(), pairs["case_id"].to_pylist(), strict=True):
        found.setdefault(metric, set()).add(case_id)
    unknown_metrics = sorted(set(found) - set(SCORES), key=str)
    if unknown_metrics:
        raise SubmissionError(f"predictions: unknown metric name(s) {unknown_metrics}; expected {list(SCORES)}")
    for metric in SCORES:
        # a score whose cases the run's split lacks (edit-one-hop on the edit config, the six on the
        # edit-one-hop config) must have no rows
        expected, present = reference.case_ids.get(metric, frozenset()), found.get(metric, set())
        missing, unknown = expected - present, present - expected
        if unknown:
            raise SubmissionError(
                f"predictions: {len(unknown)} {metric!r} row case id(s) are not in the test split,"
                f" e.g. {_some(unknown)}"
            )
        if missing:
            raise SubmissionError(
                f"predictions: {len(missing)} test case id(s) have no {metric!r} rows, e.g. {_some(missing)}"
            )


def _some(values: Iterable[str | None], count: int = 3) -> list:
    return sorted(values, key=str)[:count]


def scorable_protocols(predictions: pa.Table) -> tuple[str, ...]:
    """``token`` when rows carry post-edit token ids; ``generate`` when rows carry generations."""
    protocols = []
    if pc.any(pc.greater(pc.list_value_length(predictions["post"]), 0)).as_py():
        protocols.append("token")
    if pc.any(pc.not_equal(predictions["post_text"], "")).as_py():
        protocols.append("generate")
    if not protocols:
        raise SubmissionError("predictions: neither token ids nor generations are present; nothing to score")
    return tuple(protocols)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_name(text: str) -> str:
    """``text`` as one safe path component: ``org/model`` -> ``org--model``, a local path -> its last part."""
    text = text.strip() if is_hub_id(text.strip()) else Path(text.strip()).name
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text.replace("/", "--")).strip("-.")[:96]
    return name or "unnamed"


def default_card(run: Mapping, description: str = "") -> str:
    """A short model/method card from ``run.json`` (used when the run directory has no ``card.md``)."""
    lines = [
        f"# {run['model']} + {run['method']}",
        "",
        description.strip() or "Submitted with `kebench submit`.",
        "",
        f"- model: `{run['model']}` (family: `{run['model_family']}`)",
        f"- method: `{run['method']}`",
        f"- hyper-parameters: `{json.dumps(run.get('hyperparameters', {}), sort_keys=True)}`",
        f"- seed: `{run.get('seed')}`",
    ]
    return "\n".join(lines) + "\n"


def submit(
    run_dir: str | Path,
    repo_id: str,
    reference: Reference,
    api: HfApi,
    *,
    description: str = "",
    limits: Limits = DEFAULT_LIMITS,
    now: datetime | None = None,
) -> str:
    """Validate ``run_dir`` locally, then open a pull request on the requests dataset ``repo_id``.

    Returns the pull request URL. The files land under
    ``submissions/<model>/<method>/<UTC timestamp>/``.
    """
    submission = validate_run_dir(run_dir, reference, limits)
    run_dir = Path(run_dir)
    card = submission.card or default_card(submission.run, description)
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    folder = f"{SUBMISSIONS_ROOT}/{safe_name(submission.model)}/{safe_name(submission.method)}/{stamp}"
    operations = [
        CommitOperationAdd(f"{folder}/{RUN_FILE}", str(run_dir / RUN_FILE)),
        CommitOperationAdd(f"{folder}/{submission.predictions_file}", str(run_dir / submission.predictions_file)),
        CommitOperationAdd(f"{folder}/{CARD_FILE}", card.encode("utf-8")),
    ]
    commit = api.create_commit(
        repo_id,
        operations,
        commit_message=f"Submit {submission.model} + {submission.method}",
        commit_description=card,
        repo_type="dataset",
        create_pr=True,
    )
    logger.info("opened %s for %s", commit.pr_url, folder)
    return commit.pr_url
