"""The results dataset (one row per submission and protocol) and hub-native ``.eval_results`` files."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from datasets import Features, List, Value
from huggingface_hub import EvalResultEntry, eval_result_entries_to_yaml

from kebench_hf.leaderboard.submission import (
    DEFAULT_AVERAGE,
    DEFAULT_PRESET,
    LEADERBOARD_CONFIG,
    ONEHOP_CONFIG,
    ValidatedSubmission,
)
from metric.kebench import DISPLAY_NAMES, EDIT_ONEHOP, PROTOCOLS, SCORES

RESULTS_FILE = "data/results.parquet"
EVAL_RESULTS_FILE = ".eval_results/kebench.yaml"
#: rows are ranked only among rows equal in these (EasyEdit's ``metric_meta.comparable_group``)
COMPARABLE_GROUP = ("preset", "protocol")
#: an edit-one-hop run fills the edit-one-hop column of the edit runs equal to it in these
ONEHOP_MATCH = ("model", "method", "preset", "protocol")
#: the columns it fills
ONEHOP_COLUMNS = (EDIT_ONEHOP, f"{EDIT_ONEHOP}_ci_low", f"{EDIT_ONEHOP}_ci_high")
#: schema metadata key holding {score column: display name}, so that the self-contained app titles
#: the columns as the metric does without importing it
DISPLAY_NAMES_KEY = b"kebench_display_names"

RESULT_FEATURES = Features(
    {
        "submission": Value("string"),
        "model": Value("string"),
        "model_family": Value("string"),
        "method": Value("string"),
        "config": Value("string"),
        "preset": Value("string"),
        "protocol": Value("string"),
        "average": Value("string"),
        **{name: Value("float64") for name in SCORES},
        **{f"{name}_ci_low": Value("float64") for name in SCORES},
        **{f"{name}_ci_high": Value("float64") for name in SCORES},
        "portability_by_hop": List({"hop": Value("int32"), "score": Value("float64")}),
        "edit_onehop_submission": Value("string"),
        "cases": Value("int64"),
        "seconds_per_edit": Value("float64"),
        "date": Value("string"),
        "link": Value("string"),
        "predictions_sha256": Value("string"),
        "dataset_fingerprint": Value("string"),
    }
)
RESULTS_SCHEMA: pa.Schema = RESULT_FEATURES.arrow_schema.with_metadata(
    {**(RESULT_FEATURES.arrow_schema.metadata or {}), DISPLAY_NAMES_KEY: json.dumps(DISPLAY_NAMES).encode()}
)
#: what a results row written before a column existed holds in it
_OLD_ROW_DEFAULTS = {"preset": DEFAULT_PRESET, "average": DEFAULT_AVERAGE, "config": LEADERBOARD_CONFIG}

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
(`token`: teacher-forced answer-token accuracy; `generate`: exact match of greedy generations),
tagged with the preset the run was made under (`kebench`, or `vlkeb`: the reference code's
evaluation). Rows of different presets or protocols are not comparable and are never ranked
together. A run on the `edit_onehop` config (its `test` split) is scored on edit-one-hop only: its
row keeps `config: edit_onehop`, and its score fills the `edit_onehop` column of the `edit` rows of
the same model, method, preset and protocol (the newest such run; `edit_onehop_submission` names it).
The rankings show the `edit` rows.

{count} rows from {submissions} submissions.

| column | meaning |
|---|---|
| `submission` | folder of the submission in the requests dataset |
| `model`, `model_family`, `method` | what was edited and how (from the submission's `run.json`) |
| `config` | `edit`, or `edit_onehop` (a run scored on edit-one-hop only) |
| `preset` | `kebench` or `vlkeb`: how the run built its queries (from its `run.json`; `kebench` when absent) |
| `protocol` | `token` or `generate` |
| `average` | `case` (mean over cases) or `token` (micro mean over answer tokens, the reference's KE averaging) |
| `reliability` ... `portability`, `edit_onehop` | the scores, percent; null when the metric has no cases |
| `<metric>_ci_low`, `<metric>_ci_high` | bootstrap 95% confidence interval |
| `portability_by_hop` | portability per number of hops |
| `edit_onehop_submission` | on an `edit` row: the `edit_onehop` submission its edit-one-hop score comes from |
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
            "config": submission.config,
            "preset": output["preset"],
            "protocol": protocol,
            "average": output["average"],
            "portability_by_hop": [
                {"hop": int(hop), "score": _number(score)}
                for hop, score in sorted((output.get("portability_by_hop") or {}).items(), key=lambda kv: int(kv[0]))
            ],
            "edit_onehop_submission": None,
            "cases": int(max((output.get("counts") or {}).values(), default=0)),
            "seconds_per_edit": _number(run.get("seconds_per_edit")),
            "date": date,
            "link": link,
            "predictions_sha256": submission.predictions_sha256,
            "dataset_fingerprint": run["dataset_fingerprint"],
        }
        for name in SCORES:
            low, high = ci95.get(name) or (None, None)
            row[name] = _number(output["scores"].get(name))
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = _number(low), _number(high)
        rows.append(row)
    return rows


def fill_edit_onehop(rows: Iterable[Mapping]) -> list[dict]:
    """``rows`` with each edit row's edit-one-hop score (and interval) taken from the newest
    edit-one-hop row equal to it in :data:`ONEHOP_MATCH` (none: null); ``edit_onehop_submission``
    names where it came from. Edit-one-hop rows stay as they are."""
    rows = [dict(row) for row in rows]
    newest: dict[tuple, dict] = {}
    for row in sorted((row for row in rows if row["config"] == ONEHOP_CONFIG),
                      key=lambda row: (row["date"], row["submission"])):
        newest[tuple(row[name] for name in ONEHOP_MATCH)] = row
    for row in rows:
        if row["config"] == LEADERBOARD_CONFIG:
            source = newest.get(tuple(row[name] for name in ONEHOP_MATCH))
            row.update({column: source[column] if source else None for column in ONEHOP_COLUMNS})
            row["edit_onehop_submission"] = source["submission"] if source else None
    return rows


def leaderboard_rows(rows: Iterable[Mapping]) -> list[dict]:
    """The rows the rankings show: the edit runs, their edit-one-hop column filled."""
    return [row for row in fill_edit_onehop(rows) if row["config"] == LEADERBOARD_CONFIG]


def results_table(rows: Iterable[Mapping]) -> pa.Table:
    """Rows in a stable order (date, submission, protocol), so the same rows give the same bytes; the
    edit rows' edit-one-hop column filled (:func:`fill_edit_onehop`)."""
    ordered = sorted(fill_edit_onehop(rows),
                     key=lambda row: (row["date"], row["submission"], PROTOCOLS.index(row["protocol"])))
    return pa.Table.from_pylist(ordered, schema=RESULTS_SCHEMA)


