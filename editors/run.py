"""``kebench run``: one method over one split, written to a run directory; and the main job.

A run directory holds

* ``predictions.jsonl`` -- one line per finished case, appended (and flushed) as it finishes;
  ``--resume`` skips the case ids found there, so a crashed run loses and redoes nothing;
* ``predictions.parquet`` -- all rows in the metric's schema (``metric.kebench.PREDICTION_FEATURES``);
* ``scores.json`` -- the metric's output for both protocols;
* ``run.json`` -- model, family, method + hyper-parameters, data + fingerprint, versions, seed,
  the editing protocol, seconds per edit, peak memory, counts of failed cases.

Editing protocols: each edit scored alone and restored (the default); ``--sequential N`` (ours:
groups of N edits applied together, all N scored, restored); ``--sequential-gap G`` (VLKEB's
``test_sequential_editing.py``: see :meth:`editors.engine.Engine.run_gap`), whose runs for several G
:func:`lifelong` draws as curves.
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from editors.abilities import check_model
from editors.cases import CaseError, CaseSequence, EditCase
from editors.engine import Engine, EngineOptions
from editors.methods import EditMethod, get_method, method_names
from editors.presets import Preset, get_preset, select_hop, without_portability
from editors.queries import DEFAULT_CONFIG, config_metrics, metric_titles
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
    config: str = DEFAULT_CONFIG
    split: str = "test"
    limit: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    sequential: int = 1
    #: VLKEB's sequential-gap protocol with this gap G (None: not used); ``limit`` then counts the
    #: cases scored, and the G cases after them are edited only
    sequential_gap: int | None = None
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
    #: let a model whose repository ships its own code run it (``--trust-remote-code``)
    trust_remote_code: bool = False


def default_world() -> Path:
    """The ``default`` world's release directory, generated once under the cache."""
    from kebench_hf.world import default_world as generated

    return generated()


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


