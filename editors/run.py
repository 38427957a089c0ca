"""``kebench run``: one method over one split, written to a run directory (:mod:`editors.run_dir`);
the main job; the lifelong curves.

Editing protocols: each edit scored alone and restored (the default); ``--sequential N`` (ours:
groups of N edits applied together, all N scored, restored); ``--sequential-gap G`` (VLKEB's
``test_sequential_editing.py``: see :meth:`editors.engine.Engine.run_gap`), whose runs for several G
:func:`lifelong` draws as curves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import datasets
import torch

from editors.abilities import check_model, warn_if_measured_elsewhere
from editors.cases import CaseError, CaseSequence, EditCase, case_from_row, load_split, stream_split
from editors.defaults import default_model
from editors.engine import Engine, EngineOptions
from editors.methods import make_method, method_names, preset_method
from editors.methods.base import EditMethod
from editors.parallel import ProcessGroup
from editors.presets import Preset, get_preset, select_hop, without_portability
from editors.queries import query_table
from editors.report import plot_lifelong, plot_scores, running_scores, score_table
from editors.run_dir import PREDICTIONS_PARQUET, Run, RunSettings
from editors.runtime import peak_memory_mib, reset_peak_memory, seed_everything
from kebench_hf.constants import MODEL_DTYPES
from kebench_hf.world import default_world

logger = logging.getLogger(__name__)

LIFELONG_TABLE = "lifelong.md"
LIFELONG_PLOT = "lifelong.png"


def _empty_split() -> Any:
    import datasets

    from kebench_hf.schema import features

    return datasets.Dataset.from_list([], features=features("edit"))


def preset_rows(rows: Any, preset: Preset, hop: int | None) -> Any:
    """The split as the preset scores it: ``--hop k`` keeps the cases with a k-hop question (its
    first one only); the reference without a hop scores no portability."""
    if hop is not None:
        return select_hop(rows, hop)
    return without_portability(rows) if preset.one_hop_portability else rows


def limited(rows: Any, limit: int | None) -> Any:
    """The first ``limit`` rows (None: all)."""
    return rows if limit is None else rows.select(range(min(limit, len(rows))))


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


def _streamed_cases(rows: Any, skip: set[str], seen: list[dict[str, Any]]) -> Iterator[tuple[str, EditCase | CaseError]]:
    """The cases of a streamed split, one row in memory at a time; each row's fingerprinted fields
    (text, no image) are kept in ``seen``."""
    from kebench_hf.builder import FINGERPRINT_COLUMNS

    for row in rows:
        case_id = str(row.get("case_id", "?"))
        seen.append({name: row[name] for name in FINGERPRINT_COLUMNS if name in row})
        if case_id in skip:
            continue
        try:
            yield case_id, case_from_row(row)
        except CaseError as error:
            yield case_id, error


def check_settings(settings: RunSettings) -> EditMethod:
    """Refuse bad settings with one line before any world or model is built; the method as named."""
    from editors.adapters import check_device

    method = make_method(settings.method, settings.method_options)  # an unknown method or setting
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
    check_device(settings.device)
    return method


def run(settings: RunSettings) -> dict[str, Any]:
    """Run ``settings.method`` and write the run directory; returns ``{"token": ..., "generate": ...}`` scores.

    Launched in several processes (:mod:`editors.parallel`), each edits its share of the cases into its
    own shard; the main process merges them, scores and writes the run directory as one process does,
    and returns the scores (the others return ``{}``)."""
    from editors.adapters import load_adapter, model_family, parse_max_memory

    check_settings(settings)
    group = ProcessGroup.current(settings.device)
    if group.count > 1 and (settings.sequential_gap is not None or settings.sequential > 1):
        raise ValueError("--sequential and --sequential-gap edit cases in order on one model: run them in one process")
    if group.count > 1 and settings.device_map is not None:
        raise ValueError("--device-map spreads one model over the devices; --processes gives each process its own")
    run_dir = Run(settings, group.index, group.count)  # a run already there without --resume: refused before anything is built
    group.wait()  # every process has looked before any writes
    preset = get_preset(settings.preset)
    gap = settings.sequential_gap
    data = str(settings.data) if settings.data else str(default_world())
    if settings.streaming:
        if gap is not None or settings.hop is not None or group.count > 1:
            raise ValueError("--streaming reads the split once, in order, in one process: not with --sequential-gap, "
                             "--hop or --processes")
        rows, scored = stream_split(data, settings.config, settings.split)
        if settings.limit is not None:
            rows, scored = rows.take(settings.limit), min(settings.limit, scored or settings.limit)
        rows = preset_rows(rows, preset, None)
    else:
        rows = load_split(data, settings.config, settings.split)
        if gap is None:
            # --limit before the hop filter, as the reference's CaptionDataset(size=...)
            rows = preset_rows(limited(rows, settings.limit), preset, settings.hop)
        else:
            # the reference's sequential run filters the whole file by hop, then edits test_num + gap
            # cases of it (test_sequential_editing.py): --limit counts the cases scored
            rows = limited(preset_rows(rows, preset, settings.hop), None if settings.limit is None else settings.limit + gap)
        scored = len(rows) if gap is None else min(settings.limit or len(rows), len(rows) - gap)
    if gap is not None and scored < 1:
        raise ValueError(f"--sequential-gap {gap} needs more than {gap} cases; the split has {len(rows)}")
    try:
        train = load_split(data, "edit", "train")
    except ValueError:
        train = _empty_split()
    model = str(settings.model) if settings.model else str(default_model())
    logger.info(check_model(model, default=not settings.model))
    if group.is_main:  # one warning, and one hash of the world, per run (run.json is the main process's)
        run_dir.abilities_measured_on_this_data = warn_if_measured_elsewhere(model, data)
    family = model_family(model, settings.trust_remote_code)
    method = preset_method(preset, settings.method, family, settings.method_options)
    if preset.reference_prompt and settings.dtype != "float32" and settings.method.startswith("ft-"):
        raise ValueError(f"preset {preset.name!r}: the reference's FT runs the model in float32, not {settings.dtype}")

    seed_everything(settings.seed)
    device = group.device(settings.device)
    reset_peak_memory(device)
    adapter = load_adapter(model, device=device, dtype=getattr(torch, settings.dtype), device_map=settings.device_map,
                           max_memory=parse_max_memory(settings.max_memory) if settings.max_memory else None,
                           trust_remote_code=settings.trust_remote_code)
    adapter.form = preset.prompt_form(method, family)
    started = time.perf_counter()
    with group.main_first():  # a trained editor: trained (and cached) once, by the main process
        method.prepare(adapter, CaseSequence(train), settings.editor)
    done = run_dir.begin(model, data, prepare_seconds=time.perf_counter() - started)
    engine = Engine(adapter, method, EngineOptions(generate=settings.generate, seed=settings.seed, config=settings.config,
                                                   queries=query_table(preset, method)))
    if gap is not None:
        run_dir.append(engine.run_gap(list(_cases(rows, set())), gap, scored), total=scored)
        return run_dir.finish(adapter, method, rows)
    if settings.streaming:
        seen: list[dict[str, Any]] = []
        run_dir.append(engine.run(_streamed_cases(rows, done, seen), sequential=settings.sequential), total=scored)
        # the split as run, without its images: the order of the cases and the dataset's fingerprint
        return run_dir.finish(adapter, method, datasets.Dataset.from_list(seen))
    mine = group.share(rows["case_id"])
    others = set(rows["case_id"]) - set(mine)
    run_dir.append(engine.run(_cases(rows, done | others), sequential=settings.sequential), total=len(mine),
                   initial=len(done.intersection(mine)))
    run_dir.editing_peak_memory_mib = peak_memory_mib(device)
    if group.count == 1:
        return run_dir.finish(adapter, method, rows)
    run_dir.close_shard(len(mine), run_dir.editing_peak_memory_mib)
    group.wait()
    if not group.is_main:
        return {}
    run_dir.merge_shards(rows)
    return run_dir.finish(adapter, method, rows)


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
    tables = "\n\n".join(score_table(results, protocol, settings.config) for protocol in settings.protocols)
    (root / LIFELONG_TABLE).write_text(tables + "\n")
    plot_lifelong(curves, root / LIFELONG_PLOT, settings.config)
    return root
