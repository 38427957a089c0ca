"""``kebench run``: one method over one split, written to a run directory; and the main job.

A run directory holds

* ``predictions.jsonl`` -- one line per finished case, appended (and flushed) as it finishes;
  ``--resume`` skips the case ids found there, so a crashed run loses and redoes nothing;
* ``predictions.parquet`` -- all rows in the metric's schema (``metric.kebench.PREDICTION_FEATURES``);
* ``scores.json`` -- the metric's output for both protocols;
* ``run.json`` -- model, family, method + hyper-parameters, data + fingerprint, versions, seed,
  seconds per edit, peak memory, counts of failed cases.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from editors.cases import METRICS, CaseError, CaseSequence, EditCase
from editors.engine import Engine, EngineOptions
from editors.methods import EditMethod, get_method, method_names
from editors.presets import Preset, get_preset, select_hop, without_portability
from kebench_hf.constants import MODEL_DTYPES

logger = logging.getLogger(__name__)

PREDICTIONS_JSONL = "predictions.jsonl"
PREDICTIONS_PARQUET = "predictions.parquet"
SCORES = "scores.json"
RUN_INFO = "run.json"


@dataclass
class RunSettings:
    """Everything a run depends on (``model``/``data`` None: the built-in tiny LLaVA / default world)."""

    method: str
    out: Path
    model: str | None = None
    data: str | None = None
    config: str = "edit"
    split: str = "test"
    limit: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    sequential: int = 1
    resume: bool = False
    editor: Path | None = None
    seed: int = 0
    generate: bool = True
    bootstrap: int = 1000
    method_options: dict[str, Any] = field(default_factory=dict)
    #: editors.presets: "kebench" (ours) or "vlkeb" (the reference's evaluation)
    preset: str = "kebench"
    #: portability of this hop only; cases without such a question are dropped (the reference's argv)
    hop: int | None = None


def default_world() -> Path:
    """The ``default`` world's release directory, generated once under the cache."""
    from kebench_hf.paths import cache_dir
    from kebench_hf.world import build_world

    directory = cache_dir() / "worlds" / "default"
    if (directory / "kebench" / "eval.json").exists():
        return directory / "kebench"
    return build_world(directory, seed=0, scale="default")


def default_model() -> Path:
    """The tiny LLaVA pretrained on the default world, built once and cached."""
    from editors.pretrain import default_model as pretrained

    return pretrained("llava")


def load_split(data: str | os.PathLike, config: str, split: str) -> Any:
    """One split of KEBench ``config``; a missing split is a one-line error naming it."""
    from kebench_hf.builder import load_kebench

    try:
        return load_kebench(data, config, split=split)
    except (KeyError, ValueError) as error:
        if "split" not in str(error).lower():
            raise
        raise ValueError(f"data {data}: config {config!r} has no split {split!r} ({error})") from None


def _empty_split() -> Any:
    import datasets

    from kebench_hf.schema import features

    return datasets.Dataset.from_list([], features=features("edit"))


def finished_cases(path: Path) -> dict[str, dict[str, Any]]:
    """The case records of a predictions.jsonl; a torn last line (crash mid-write) is dropped."""
    records: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return records
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) - 1:
                logger.warning("%s: dropping the torn last line of an interrupted run", path)
                continue
            raise ValueError(f"{path}: line {number + 1} is not JSON") from None
        records[record["case_id"]] = record
    return records


def _rewrite_jsonl(path: Path, records: dict[str, dict[str, Any]]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(record) + "\n" for record in records.values()))
    os.replace(partial, path)


def _on_cuda(device: str) -> bool:
    return device.startswith("cuda") and torch.cuda.is_available()


def peak_memory_mib(device: str) -> float:
    if _on_cuda(device):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_name(device: str) -> str:
    """The accelerator's name (e.g. ``NVIDIA H100 80GB HBM3``), else the CPU architecture."""
    if _on_cuda(device):
        return torch.cuda.get_device_name(torch.device(device))
    return platform.machine()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_method(name: str, options: dict[str, Any]) -> EditMethod:
    cls = get_method(name)
    return cls(cls.config_class.from_dict(options) if options else None)


def model_family(model: str) -> str:
    """The adapter family of the model at ``model``, read from its config (no weights loaded)."""
    from transformers import AutoConfig

    from editors.adapters import adapter_class

    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"model {model!r}: cannot load its config ({error})") from None
    return adapter_class(config.model_type).family


def preset_rows(rows: Any, preset: Preset, hop: int | None) -> Any:
    """The split as the preset scores it: ``--hop k`` keeps the cases with a k-hop question (its
    first one only); the reference without a hop scores no portability."""
    if hop is not None:
        return select_hop(rows, hop)
    return without_portability(rows) if preset.one_hop_portability else rows


