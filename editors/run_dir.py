"""A run directory: what a run depends on (:class:`RunSettings`) and what it writes (:class:`Run`).

A run directory holds

* ``predictions.jsonl`` -- one line per finished case, appended (and flushed) as it finishes;
  ``--resume`` skips the case ids found there, so a crashed run loses and redoes nothing;
* ``predictions.parquet`` -- all rows in the metric's schema (``metric.kebench.PREDICTION_FEATURES``);
* ``scores.json`` -- the metric's output for each protocol run (``token``, and ``generate`` unless turned off);
* ``run.json`` -- model, family, method + hyper-parameters, data + fingerprint, versions, seed,
  the editing protocol, seconds per edit, peak memory, counts of failed cases.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from editors.adapters.base import ModelAdapter
from editors.engine import CaseResult
from editors.methods.base import EditMethod
from editors.presets import get_preset
from editors.queries import DEFAULT_CONFIG
from editors.runtime import device_name, package_versions, peak_memory_mib

logger = logging.getLogger(__name__)

PREDICTIONS_JSONL = "predictions.jsonl"
PREDICTIONS_PARQUET = "predictions.parquet"
SCORES = "scores.json"
RUN_INFO = "run.json"
#: a run of several processes: each process's predictions and timing until the main one merges them
SHARDS = "shards"


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
    #: accelerate's device map (``auto``) for a model larger than one device, and each device's bound
    #: (``0=20GiB,cpu=60GiB``); None: the whole model on ``device``
    device_map: str | None = None
    max_memory: str | None = None
    #: read the split with ``load_dataset(..., streaming=True)`` (an exported dataset or hub repo)
    streaming: bool = False

    @property
    def protocols(self) -> list[str]:
        return ["token", "generate"] if self.generate else ["token"]


def finished_cases(path: Path) -> dict[str, dict[str, Any]]:
    """The case records of a predictions.jsonl; a torn last line (crash mid-write) is dropped."""
    return {case_id: json.loads(line.read()) for case_id, line in _case_lines([path]).items()}


@dataclass(frozen=True)
class CaseLine:
    """Where a finished case's record lies (its file and byte offset), and the record without its
    prediction rows: what a run holds of a case in memory, however many cases it has done."""

    path: Path
    offset: int
    summary: dict[str, Any]

    def read(self) -> bytes:
        with self.path.open("rb") as file:
            file.seek(self.offset)
            return file.readline()


def _case_lines(paths: Iterable[Path]) -> dict[str, CaseLine]:
    """Each case id's last record in ``paths``, read line by line (the rows of one case in memory at
    a time); a torn last line of a file (crash mid-write) is dropped, any other bad line is an error."""
    found: dict[str, CaseLine] = {}
    for path in paths:
        if not path.exists():
            continue
        with path.open("rb") as file:
            offset = 0
            for number, line in enumerate(iter(file.readline, b""), start=1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    if not file.read(1):
                        logger.warning("%s: dropping the torn last line of an interrupted run", path)
                        break
                    raise ValueError(f"{path}: line {number} is not JSON") from None
                found[record["case_id"]] = CaseLine(path, offset, {k: v for k, v in record.items() if k != "rows"})
                offset += len(line)
    return found


def _rewrite_jsonl(path: Path, lines: Iterable[CaseLine]) -> None:
    """``path`` holding exactly ``lines``, in that order, each copied as it is (replaced atomically)."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as sink:
        for line in lines:
            record = line.read()
            sink.write(record if record.endswith(b"\n") else record + b"\n")  # a complete record cut before its newline
    os.replace(partial, path)


#: cases converted to Arrow at a time when a run is scored: only their rows are Python objects at once
#: (as Python objects a full-size run's rows take ~120 KiB per case, in its Arrow table ~10)
TABLE_CHUNK_CASES = 256


