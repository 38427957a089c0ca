"""``kebench bench``: our engine against a loop run the reference's way, side by side (timing).

The reference-style loop has the reference code's cost structure per edit case: a deep copy of the
model, the processor called once per query, batch size 1 everywhere, pre-edit outputs recomputed
for the case, and the method run the plain way (FT: every optimisation step through the whole
network; IKE: the in-context prompt re-read with every query). Both loops compute the same
outputs for the same cases, so their token-protocol scores must agree (up to floating-point
reduction order); the benchmark checks that, then reports seconds per edit, the speed ratio and
the peak memory of one edit (CPU: resident set size above its start, sampled; CUDA: peak
allocated). The loops alternate case by case, so both see the machine in the same state.

Shapes: ``tiny`` is the built-in tiny LLaVA; ``deep-narrow`` is a LLaVA whose language model has
the 32 decoder layers of LLaVA-1.5-7B at a small hidden size (random weights): there the cost
structure (many layers, each cheap) is the real one; ``llava-7b`` has every dimension of
LLaVA-1.5-7B (random weights, built on the device in the run's dtype: a GPU shape).

Outside float32 the two loops' floating-point reduction orders differ by more than a top-1 token
can absorb, so there the score difference is reported, not checked.
"""

from __future__ import annotations

import copy
import gc
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from editors.adapters.base import ModelAdapter
from editors.cases import CaseSequence, EditCase, load_split
from editors.defaults import default_model
from editors.engine import Engine, EngineOptions, ScoredCase, case_queries, case_seed
from editors.forward import score_queries
from editors.methods import make_method, method_names, method_spec
from editors.methods.base import EditMethod
from editors.presets import KEBENCH, Preset, get_preset
from editors.queries import query_table
from editors.tiny import TinySpec, build_tiny_model
from kebench_hf.world import default_world

logger = logging.getLogger(__name__)

#: the plain way of running each method (what the reference code does)
REFERENCE_OPTIONS: dict[str, dict[str, Any]] = {"ft-llm": {"cache_frozen_layers": False}}
#: LLaVA-1.5-7B: Vicuna-7B (Llama, 32 x 4096, MLP 11008, 32 heads, 32064 tokens) after CLIP ViT-L/14
#: at 336 px (24 x 1024, 16 heads: 576 image tokens)
LLAVA_1_5_7B = TinySpec(
    hidden_size=4096, text_layers=32, heads=32, intermediate_size=11008, embedding_rows=32064, max_positions=4096,
    vision_hidden_size=1024, vision_layers=24, vision_heads=16, vision_intermediate_size=4096,
    image_size=336, patch_size=14,
)
#: random-weight LLaVA shapes (``tiny``, the pretrained default model, is the other shape)
SHAPES: dict[str, TinySpec] = {
    "deep-narrow": TinySpec(text_layers=32, hidden_size=64, heads=4),  # LLaVA-1.5-7B's depth, narrow
    "llava-7b": LLAVA_1_5_7B,
}
AGREEMENT_POINTS = 0.1


@dataclass
class Measurement:
    shape: str
    method: str
    cases: int
    ours_seconds_per_edit: float
    reference_seconds_per_edit: float
    ours_cpu_seconds_per_edit: float
    reference_cpu_seconds_per_edit: float
    ours_peak_mib: float
    reference_peak_mib: float
    max_score_difference: float
    ours_scores: dict[str, float | None]

    @property
    def speedup(self) -> float:
        return self.reference_seconds_per_edit / self.ours_seconds_per_edit

    @property
    def cpu_speedup(self) -> float:
        return self.reference_cpu_seconds_per_edit / self.ours_cpu_seconds_per_edit


