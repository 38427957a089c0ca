"""Synthetic run directories in the real formats, for the leaderboard's tests and benchmark.

The predictions follow the metric's fixed schema with realistic shapes (answer tokens, full-sequence
locality rows with top-10 image locality); ``skill`` is the chance that a post-edit token hits its
target and that a locality position keeps its pre-edit top-k, so scores land near ``100 * skill``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kebench_hf.leaderboard.submission import LEADERBOARD_SPLIT, RUN_FILE, Reference
from metric.kebench import PREDICTION_SCHEMA, SCORES

VOCAB = 32_000


@dataclass(frozen=True)
class Shapes:
    """Positions per row: answer tokens, and whole locality sequences (image positions included)."""

    answer_tokens: int = 3
    text_locality_positions: int = 24
    image_locality_positions: int = 96
    image_locality_k: int = 10


def _nested(values: np.ndarray, rows: int, positions: int, k: int) -> pa.Array:
    """``rows`` lists of ``positions`` lists of ``k`` ints from a flat array."""
    inner = pa.ListArray.from_arrays(pa.array(np.arange(0, rows * positions + 1) * k, pa.int32()), pa.array(values))
    return pa.ListArray.from_arrays(pa.array(np.arange(0, rows + 1) * positions, pa.int32()), inner)


def _flat_lists(values: np.ndarray, rows: int, length: int) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(np.arange(0, rows + 1) * length, pa.int32()), pa.array(values))


def _group(
    rng: np.random.Generator,
    case_ids: list[str],
    metric: str,
    hops: list[int],
    skill: float,
    positions: int,
    k: int,
    generate: bool,
) -> pa.Table:
    rows = len(case_ids)
    locality = metric.endswith("locality")
    pre = rng.integers(0, VOCAB, size=rows * positions * k)
    if locality:
        keep = np.repeat(rng.random(rows * positions) < skill, k)
        post = np.where(keep, pre, (pre + 1) % VOCAB)
        target = np.empty(0, dtype=np.int64)
        target_length, span = 0, np.tile([max(positions - 2, 0), positions], rows)
    else:
        target = rng.integers(0, VOCAB, size=rows * positions)
        hit = rng.random(rows * positions) < skill
        post = np.where(hit, target, (target + 1) % VOCAB)
        target_length, span = positions, np.empty(0, dtype=np.int64)
    answers = [f"{metric} answer of {case_id}" for case_id in case_ids]
    solved = rng.random(rows) < skill
    post_text = [answer if ok else "something else" for answer, ok in zip(answers, solved, strict=True)]
    pre_text = ["before" for _ in case_ids]
    if locality:
        post_text = ["before" if ok else "changed" for ok in solved]
    return pa.Table.from_arrays(
        [
            pa.array(case_ids),
            pa.array([metric] * rows),
            pa.array(hops, pa.int32()),
            _flat_lists(target, rows, target_length),
            _flat_lists(span, rows, 2 if locality else 0),
            _nested(pre, rows, positions, k),
            _nested(post, rows, positions, k),
            pa.array(answers),
            pa.array(pre_text if generate else [""] * rows),
            pa.array(post_text if generate else [""] * rows),
            pa.array([[] for _ in case_ids], pa.list_(pa.string())),
        ],
        schema=PREDICTION_SCHEMA,
    )


def synthetic_predictions(
    reference: Reference,
    portability_hops: Mapping[str, list[int]],
    *,
    skill: float,
    seed: int,
    generate: bool = True,
    shapes: Shapes = Shapes(),
) -> pa.Table:
    """Predictions for every case of ``reference`` (portability rows: one per listed hop of a case)."""
    rng = np.random.default_rng(seed)
    groups = []
    for metric in SCORES:
        case_ids = sorted(reference.case_ids.get(metric, ()))
        if metric == "portability":
            hops = [hop for case_id in case_ids for hop in portability_hops.get(case_id, [1])]
            case_ids = [case_id for case_id in case_ids for _ in portability_hops.get(case_id, [1])]
        else:
            hops = [0] * len(case_ids)
        if not case_ids:
            continue
        positions, k = shapes.answer_tokens, 1
        if metric == "t_locality":
            positions = shapes.text_locality_positions
        elif metric == "i_locality":
            positions, k = shapes.image_locality_positions, shapes.image_locality_k
        groups.append(_group(rng, case_ids, metric, hops, skill, positions, k, generate))
    return pa.concat_tables(groups)


def synthetic_run(
    run_dir: str | Path,
    reference: Reference,
    portability_hops: Mapping[str, list[int]],
    *,
    model: str,
    method: str,
    model_family: str = "llava",
    skill: float = 0.8,
    seed: int = 0,
    generate: bool = True,
    shapes: Shapes = Shapes(),
    preset: str = "kebench",
) -> Path:
    """A run directory as ``kebench run`` writes it: ``predictions.parquet`` and ``run.json`` (its fields
    that the leaderboard reads)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    table = synthetic_predictions(
        reference, portability_hops, skill=skill, seed=seed, generate=generate, shapes=shapes
    )
    pq.write_table(table, run_dir / "predictions.parquet")
    run = {
        "model": model,
        "model_family": model_family,
        "method": method,
        "preset": preset,
        "hyperparameters": {"steps": 10, "lr": 1e-4},
        "data": "synthetic",
        "config": reference.config,
        "split": LEADERBOARD_SPLIT,
        "dataset_fingerprint": reference.fingerprint,
        "seed": seed,
        "generate": generate,
        "seconds_per_edit": 0.5,
        "peak_memory_mib": 512.0,
    }
    (run_dir / RUN_FILE).write_text(json.dumps(run, indent=2))
    return run_dir