class Run:
    """One run directory, from its opening to its scores and provenance.

    ``Run(settings)`` refuses a directory that already holds a run unless ``settings.resume`` (and
    writes nothing); :meth:`begin` creates it and reads the cases an earlier session finished;
    :meth:`append` writes each case as it finishes; :meth:`finish` writes the Parquet predictions,
    the scores and ``run.json``.
    """

    def __init__(self, settings: RunSettings, process: int = 0, processes: int = 1) -> None:
        self.settings = settings
        self.out = Path(settings.out)
        self.jsonl = self.out / PREDICTIONS_JSONL
        self.process, self.processes = process, processes
        #: where this process appends its cases: the run's file, or its shard in a run of several
        self.sink = self.jsonl if processes == 1 else self.out / SHARDS / f"predictions-{process}.jsonl"
        started = self.jsonl.exists() or any((self.out / SHARDS).glob("predictions-*.jsonl"))
        if started and not settings.resume:
            raise ValueError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")
        #: the model and data the run edits (the defaults resolved), recorded in run.json
        self.model = str(settings.model) if settings.model else None
        self.data = str(settings.data) if settings.data else None
        self.prepare_seconds = 0.0
        #: every finished case's record by case id (its rows left on disk), this session's and earlier ones'
        self.done: dict[str, dict[str, Any]] = {}
        #: seconds per successful edit in this session
        self.edit_seconds: list[float] = []
        #: this process's peak memory once its cases are edited (before merging and scoring)
        self.editing_peak_memory_mib: float | None = None
        #: whether the model's abilities (pretrain.json) were measured on the run's world; None: unknown
        self.abilities_measured_on_this_data: bool | None = None

    def begin(self, model: str, data: str, prepare_seconds: float) -> set[str]:
        """Create the directory and read the cases finished before, by any process of any session (a
        torn last line is dropped from this process's file before anything is appended); returns their ids."""
        self.model, self.data, self.prepare_seconds = model, data, prepare_seconds
        self.sink.parent.mkdir(parents=True, exist_ok=True)
        finished = self._finished()
        self.done = {case_id: line.summary for case_id, line in finished.items()}
        if self.processes == 1:  # (an interrupted run of several processes resumed by one: its shards join the file)
            _rewrite_jsonl(self.jsonl, finished.values())
            self._remove_shards()
        else:
            _rewrite_jsonl(self.sink, _case_lines([self.sink]).values())
        self.started = time.perf_counter()
        return set(self.done)

    def _finished(self) -> dict[str, CaseLine]:
        return _case_lines([self.jsonl, *sorted((self.out / SHARDS).glob("predictions-*.jsonl"))])

    def append(self, results: Iterable[CaseResult], total: int, initial: int | None = None) -> None:
        """Write each case's record as it finishes (flushed to disk), with its seconds; shows progress
        out of ``total`` cases, ``initial`` of them done before (default: every finished case)."""
        initial = len(self.done) if initial is None else initial
        progress = tqdm(total=total, initial=initial, desc=self.settings.method, unit="edit",
                        disable=None if self.process == 0 else True, position=self.process)
        with self.sink.open("a") as sink:
            last = time.perf_counter()
            for result in results:
                now = time.perf_counter()
                seconds = now - last
                last = now
                record = {"case_id": result.case_id, "error": result.error, "seconds": seconds, "rows": result.rows}
                sink.write(json.dumps(record) + "\n")
                sink.flush()
                os.fsync(sink.fileno())
                self.done[result.case_id] = {"case_id": result.case_id, "error": result.error, "seconds": seconds}
                if result.error is None:
                    self.edit_seconds.append(seconds)
                progress.update(1)
        progress.close()

    def close_shard(self, cases: int, peak_memory: float) -> None:
        """A process of several: record its cases, wall time and peak memory for the merge."""
        about = {"process": self.process, "cases": cases, "seconds": time.perf_counter() - self.started,
                 "peak_memory_mib": peak_memory, "device": self.settings.device}
        (self.out / SHARDS / f"time-{self.process}.json").write_text(json.dumps(about) + "\n")

    def merge_shards(self, rows: Any) -> None:
        """The main process, once every process is done: every shard's cases into predictions.jsonl in
        the split's order, the shards' timing kept for run.json, the shard files removed."""
        finished = self._finished()
        self.done = {case_id: line.summary for case_id, line in finished.items()}
        order = {case_id: index for index, case_id in enumerate(rows["case_id"])}
        _rewrite_jsonl(self.jsonl, sorted(finished.values(), key=lambda line: order.get(line.summary["case_id"], len(order))))
        self.shard_times = sorted((json.loads(path.read_text()) for path in (self.out / SHARDS).glob("time-*.json")),
                                  key=lambda about: about["process"])
        self._remove_shards()

    def _remove_shards(self) -> None:
        shards = self.out / SHARDS
        if shards.is_dir():
            for path in [*shards.glob("predictions-*.jsonl"), *shards.glob("time-*.json")]:
                path.unlink()
            shards.rmdir()

    def records(self, rows: Any) -> list[dict[str, Any]]:
        """The finished cases of ``rows`` (the split as run), in its order: their id, error and seconds."""
        order = {case_id: index for index, case_id in enumerate(rows["case_id"])}
        return sorted((r for r in self.done.values() if r["case_id"] in order), key=lambda r: order[r["case_id"]])

    def prediction_table(self, records: list[dict[str, Any]]) -> Any:
        """The prediction rows of ``records`` (:meth:`records`), in their order, as one table in the
        metric's schema: read back from predictions.jsonl :data:`TABLE_CHUNK_CASES` cases at a time."""
        import pyarrow as pa

        from metric.kebench import to_table

        lines = _case_lines([self.jsonl])
        ids = [record["case_id"] for record in records if record["case_id"] in lines]
        chunks = [to_table([row for case_id in ids[start : start + TABLE_CHUNK_CASES]
                            for row in json.loads(lines[case_id].read())["rows"]])
                  for start in range(0, len(ids), TABLE_CHUNK_CASES)]
        return pa.concat_tables(chunks) if chunks else to_table([])

    def finish(self, adapter: ModelAdapter, method: EditMethod, rows: Any) -> dict[str, Any]:
        """Write predictions.parquet, scores.json and run.json from the finished cases; returns the scores."""
        import pyarrow.parquet as pq

        from metric.kebench import score_predictions

        settings = self.settings
        records = self.records(rows)
        table = self.prediction_table(records)
        # the run metadata travels with the predictions: a file scored elsewhere still says how it was made
        about = {"preset": settings.preset, "protocols": settings.protocols, "method": method.name,
                 "model_family": adapter.family, "config": settings.config, "hop": settings.hop}
        pq.write_table(table.replace_schema_metadata({"kebench": json.dumps(about)}), self.out / PREDICTIONS_PARQUET)
        preset = get_preset(settings.preset)
        scores = {
            protocol: score_predictions(table, protocol=protocol, bootstrap=settings.bootstrap, seed=settings.seed,
                                        preset=preset.name,
                                        # micro-averaging is over answer tokens: the token protocol's only
                                        average=preset.average(method.name) if protocol == "token" else "case")
            for protocol in settings.protocols
        }
        (self.out / SCORES).write_text(json.dumps(scores, indent=2) + "\n")
        (self.out / RUN_INFO).write_text(json.dumps(self.run_info(adapter, method, rows), indent=2) + "\n")
        failed = [record["case_id"] for record in records if record["error"]]
        if failed:
            logger.warning("%d case(s) failed and are counted as skipped: %s", len(failed), ", ".join(failed[:10]))
        return scores

    def run_info(self, adapter: ModelAdapter, method: EditMethod, rows: Any) -> dict[str, Any]:
        """The run's provenance (run.json): what was edited with what, how, on which machine, how fast."""
        try:
            from kebench_hf.builder import dataset_fingerprint

            fingerprint = dataset_fingerprint(rows)
        except ImportError:
            fingerprint = None
        settings = self.settings
        preset = get_preset(settings.preset)
        records = self.records(rows)
        failed = [record["case_id"] for record in records if record["error"]]
        all_seconds = [record["seconds"] for record in records if not record["error"]]
        return {
            "model": self.model,
            "model_family": adapter.family,
            "model_class": type(adapter.model).__name__,
            # ours, a plugin's (its package), or the generic one
            "model_adapter": f"{type(adapter).__module__}:{type(adapter).__qualname__}",
            "trust_remote_code": settings.trust_remote_code,
            "method": method.name,
            "hyperparameters": method.config.to_dict(),
            "method_info": method.run_info(),
            "editor": str(settings.editor) if settings.editor else None,
            "data": self.data,
            "config": settings.config,
            "split": settings.split,
            "limit": settings.limit,
            "streaming": settings.streaming,
            "dataset_fingerprint": fingerprint,
            "sequential": settings.sequential,
            "edit_protocol": self.edit_protocol(rows, records),
            "preset": settings.preset,
            "preset_settings": preset.describe(),
            "protocols": settings.protocols,
            "hop": settings.hop,
            "average": preset.average(method.name),
            "reference_targets": {
                "queries": len(adapter.reference_targets),
                "differ_from_in_context": sum(adapter.reference_targets.values()),
            },
            "abilities_measured_on_this_data": self.abilities_measured_on_this_data,
            "device": settings.device,
            "device_map": getattr(adapter.model, "hf_device_map", None),
            "device_name": device_name(settings.device),
            "dtype": settings.dtype,
            "seed": settings.seed,
            "generate": settings.generate,
            "cases": len(records),
            "failed_cases": len(failed),
            "failed_case_ids": failed,
            "seconds_per_edit": float(np.mean(all_seconds)) if all_seconds else None,
            "seconds_per_edit_this_session": float(np.mean(self.edit_seconds)) if self.edit_seconds else None,
            "prepare_seconds": self.prepare_seconds,
            "processes": self.processes,
            "shards": getattr(self, "shard_times", []),
            "peak_memory_mib": peak_memory_mib(settings.device),
            "editing_peak_memory_mib": self.editing_peak_memory_mib,
            "versions": package_versions(),
        }

    def edit_protocol(self, rows: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
        """How the edits of the run were applied and undone (run.json's ``edit_protocol``)."""
        settings = self.settings
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