class PeakMemory:
    """Peak memory while the block runs: CUDA peak allocated, or sampled RSS above the start (MiB)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.peak_mib = 0.0

    @staticmethod
    def _rss_mib() -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * 4096 / 2**20

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._highest = max(self._highest, self._rss_mib())
            self._stop.wait(0.005)

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated() / 2**20
        else:
            self._start = self._highest = self._rss_mib()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.peak_mib = torch.cuda.max_memory_allocated() / 2**20 - self._start
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mib = max(self._highest, self._rss_mib()) - self._start


def engine_rows(adapter: ModelAdapter, method: EditMethod, cases: list[EditCase],
                preset: Preset = KEBENCH) -> list[dict[str, Any]]:
    engine = Engine(adapter, method, EngineOptions(generate=False, queries=query_table(preset, method)))
    return [row for result in engine.run((case.case_id, case) for case in cases) for row in result.rows]


def reference_rows(adapter: ModelAdapter, method: EditMethod, cases: list[EditCase],
                   preset: Preset = KEBENCH) -> list[dict[str, Any]]:
    """Our methods and prompts run the reference code's way (the cost structure, not its scoring:
    that is ``--preset vlkeb``), producing the same rows as :class:`Engine` (token protocol)."""
    options = EngineOptions(generate=False, queries=query_table(preset, method))
    rows = []
    for case in cases:
        labels, queries, topk, positions = case_queries(case, options)
        edited = type(adapter)(copy.deepcopy(adapter.model), adapter.processor)
        edited.form = adapter.form
        asked = list(zip(queries, topk, positions, strict=True))
        pre = [score_queries(adapter, [query], [k], [where])[0] for query, k, where in asked]
        torch.manual_seed(case_seed(options.seed, case.case_id))
        applied = method.apply(edited, case)
        post = [applied.score([query], [k], positions=[where])[0] for query, k, where in asked]
        rows += ScoredCase(case, labels, queries, topk, positions, pre, [""] * len(queries)).rows(
            post, [""] * len(queries))
        del edited, applied
    return rows


@dataclass
class _Totals:
    """One loop's rows, wall and CPU seconds (this process) and largest peak, over its timed calls."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_mib: float = 0.0

    def time(self, call: Callable[[], list[dict[str, Any]]], device: torch.device) -> None:
        with PeakMemory(device) as memory:
            started, cpu_started = time.perf_counter(), time.process_time()
            self.rows += call()
            self.seconds += time.perf_counter() - started
            self.cpu_seconds += time.process_time() - cpu_started
        self.peak_mib = max(self.peak_mib, memory.peak_mib)


def measure(shape: str, adapter: ModelAdapter, method_name: str, cases: list[EditCase], warm_up: EditCase,
            train: CaseSequence, preset: Preset = KEBENCH) -> Measurement:
    from metric.kebench import score_predictions

    settings = preset.settings(method_name, adapter.family)
    ours = make_method(method_name, settings)
    reference = make_method(method_name, {**settings, **REFERENCE_OPTIONS.get(method_name, {})})
    adapter.form = preset.prompt_form(ours, adapter.family)
    for method in (ours, reference):
        method.prepare(adapter, train)
    adapter.model.requires_grad_(False)
    # One-time costs (first backward, allocator growth) belong to neither loop: warm both up first.
    engine_rows(adapter, ours, [warm_up], preset)
    reference_rows(adapter, reference, [warm_up], preset)
    # Case by case, the loops alternating: a machine that slows down or speeds up meanwhile slows or
    # speeds both alike (timed one after the other, the ratio moved by ~10% between identical runs).
    our, ref = _Totals(), _Totals()
    for case in cases:
        our.time(lambda case=case: engine_rows(adapter, ours, [case], preset), adapter.device)
        ref.time(lambda case=case: reference_rows(adapter, reference, [case], preset), adapter.device)
    our_scores = score_predictions(our.rows, protocol="token", bootstrap=0)["scores"]
    ref_scores = score_predictions(ref.rows, protocol="token", bootstrap=0)["scores"]
    difference = max(
        (abs(our_scores[name] - ref_scores[name]) for name in our_scores if our_scores[name] is not None),
        default=0.0,
    )
    checked = next(adapter.model.parameters()).dtype == torch.float32
    if checked and difference > AGREEMENT_POINTS:
        raise AssertionError(
            f"{shape}/{method_name}: engine and reference-style loop disagree by {difference:.3f} points "
            f"(ours {our_scores}, reference {ref_scores})"
        )
    n = len(cases)
    return Measurement(shape, method_name, n, our.seconds / n, ref.seconds / n, our.cpu_seconds / n,
                       ref.cpu_seconds / n, our.peak_mib, ref.peak_mib, difference, our_scores)