def _cases(rows: Any, skip: set[str]) -> Iterator[tuple[str, EditCase | CaseError]]:
    cases = CaseSequence(rows)
    case_ids = rows["case_id"]
    for index, case_id in enumerate(case_ids):
        if case_id in skip:
            continue
        try:
            yield case_id, cases[index]
        except CaseError as error:
            yield case_id, error


def run(settings: RunSettings) -> dict[str, Any]:
    """Run ``settings.method`` and write the run directory; returns ``{"token": ..., "generate": ...}`` scores."""
    from editors.adapters import check_device, load_adapter

    preset = get_preset(settings.preset)
    method = make_method(settings.method, settings.method_options)  # unknown method: fail before loading
    if settings.sequential < 1:
        raise ValueError(f"--sequential must be >= 1, got {settings.sequential}")
    if settings.sequential > 1 and not method.supports_sequential:
        raise ValueError(f"method {settings.method!r} does not support --sequential (it changes no weights)")
    if settings.dtype not in MODEL_DTYPES:
        raise ValueError(f"unknown dtype {settings.dtype!r}; expected one of {MODEL_DTYPES}")
    check_device(settings.device)  # before building the default world or model
    out = Path(settings.out)
    jsonl = out / PREDICTIONS_JSONL
    if jsonl.exists() and not settings.resume:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    data = str(settings.data) if settings.data else str(default_world())
    rows = load_split(data, settings.config, settings.split)
    if settings.limit is not None:
        rows = rows.select(range(min(settings.limit, len(rows))))
    rows = preset_rows(rows, preset, settings.hop)
    try:
        train = load_split(data, "edit", "train")
    except ValueError:
        train = _empty_split()
    model = str(settings.model) if settings.model else str(default_model())
    family = model_family(model)
    method = make_method(settings.method, {**preset.settings(settings.method, family), **settings.method_options})
    if preset.reference_prompt and settings.dtype != "float32" and settings.method.startswith("ft-"):
        raise ValueError(f"preset {preset.name!r}: the reference's FT runs the model in float32, not {settings.dtype}")

    seed_everything(settings.seed)
    if _on_cuda(settings.device):
        torch.cuda.reset_peak_memory_stats()  # this run's peak, not the process's
    adapter = load_adapter(model, device=settings.device, dtype=getattr(torch, settings.dtype))
    adapter.form = preset.prompt_form(method, family)
    started = time.perf_counter()
    method.prepare(adapter, CaseSequence(train), settings.editor)
    prepare_seconds = time.perf_counter() - started

    out.mkdir(parents=True, exist_ok=True)
    done = finished_cases(jsonl)
    _rewrite_jsonl(jsonl, done)  # drops a torn line before appending
    engine = Engine(adapter, method, EngineOptions(generate=settings.generate, seed=settings.seed))
    edit_seconds: list[float] = []
    progress = tqdm(total=len(rows), initial=len(done), desc=f"{settings.method}", unit="edit", disable=None)
    with jsonl.open("a") as sink:
        last = time.perf_counter()
        for result in engine.run(_cases(rows, set(done)), sequential=settings.sequential):
            now = time.perf_counter()
            seconds = now - last
            last = now
            record = {"case_id": result.case_id, "error": result.error, "seconds": seconds, "rows": result.rows}
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
            done[result.case_id] = record
            if result.error is None:
                edit_seconds.append(seconds)
            progress.update(1)
    progress.close()
    return finish(out, settings, adapter, method, rows, done, edit_seconds, prepare_seconds)


def finish(out: Path, settings: RunSettings, adapter: Any, method: EditMethod, rows: Any,
           done: dict[str, dict[str, Any]], edit_seconds: list[float], prepare_seconds: float) -> dict[str, Any]:
    """Write predictions.parquet, scores.json and run.json from the finished cases."""
    import pyarrow.parquet as pq

    from metric.kebench import score_predictions, to_table

    order = {case_id: index for index, case_id in enumerate(rows["case_id"])}
    records = sorted((r for r in done.values() if r["case_id"] in order), key=lambda r: order[r["case_id"]])
    table = to_table([row for record in records for row in record["rows"]])
    pq.write_table(table, out / PREDICTIONS_PARQUET)
    scores = {
        protocol: score_predictions(table, protocol=protocol, bootstrap=settings.bootstrap, seed=settings.seed)
        for protocol in ("token", "generate")
    }
    for result in scores.values():
        result["preset"] = settings.preset
    (out / SCORES).write_text(json.dumps(scores, indent=2) + "\n")
    failed = [record["case_id"] for record in records if record["error"]]
    (out / RUN_INFO).write_text(json.dumps(run_info(settings, adapter, method, rows, records, failed,
                                                    edit_seconds, prepare_seconds), indent=2) + "\n")
    if failed:
        logger.warning("%d case(s) failed and are counted as skipped: %s", len(failed), ", ".join(failed[:10]))
    return scores


