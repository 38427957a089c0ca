"""``kebench export``: a release directory -> a hub-ready dataset repository.

The repository is ``data/<config>/<split>-0000k-of-0000n.parquet`` (image bytes embedded, the
``datasets`` features in the Parquet schema metadata) plus a dataset card (``README.md``) from
``dataset_script/card_template.md`` whose YAML ``configs`` and ``dataset_info`` make
``load_dataset(OUT_DIR)`` work. Shards are written one row group at a time, so memory stays flat however
many images there are; a completed shard is never rewritten when an interrupted export is run again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import DatasetInfo, SplitDict, SplitInfo
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData
from tqdm.auto import tqdm

from dataset_script import CARD_TEMPLATE, CITATION
from kebench_hf.constants import DEFAULT_LICENSE, DEFAULT_SHARD_SIZE
from kebench_hf.release import (
    ImagesRoot,
    ReleaseFile,
    ReleaseFormatError,
    SkipReport,
    file_signature,
    find_images_root,
    release_files,
)
from kebench_hf.schema import CONFIGS, DEFAULT_CONFIG, features

logger = logging.getLogger(__name__)

# What datasets itself uses for image data: small enough that a row group of images stays a few MB.
ROW_GROUP_SIZE = 100
STATE_FILE = ".kebench-export-state.json"
# Entries a previous export (or a clone of its hub repo) may leave; anything else means OUT_DIR is not ours.
_OWN_ENTRIES = {"README.md", "data", ".gitattributes", ".git", STATE_FILE}


@dataclass
class SplitSummary:
    config: str
    split: str
    file: str
    num_examples: int = 0
    num_bytes: int = 0
    shards: list[str] = field(default_factory=list)


@dataclass
class ExportResult:
    out_dir: Path
    splits: list[SplitSummary]
    report: SkipReport
    seconds: float


def export_release(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    images_root: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    shard_size: int = DEFAULT_SHARD_SIZE,
    configs: list[str] | None = None,
    license: str = DEFAULT_LICENSE,
    repo_id: str | None = None,
) -> ExportResult:
    """Write the hub dataset repository of the release in ``data_dir`` to ``out_dir``.

    ``configs`` defaults to every config whose release files are all present. ``shard_size`` is the
    number of release records per Parquet shard. ``repo_id`` (default: ``out_dir``'s name) only names
    the dataset in the card's examples.
    """
    started = time.perf_counter()
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not data_dir.is_dir():
        raise ReleaseFormatError(str(data_dir), "no such directory", reason="missing file")
    images = ImagesRoot(find_images_root(data_dir, images_root))
    configs = _configs_to_export(data_dir, configs)
    state = _open_state(out_dir, {
        "configs": configs,
        "images_root": str(images.root),
        "shard_size": shard_size,
        "skip_invalid": skip_invalid,
    })
    report = SkipReport()
    summaries = []
    for config in configs:
        for split, path in release_files(data_dir, config).items():
            summary, split_report = _export_split(
                ReleaseFile(path, config), split, images, out_dir, state, shard_size, skip_invalid
            )
            summaries.append(summary)
            report.merge(split_report)
    _write_card(out_dir, summaries, report, license=license, repo_id=repo_id or out_dir.absolute().name)
    (out_dir / STATE_FILE).unlink()
    if report.total:
        logger.warning("%s", report.summary())
    return ExportResult(out_dir, summaries, report, time.perf_counter() - started)


def _configs_to_export(data_dir: Path, requested: list[str] | None) -> list[str]:
    if requested is not None:
        for config in requested:
            for path in release_files(data_dir, config).values():
                if not path.is_file():
                    raise ReleaseFormatError(str(path), f"release file of config {config!r} not found",
                                             reason="missing file")
        return list(requested)
    present = [config for config in CONFIGS
               if all(path.is_file() for path in release_files(data_dir, config).values())]
    if not present:
        raise ReleaseFormatError(str(data_dir), "no KEBench release files (train.json + eval.json, "
                                 "eval_multihop.json, eval_edit_onehop.json)", reason="missing file")
    absent = [config for config in CONFIGS if config not in present]
    if absent:
        logger.warning("%s: configs %s not exported: their release files are missing", data_dir, absent)
    return present


def _open_state(out_dir: Path, options: dict) -> dict:
    """The resumable progress of an export into ``out_dir`` with ``options``; fresh if they changed."""
    state_path = out_dir / STATE_FILE
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        if state.get("options") == options:
            logger.info("%s: resuming, %d shard(s) already written", out_dir, len(state["shards"]))
            return state
    if out_dir.exists():
        foreign = sorted(entry.name for entry in out_dir.iterdir() if entry.name not in _OWN_ENTRIES)
        if foreign:
            raise ValueError(f"{out_dir}: not an empty directory nor a previous export (holds {foreign[:5]}); "
                             "choose another output directory")
        shutil.rmtree(out_dir / "data", ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {"options": options, "shards": {}}
    _save_state(out_dir, state)
    return state


def _save_state(out_dir: Path, state: dict) -> None:
    partial = out_dir / (STATE_FILE + ".partial")
    partial.write_text(json.dumps(state, indent=1))
    os.replace(partial, out_dir / STATE_FILE)


def _export_split(release: ReleaseFile, split: str, images: ImagesRoot, out_dir: Path, state: dict,
                  shard_size: int, skip_invalid: bool) -> tuple[SplitSummary, SkipReport]:
    config = release.config
    summary = SplitSummary(config, split, release.name)
    report = SkipReport()
    schema = features(config).arrow_schema
    shard_dir = out_dir / "data" / config
    shard_dir.mkdir(parents=True, exist_ok=True)
    num_shards = max(1, math.ceil(len(release) / shard_size))
    source = file_signature(release.path)
    with tqdm(total=len(release), desc=f"{config}/{split}", unit="case") as progress:
        for shard in range(num_shards):
            name = f"{split}-{shard:05d}-of-{num_shards:05d}.parquet"
            key = f"{config}/{name}"
            start, stop = shard * shard_size, min((shard + 1) * shard_size, len(release))
            done = state["shards"].get(key)
            if done is not None and done["source"] == source and (shard_dir / name).is_file():
                shard_report = SkipReport.from_dict(done["skipped"])
            else:
                shard_report = SkipReport()
                rows, num_bytes = _write_shard(
                    release.rows(images, start=start, stop=stop, embed_images=True,
                                 skip_invalid=skip_invalid, report=shard_report),
                    shard_dir / name, schema, progress,
                )
                done = {"source": source, "rows": rows, "num_bytes": num_bytes, "skipped": shard_report.to_dict()}
                state["shards"][key] = done
                _save_state(out_dir, state)
            progress.update(stop - progress.n)  # records skipped, or the whole shard when resumed
            summary.num_examples += done["rows"]
            summary.num_bytes += done["num_bytes"]
            summary.shards.append(name)
            report.merge(shard_report)
    # Shards of an earlier, differently sized export would match the card's glob too.
    for stale in shard_dir.glob(f"{split}-*.parquet"):
        if stale.name not in summary.shards:
            stale.unlink()
            state["shards"].pop(f"{config}/{stale.name}", None)
    return summary, report


def _write_shard(rows, path: Path, schema: pa.Schema, progress: tqdm) -> tuple[int, int]:
    """Write ``rows`` to ``path`` one row group at a time; the file appears only when complete."""
    partial = path.with_name(path.name + ".partial")
    written = num_bytes = 0
    try:
        with pq.ParquetWriter(partial, schema) as writer:
            batch: list[dict] = []
            for row in rows:
                batch.append(row)
                if len(batch) == ROW_GROUP_SIZE:
                    num_bytes += _write_batch(writer, batch, schema)
                    written += len(batch)
                    progress.update(len(batch))
                    batch = []
            if batch:
                num_bytes += _write_batch(writer, batch, schema)
                written += len(batch)
                progress.update(len(batch))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return written, num_bytes


def _write_batch(writer: pq.ParquetWriter, batch: list[dict], schema: pa.Schema) -> int:
    table = pa.Table.from_pylist(batch, schema=schema)
    writer.write_table(table, row_group_size=len(batch))
    return table.nbytes


def _write_card(out_dir: Path, summaries: list[SplitSummary], report: SkipReport, *, license: str,
                repo_id: str) -> None:
    card_data = DatasetCardData(
        license=license,
        language=["en"],
        pretty_name="KEBench (VLKEB)",
        task_categories=["visual-question-answering"],
        tags=["knowledge-editing", "vision-language", "kebench", "vlkeb"],
    )
    by_config: dict[str, list[SplitSummary]] = {}
    for summary in summaries:
        by_config.setdefault(summary.config, []).append(summary)
    MetadataConfigs({
        config: {
            **({"default": True} if config == DEFAULT_CONFIG else {}),
            "data_files": [{"split": s.split, "path": f"data/{config}/{s.split}-*.parquet"} for s in splits],
        }
        for config, splits in by_config.items()
    }).to_dataset_card_data(card_data)
    infos = {}
    for config, splits in by_config.items():
        split_dict = SplitDict()
        for s in splits:
            split_dict.add(SplitInfo(name=s.split, num_bytes=s.num_bytes, num_examples=s.num_examples))
        download_size = sum((out_dir / "data" / config / shard).stat().st_size for s in splits for shard in s.shards)
        infos[config] = DatasetInfo(features=features(config), splits=split_dict, download_size=download_size,
                                    dataset_size=sum(s.num_bytes for s in splits))
    DatasetInfosDict(infos).to_dataset_card_data(card_data)
    card = DatasetCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        pretty_name="KEBench (VLKEB)",
        repo_id=repo_id,
        split_rows=[{**s.__dict__, "num_shards": len(s.shards)} for s in summaries],
        skipped=report.summary() if report.total else None,
        has_onehop="edit_onehop" in by_config,
        license=license,
        citation=CITATION,
    )
    card.save(out_dir / "README.md")