def bench_methods() -> list[str]:
    """The registered methods the benchmark can time: those needing no training (a trained editor's
    edit is timed after training it, which is no part of the reference-style loop's cost)."""
    return [name for name in method_names() if not method_spec(name).trained]


def _check_method(name: str) -> None:
    if method_spec(name).trained:  # an unknown name: the registry's one-line error
        raise ValueError(f"method {name!r} is trained; kebench bench times {', '.join(bench_methods())}")


def _check_shape(shape: str) -> None:
    if shape != "tiny" and shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: tiny, {', '.join(SHAPES)}")


def shape_model(shape: str, data: Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Path:
    """The model directory of ``shape``: the default tiny model, or a random-weight LLaVA of a
    :data:`SHAPES` spec (tokenizer trained on ``data``'s text), built once on ``device`` in ``dtype``."""
    from kebench_hf.paths import cache_dir

    _check_shape(shape)
    if shape == "tiny":
        return default_model()
    out = cache_dir() / "models" / f"{shape}-llava"
    if not (out / "config.json").exists():
        texts = [value for record in CaseSequence(load_split(data, "edit", "train")).texts()
                 for key, value in record.items() if key != "case_id"]
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        build_tiny_model("llava", texts, partial, spec=SHAPES[shape], device=device, dtype=dtype)
        partial.rename(out)
        gc.collect()  # the built weights (14 GB for llava-7b) are freed before anything loads them again
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return out


def format_measurements(measurements: list[Measurement]) -> str:
    """A Markdown table; wall time is what a user waits, CPU time is robust to a shared machine."""
    lines = [
        "| shape | method | cases | ours s/edit | reference s/edit | speed-up | speed-up (CPU time) "
        "| ours peak MiB | reference peak MiB | max token-score diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in measurements:
        lines.append(
            f"| {m.shape} | {m.method} | {m.cases} | {m.ours_seconds_per_edit:.3f} | {m.reference_seconds_per_edit:.3f} "
            f"| {m.speedup:.1f}x | {m.cpu_speedup:.1f}x | {m.ours_peak_mib:.0f} | {m.reference_peak_mib:.0f} "
            f"| {m.max_score_difference:.3f} |"
        )
    return "\n".join(lines)


def run_bench(methods: list[str] | None = None, limit: int = 10, shapes: list[str] | None = None,
              device: str = "cpu", dtype: str = "float32", data: Path | None = None, preset: str = "kebench") -> str:
    """Measure every (shape, method) on the first ``limit`` test cases of ``data`` (default: the
    default world; the next case warms both loops up, untimed) under ``preset``'s prompt form and
    hyper-parameters. Default shapes: ``tiny`` and ``deep-narrow``."""
    from editors.adapters import check_device, load_adapter

    chosen = get_preset(preset)
    shapes = shapes or ["tiny", "deep-narrow"]
    methods = methods or ["ft-llm", "ike"]
    for shape in shapes:  # before building anything
        _check_shape(shape)
    for name in methods:
        _check_method(name)
    check_device(device)
    torch_dtype = getattr(torch, dtype)
    data = data or default_world()
    rows = load_split(data, "edit", "test")
    cases = list(CaseSequence(rows.select(range(min(limit + 1, len(rows))))))
    warm_up, cases = cases[-1], cases[:-1]
    train = CaseSequence(load_split(data, "edit", "train"))
    measurements = []
    for shape in shapes:
        adapter = load_adapter(shape_model(shape, data, device, torch_dtype), device=device, dtype=torch_dtype)
        for method_name in methods:
            logger.info("bench: %s / %s on %d cases", shape, method_name, len(cases))
            measurements.append(measure(shape, adapter, method_name, cases, warm_up, train, chosen))
    return format_measurements(measurements)
