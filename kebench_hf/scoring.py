"""Scoring predictions files, behind ``kebench score`` and ``kebench push-metric`` (see
:mod:`kebench_hf.scoring_commands`).

The math lives in ``metric/kebench.py``; this module reads files and talks to people and the hub.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

import metric
from kebench_hf.hub import check_repo_id, push_folder
from metric.kebench import PREDICTION_SCHEMA, SCORES, to_table

logger = logging.getLogger(__name__)

METRIC_DIR = Path(metric.__file__).resolve().parent
#: what a metric Space holds; ``__init__.py`` only makes the folder a package inside this repo
METRIC_SPACE_FILES = ("kebench.py", "README.md", "requirements.txt", "app.py")
PARQUET_SUFFIXES = (".parquet",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def read_predictions(path: str | Path) -> pa.Table:
    """A predictions file (Parquet, or JSON Lines: one row object per line) as a validated table."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"predictions file {path} is empty")
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        try:
            table = pq.read_table(path)
        except pa.ArrowException as error:
            raise ValueError(f"predictions file {path} is not readable Parquet: {error}") from None
    elif suffix in JSONL_SUFFIXES:
        table = _read_jsonl(path)
    else:
        raise ValueError(
            f"predictions file {path} has an unknown extension {suffix!r}; expected one of "
            f"{PARQUET_SUFFIXES + JSONL_SUFFIXES}"
        )
    try:
        return to_table(table)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _read_jsonl(path: Path) -> pa.Table | list[dict]:
    """Arrow's reader when the file is clean; otherwise a line-by-line read whose rows let
    :func:`to_table` name the bad row and column."""
    options = pa_json.ParseOptions(explicit_schema=PREDICTION_SCHEMA, unexpected_field_behavior="ignore")
    try:
        return pa_json.read_json(path, parse_options=options)
    except pa.ArrowException as error:
        logger.debug("arrow could not read %s (%s); reading it line by line", path, error)
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {line_number} (row {len(rows)}) is not JSON: {error}") from None
    return rows


def format_table(result: dict) -> str:
    """One protocol's scores as an aligned text table, headed by what produced them."""
    lines = [
        f"protocol: {result['protocol']}  preset: {result['preset']}  average: {result['average']}",
        f"{'metric':<28}{'score':>8}  {'95% CI':<17}{'cases':>7}{'skipped':>9}",
    ]

    def line(name: str, score: float | None, ci: list | None, cases: object = "", skipped: object = "") -> str:
        shown = "-" if score is None else f"{score:.2f}"
        interval = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
        return f"{name:<28}{shown:>8}  {interval:<17}{cases!s:>7}{skipped!s:>9}".rstrip()

    for name in SCORES:
        lines.append(line(name, result["scores"][name], result["ci95"][name], result["counts"][name], result["skipped"][name]))
    for hop, score in result["portability_by_hop"].items():
        lines.append(line(f"  portability {hop}-hop", score, None))
    for name, score in result["locality_answer_only"].items():
        if score is not None:
            lines.append(line(f"  {name} (answer only)", score, None))
    return "\n".join(lines)


def push_metric(repo_id: str, *, private: bool = False, token: str | None = None, endpoint: str | None = None) -> str:
    """Publish ``metric/`` as a gradio Space that ``evaluate.load(repo_id)`` loads; returns the commit URL.

    ``evaluate`` fetches ``<name>.py`` from a Space named ``org/<name>``, so the script is uploaded
    under the Space's name.
    """
    name = check_repo_id(repo_id).split("/")[1]
    with tempfile.TemporaryDirectory() as staging:
        for file_name in METRIC_SPACE_FILES:
            target = f"{name}.py" if file_name == "kebench.py" else file_name
            shutil.copyfile(METRIC_DIR / file_name, Path(staging) / target)
        info = push_folder(
            staging,
            repo_id,
            repo_type="space",
            space_sdk="gradio",
            private=private,
            message="Publish the KEBench evaluate metric",
            token=token,
            endpoint=endpoint,
        )
    logger.info("published %s as Space %s", METRIC_DIR, repo_id)
    return info.commit_url