def model_family(model: str, trust_remote_code: bool = False) -> str:
    """The adapter family of the model at ``model``, read from its config (no weights loaded)."""
    from editors.adapters import adapter_class, load_config

    config = load_config(model, trust_remote_code)
    return adapter_class(config.model_type, config).family


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
    gap = settings.sequential_gap
    if gap is not None:
        if gap < 0:
            raise ValueError(f"--sequential-gap must be >= 0, got {gap}")
        if not method.supports_sequential:
            raise ValueError(f"method {settings.method!r} does not support --sequential-gap (it changes no weights)")
        if settings.sequential > 1:
            raise ValueError("--sequential and --sequential-gap are two protocols; choose one")
        if settings.resume:
            raise ValueError("--sequential-gap runs cannot --resume: the edited model of an interrupted run is not saved")
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
        # the gap protocol edits G more cases than it scores
        rows = rows.select(range(min(settings.limit + (gap or 0), len(rows))))
    rows = preset_rows(rows, preset, settings.hop)
    scored = len(rows) if gap is None else min(settings.limit or len(rows), len(rows) - gap)
    if gap is not None and scored < 1:
        raise ValueError(f"--sequential-gap {gap} needs more than {gap} cases; the split has {len(rows)}")
    try:
        train = load_split(data, "edit", "train")
    except ValueError:
        train = _empty_split()
    model = str(settings.model) if settings.model else str(default_model())
    logger.info(check_model(model, default=not settings.model))
    family = model_family(model, settings.trust_remote_code)
    method = make_method(settings.method, {**preset.settings(settings.method, family), **settings.method_options})
    if preset.reference_prompt and settings.dtype != "float32" and settings.method.startswith("ft-"):
        raise ValueError(f"preset {preset.name!r}: the reference's FT runs the model in float32, not {settings.dtype}")

    seed_everything(settings.seed)
    if _on_cuda(settings.device):
        torch.cuda.reset_peak_memory_stats()  # this run's peak, not the process's
    adapter = load_adapter(model, device=settings.device, dtype=getattr(torch, settings.dtype),
                           trust_remote_code=settings.trust_remote_code)
    adapter.form = preset.prompt_form(method, family)
    started = time.perf_counter()
    method.prepare(adapter, CaseSequence(train), settings.editor)
    prepare_seconds = time.perf_counter() - started

    out.mkdir(parents=True, exist_ok=True)
    done = finished_cases(jsonl)
    _rewrite_jsonl(jsonl, done)  # drops a torn line before appending
    engine = Engine(adapter, method, EngineOptions(generate=settings.generate, seed=settings.seed, config=settings.config))
    if gap is None:
        results = engine.run(_cases(rows, set(done)), sequential=settings.sequential)
    else:
        results = engine.run_gap(list(_cases(rows, set())), gap, scored)
    edit_seconds: list[float] = []
    progress = tqdm(total=scored, initial=len(done), desc=f"{settings.method}", unit="edit", disable=None)
    with jsonl.open("a") as sink:
        last = time.perf_counter()
        for result in results:
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
    # the run metadata travels with the predictions: a file scored elsewhere still says how it was made
    about = {"preset": settings.preset, "protocols": ["token", "generate"] if settings.generate else ["token"],
             "method": method.name, "model_family": adapter.family, "config": settings.config, "hop": settings.hop}
    pq.write_table(table.replace_schema_metadata({"kebench": json.dumps(about)}), out / PREDICTIONS_PARQUET)
    preset = get_preset(settings.preset)
    scores = {
        protocol: score_predictions(table, protocol=protocol, bootstrap=settings.bootstrap, seed=settings.seed,
                                    preset=preset.name,
                                    # micro-averaging is over answer tokens: the token protocol's only
                                    average=preset.average(method.name) if protocol == "token" else "case")
        for protocol in ("token", "generate")
    }
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
        # ours, a plugin's (its package), or the generic one
        "model_adapter": f"{type(adapter).__module__}:{type(adapter).__qualname__}",
        "trust_remote_code": settings.trust_remote_code,
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
        "edit_protocol": edit_protocol(settings, rows, records),
        "preset": settings.preset,
        "preset_settings": get_preset(settings.preset).describe(),
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


