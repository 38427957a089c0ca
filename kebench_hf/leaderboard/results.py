"""The results dataset (one row per submission and protocol) and hub-native ``.eval_results`` files."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from datasets import Features, List, Value
from huggingface_hub import EvalResultEntry, eval_result_entries_to_yaml

from kebench_hf.leaderboard.submission import ValidatedSubmission
from metric.kebench import METRICS, PROTOCOLS

RESULTS_FILE = "data/results.parquet"
EVAL_RESULTS_FILE = ".eval_results/kebench.yaml"

RESULT_FEATURES = Features(
    {
        "submission": Value("string"),
        "model": Value("string"),
        "model_family": Value("string"),
        "method": Value("string"),
        "protocol": Value("string"),
        **{name: Value("float64") for name in METRICS},
        **{f"{name}_ci_low": Value("float64") for name in METRICS},
        **{f"{name}_ci_high": Value("float64") for name in METRICS},
        "portability_by_hop": List({"hop": Value("int32"), "score": Value("float64")}),
        "cases": Value("int64"),
        "seconds_per_edit": Value("float64"),
        "date": Value("string"),
        "link": Value("string"),
        "predictions_sha256": Value("string"),
        "dataset_fingerprint": Value("string"),
    }
)
RESULTS_SCHEMA: pa.Schema = RESULT_FEATURES.arrow_schema

CARD = """---
license: apache-2.0
pretty_name: KEBench leaderboard results
tags:
- leaderboard
- knowledge-editing
- vision-language
configs:
- config_name: default
  data_files:
  - split: train
    path: {results_file}
---

# KEBench leaderboard results

Written by the KEBench scoring service (`kebench leaderboard update`): every accepted submission of
the requests dataset, re-scored from its predictions with the KEBench metric on the `edit` config's
`test` split. Self-reported numbers are never used. One row per submission and protocol
(`token`: teacher-forced token accuracy as in VLKEB; `generate`: exact match of greedy generations).

{count} rows from {submissions} submissions.

| column | meaning |
|---|---|
| `submission` | folder of the submission in the requests dataset |
| `model`, `model_family`, `method` | what was edited and how (from the submission's `run.json`) |
| `protocol` | `token` or `generate` |
| `reliability` ... `portability` | the six scores, percent; null when the metric has no cases |
| `<metric>_ci_low`, `<metric>_ci_high` | bootstrap 95% confidence interval |
| `portability_by_hop` | portability per number of hops |
| `cases` | edit cases scored |
| `seconds_per_edit` | as reported by the run (timing is not re-measured) |
| `date` | when the submission was opened |
| `link` | the submission's pull request |
| `predictions_sha256` | hash of the predictions file (duplicates are rejected) |
| `dataset_fingerprint` | the dataset version scored against |
"""


def _number(value) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def result_rows(
    submission: ValidatedSubmission, folder: str, scores: Mapping[str, Mapping], date: str, link: str
) -> list[dict]:
    """One results row per protocol from the metric's outputs (``{protocol: compute(...) output}``)."""
    run = submission.run
    rows = []
    for protocol, output in scores.items():
        ci95 = output.get("ci95") or {}
        row = {
            "submission": folder,
            "model": run["model"],
            "model_family": run["model_family"],
            "method": run["method"],
            "protocol": protocol,
            "portability_by_hop": [
                {"hop": int(hop), "score": _number(score)}
                for hop, score in sorted((output.get("portability_by_hop") or {}).items(), key=lambda kv: int(kv[0]))
            ],
            "cases": int(max((output.get("counts") or {}).values(), default=0)),
            "seconds_per_edit": _number(run.get("seconds_per_edit")),
            "date": date,
            "link": link,
            "predictions_sha256": submission.predictions_sha256,
            "dataset_fingerprint": run["dataset_fingerprint"],
        }
        for name in METRICS:
            low, high = ci95.get(name) or (None, None)
            row[name] = _number(output["scores"].get(name))
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = _number(low), _number(high)
        rows.append(row)
    return rows


def results_table(rows: Iterable[Mapping]) -> pa.Table:
    """Rows in a stable order (date, submission, protocol), so the same rows give the same bytes."""
    ordered = sorted(rows, key=lambda row: (row["date"], row["submission"], PROTOCOLS.index(row["protocol"])))
    return pa.Table.from_pylist(ordered, schema=RESULTS_SCHEMA)


def results_parquet(rows: Iterable[Mapping]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(results_table(rows), sink)
    return sink.getvalue()


def read_results(path: str | Path) -> list[dict]:
    return pq.read_table(path, schema=RESULTS_SCHEMA).to_pylist()


def results_card(rows: list[Mapping]) -> str:
    return CARD.format(
        results_file=RESULTS_FILE,
        count=len(rows),
        submissions=len({row["submission"] for row in rows}),
    )


def eval_results_yaml(rows: Iterable[Mapping], dataset_id: str) -> str:
    """The ``.eval_results`` file of one model: one entry per method, protocol and metric with a score."""
    entries = [
        EvalResultEntry(
            dataset_id=dataset_id,
            task_id=name,
            value=round(row[name], 2),
            date=row["date"],
            source_url=row["link"],
            source_name="KEBench leaderboard",
            notes=f"method={row['method']}, protocol={row['protocol']}",
        )
        for row in sorted(rows, key=lambda row: (row["method"], row["protocol"], row["date"], row["submission"]))
        for name in METRICS
        if row[name] is not None
    ]
    return yaml.safe_dump(eval_result_entries_to_yaml(entries), sort_keys=False)