def results_parquet(rows: Iterable[Mapping]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(results_table(rows), sink)
    return sink.getvalue()


def read_results(path: str | Path) -> list[dict]:
    """The results rows; a file written before a column existed reads with its default (or null)."""
    table = pq.read_table(path)
    rows = []
    for row in table.to_pylist():
        rows.append({name: row.get(name, _OLD_ROW_DEFAULTS.get(name)) for name in RESULTS_SCHEMA.names})
    return pa.Table.from_pylist(rows, schema=RESULTS_SCHEMA).to_pylist()


def ranked_groups(rows: Iterable[Mapping]) -> dict[tuple[str, ...], list[Mapping]]:
    """Rows by comparable group (preset, protocol), each ranked by reliability, best first."""
    groups: dict[tuple[str, ...], list[Mapping]] = {}
    for row in rows:
        groups.setdefault(tuple(row[name] for name in COMPARABLE_GROUP), []).append(row)
    return {
        key: sorted(members, key=lambda row: (row["reliability"] is None, -(row["reliability"] or 0.0), row["submission"]))
        for key, members in sorted(groups.items())
    }


def _ranking_table(rows: list[Mapping]) -> str:
    def show(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [
        "| # | model | method | average | " + " | ".join(DISPLAY_NAMES[name] for name in SCORES) + " |",
        "|---" * (len(SCORES) + 4) + "|",
    ]
    for rank, row in enumerate(rows, start=1):
        cells = [str(rank), row["model"], row["method"], row["average"], *(show(row[name]) for name in SCORES)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_card(rows: list[Mapping]) -> str:
    card = CARD.format(
        results_file=RESULTS_FILE,
        count=len(rows),
        submissions=len({row["submission"] for row in rows}),
    )
    sections = [
        f"### preset `{preset}`, protocol `{protocol}`\n\n{_ranking_table(members)}\n"
        for (preset, protocol), members in ranked_groups(leaderboard_rows(rows)).items()
    ]
    if sections:
        card += "\n## Rankings\n\nOne table per preset and protocol, by reliability.\n\n" + "\n".join(sections)
    return card


def eval_results_yaml(rows: Iterable[Mapping], dataset_id: str) -> str:
    """The ``.eval_results`` file of one model: one entry per method, protocol and metric with a score
    (of its edit rows, the edit-one-hop score filled in from its edit-one-hop runs)."""
    rows = leaderboard_rows(rows)
    entries = [
        EvalResultEntry(
            dataset_id=dataset_id,
            task_id=name,
            value=round(row[name], 2),
            date=row["date"],
            source_url=row["link"],
            source_name="KEBench leaderboard",
            notes=f"method={row['method']}, preset={row['preset']}, protocol={row['protocol']}",
        )
        for row in sorted(
            rows, key=lambda row: (row["method"], row["preset"], row["protocol"], row["date"], row["submission"])
        )
        for name in SCORES
        if row[name] is not None
    ]
    return yaml.safe_dump(eval_result_entries_to_yaml(entries), sort_keys=False)