def edit_protocol(settings: RunSettings, rows: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
    """How the edits of a run were applied and undone (run.json's ``edit_protocol``)."""
    if settings.sequential_gap is not None:
        scored = {record["case_id"] for record in records}
        return {
            "name": "sequential_gap",
            "gap": settings.sequential_gap,
            "scored_cases": len(scored),
            "edit_only_case_ids": [case_id for case_id in rows["case_id"] if case_id not in scored],
            "about": "VLKEB's test_sequential_editing.py: every pre-edit output on the unedited model first; "
                     "edits accumulate in order, never restored during the run; case i is scored after edits "
                     "0..i+gap; the gap cases after the last scored one are edited only; all restored at the end",
        }
    if settings.sequential > 1:
        return {"name": "sequential_groups", "group": settings.sequential,
                "about": "ours (not the reference's): groups of N edits applied together, all N cases scored on "
                         "the model holding the group's edits, then restored"}
    return {"name": "single", "about": "each case edited alone, scored, and the model restored before the next"}


# -- the main job -------------------------------------------------------------------------------
def table_columns(config: str = DEFAULT_CONFIG) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(scores, titles)`` of a table's columns: the scores of ``config``'s cases (:mod:`editors.queries`)."""
    metrics = config_metrics(config)
    return metrics, metric_titles(metrics)


def score_cells(scores: dict[str, float | None], config: str = DEFAULT_CONFIG) -> str:
    """The scores of ``config``'s cases (the metric's ``scores``) as Markdown table cells, in table order."""
    return " | ".join("-" if scores[name] is None else f"{scores[name]:.1f}" for name in table_columns(config)[0])


def score_table(results: dict[str, dict[str, Any]], protocol: str, config: str = DEFAULT_CONFIG) -> str:
    """A Markdown table like the paper's Table 3: one row per method, the scores of ``config``'s cases."""
    headers = table_columns(config)[1]
    lines = [f"| method ({protocol}) | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
    for name, scores in results.items():
        lines.append(f"| {name} | {score_cells(scores[protocol]['scores'], config)} |")
    return "\n".join(lines)


def plot_scores(results: dict[str, dict[str, Any]], path: Path) -> Path:
    """Grouped bars of the six scores per method, one panel per protocol (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, headers = table_columns()
    figure, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    width = 0.8 / max(1, len(results))
    for axis, protocol in zip(axes, ("token", "generate"), strict=True):
        for index, (name, scores) in enumerate(results.items()):
            values = [scores[protocol]["scores"][c] or 0.0 for c in metrics]
            axis.bar(np.arange(len(metrics)) + index * width, values, width, label=name)
        axis.set_xticks(np.arange(len(metrics)) + width * (len(results) - 1) / 2, headers)
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


# -- the lifelong curve ---------------------------------------------------------------------------
LIFELONG_TABLE = "lifelong.md"
LIFELONG_PLOT = "lifelong.png"


def running_scores(predictions: Path, gap: int, config: str = DEFAULT_CONFIG) -> dict[str, list[float | None]]:
    """The token-protocol scores of a gap run as it went: after its j-th scored case, the mean over
    cases 1..j (what the reference's running average logs), against the edits then in the model
    (``j + gap``: the case's own, those before it and the ``gap`` after it). ``{"edits": [...], score: [...]}``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from metric.kebench import score_predictions

    table = pq.read_table(predictions)
    case_ids = list(dict.fromkeys(table.column("case_id").to_pylist()))
    metrics = config_metrics(config)
    curve: dict[str, list[float | None]] = {"edits": [], **{name: [] for name in metrics}}
    for count in range(1, len(case_ids) + 1):
        prefix = table.filter(pc.is_in(table.column("case_id"), value_set=pa.array(case_ids[:count])))
        scores = score_predictions(prefix, protocol="token", bootstrap=0)["scores"]
        curve["edits"].append(count + gap)
        for name in metrics:
            curve[name].append(scores[name])
    return curve


def plot_lifelong(curves: dict[int, dict[str, list[float | None]]], path: Path, config: str = DEFAULT_CONFIG) -> Path:
    """One panel per score, each against the number of edits in the model, one line per gap (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, headers = table_columns(config)
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), sharey=True, squeeze=False)
    for axis, name, header in zip(axes[0], metrics, headers, strict=True):
        for gap, curve in curves.items():
            points = [(edits, value) for edits, value in zip(curve["edits"], curve[name], strict=True) if value is not None]
            if points:
                axis.plot(*zip(*points, strict=True), label=f"gap {gap}")
        axis.set_title(header)
        axis.set_xlabel("edits in the model")
        axis.set_ylim(0, 100)
    axes[0][0].set_ylabel("running mean (%)")
    axes[0][-1].legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def lifelong(settings: RunSettings, gaps: list[int]) -> Path:
    """The sequential-gap protocol for each of ``gaps`` (runs in ``OUT/gap-G``), their scores as one
    table (``lifelong.md``, a row per gap) and their curves (``lifelong.png``); returns ``OUT``."""
    if not gaps or len(set(gaps)) != len(gaps):
        raise ValueError(f"--sequential-gap expects distinct gaps, got {gaps}")
    root = Path(settings.out)
    results, curves = {}, {}
    for gap in gaps:
        run_dir = root / f"gap-{gap}"
        results[f"gap {gap}"] = run(replace(settings, out=run_dir, sequential_gap=gap))
        curves[gap] = running_scores(run_dir / PREDICTIONS_PARQUET, gap, settings.config)
    tables = "\n\n".join(score_table(results, protocol, settings.config) for protocol in ("token", "generate"))
    (root / LIFELONG_TABLE).write_text(tables + "\n")
    plot_lifelong(curves, root / LIFELONG_PLOT, settings.config)
    return root