def run_info(settings: RunSettings, adapter: Any, method: EditMethod, rows: Any, records: list[dict[str, Any]],
             failed: list[str], edit_seconds: list[float], prepare_seconds: float) -> dict[str, Any]:
    import datasets
    import transformers

    import kebench_hf

    try:
        from kebench_hf.builder import dataset_fingerprint

        fingerprint = dataset_fingerprint(rows)
    except ImportError:
        fingerprint = None
    all_seconds = [record["seconds"] for record in records if not record["error"]]
    return {
        "model": str(settings.model or default_model()),
        "model_family": adapter.family,
        "model_class": type(adapter.model).__name__,
        "method": method.name,
        "hyperparameters": method.config.to_dict(),
        "method_info": method.run_info(),
        "editor": str(settings.editor) if settings.editor else None,
        "data": str(settings.data or default_world()),
        "config": settings.config,
        "split": settings.split,
        "limit": settings.limit,
        "dataset_fingerprint": fingerprint,
        "sequential": settings.sequential,
        "preset": get_preset(settings.preset).describe(),
        "protocols": ["token", "generate"] if settings.generate else ["token"],
        "hop": settings.hop,
        "average": get_preset(settings.preset).average(method.name),
        "reference_targets": {
            "queries": len(adapter.reference_targets),
            "differ_from_in_context": sum(adapter.reference_targets.values()),
        },
        "device": settings.device,
        "device_name": device_name(settings.device),
        "dtype": settings.dtype,
        "seed": settings.seed,
        "generate": settings.generate,
        "cases": len(records),
        "failed_cases": len(failed),
        "failed_case_ids": failed,
        "seconds_per_edit": float(np.mean(all_seconds)) if all_seconds else None,
        "seconds_per_edit_this_session": float(np.mean(edit_seconds)) if edit_seconds else None,
        "prepare_seconds": prepare_seconds,
        "peak_memory_mib": peak_memory_mib(settings.device),
        "versions": {
            "kebench_hf": kebench_hf.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "datasets": datasets.__version__,
            "python": platform.python_version(),
        },
    }


# -- the main job -------------------------------------------------------------------------------
TABLE_HEADERS = ("Rel.", "T-Gen.", "I-Gen.", "T-Loc.", "I-Loc.", "Port.")


def score_cells(scores: dict[str, float | None]) -> str:
    """The six scores (the metric's ``scores``) as Markdown table cells, in the paper's order."""
    return " | ".join("-" if scores[name] is None else f"{scores[name]:.1f}" for name in METRICS)


def score_table(results: dict[str, dict[str, Any]], protocol: str) -> str:
    """A Markdown table like the paper's Table 3: one row per method, the six scores."""
    lines = [f"| method ({protocol}) | " + " | ".join(TABLE_HEADERS) + " |", "|---" * (len(TABLE_HEADERS) + 1) + "|"]
    for name, scores in results.items():
        lines.append(f"| {name} | {score_cells(scores[protocol]['scores'])} |")
    return "\n".join(lines)


def plot_scores(results: dict[str, dict[str, Any]], path: Path) -> Path:
    """Grouped bars of the six scores per method, one panel per protocol (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    width = 0.8 / max(1, len(results))
    for axis, protocol in zip(axes, ("token", "generate"), strict=True):
        for index, (name, scores) in enumerate(results.items()):
            values = [scores[protocol]["scores"][c] or 0.0 for c in METRICS]
            axis.bar(np.arange(len(METRICS)) + index * width, values, width, label=name)
        axis.set_xticks(np.arange(len(METRICS)) + width * (len(results) - 1) / 2, TABLE_HEADERS)
        axis.set_title(f"{protocol} protocol")
        axis.set_ylim(0, 100)
    axes[0].set_ylabel("score (%)")
    axes[1].legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main_job(out_root: Path | None = None, methods: list[str] | None = None, limit: int | None = None) -> Path:
    """Every registered method on the default world's test split with the tiny LLaVA; resumable."""
    from kebench_hf.paths import cache_dir

    root = Path(out_root) if out_root else cache_dir() / "runs" / "main"
    model, data = default_model(), default_world()
    results = {}
    for name in methods or method_names():
        settings = RunSettings(method=name, out=root / name, model=str(model), data=str(data), limit=limit, resume=True)
        results[name] = run(settings)
    root.mkdir(parents=True, exist_ok=True)
    tables = "\n\n".join(score_table(results, protocol) for protocol in ("token", "generate"))
    (root / "table.md").write_text(tables + "\n")
    plot_scores(results, root / "scores.png")
    return root
