"""``kebench export``: Parquet shards + card that ``load_dataset`` reads offline, written streaming."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from huggingface_hub.repocard import metadata_load

from kebench_hf import dataset_fingerprint, load_kebench
from kebench_hf.cli import main
from kebench_hf.export import ROW_GROUP_SIZE, STATE_FILE, export_release
from kebench_hf.release import ReleaseFormatError
from kebench_hf.schema import features


@pytest.fixture(scope="module")
def exported(vlkeb_fixture_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "kebench"
    export_release(vlkeb_fixture_dir, out, shard_size=1)
    return out


def _json(directory: Path, name: str) -> list[dict]:
    return json.loads((directory / name).read_text(encoding="utf-8"))


def test_repository_layout_and_card(exported: Path):
    files = sorted(str(path.relative_to(exported)) for path in exported.rglob("*") if path.is_file())
    assert files == [
        "README.md",
        "data/edit/test-00000-of-00002.parquet", "data/edit/test-00001-of-00002.parquet",
        "data/edit/train-00000-of-00002.parquet", "data/edit/train-00001-of-00002.parquet",
        "data/edit_onehop/test-00000-of-00001.parquet",
        "data/multihop/test-00000-of-00002.parquet", "data/multihop/test-00001-of-00002.parquet",
    ]
    card = metadata_load(exported / "README.md")
    configs = {config["config_name"]: config for config in card["configs"]}
    assert configs["edit"]["default"] is True
    assert configs["edit"]["data_files"] == [{"split": "train", "path": "data/edit/train-*.parquet"},
                                             {"split": "test", "path": "data/edit/test-*.parquet"}]
    assert configs["multihop"]["data_files"] == [{"split": "test", "path": "data/multihop/test-*.parquet"}]
    infos = {info["config_name"]: info for info in card["dataset_info"]}
    assert {s["name"]: s["num_examples"] for s in infos["edit"]["splits"]} == {"train": 2, "test": 2}
    assert infos["edit_onehop"]["splits"][0]["num_examples"] == 1
    assert datasets.Features._from_yaml_list(infos["edit_onehop"]["features"]) == features("edit_onehop")
    assert card["license"] == "apache-2.0"
    text = (exported / "README.md").read_text()
    for column in features("edit_onehop"):
        assert f"`{column}`" in text
    for metric in ("Reliability", "T-Generality", "I-Generality", "T-Locality", "I-Locality", "Portability"):
        assert f"| {metric} |" in text
    assert "eprint        = {2403.07350}" in text
    assert 'load_dataset("kebench", "multihop", split="test")' in text


def test_shards_embed_image_bytes_and_features(exported: Path, vlkeb_fixture_dir: Path):
    table = pq.read_table(exported / "data/edit/test-00001-of-00002.parquet")
    assert datasets.Features.from_arrow_schema(table.schema) == features("edit")
    row = table.to_pylist()[0]
    record = _json(vlkeb_fixture_dir, "eval.json")[1]
    assert row["case_id"] == "eval-00001" and row["pred"] == "Laredo,_Texas"
    for field in ("image", "image_rephrase", "m_loc"):
        assert row[field]["path"] == record[field] == row[f"{field}_path"]
        assert row[field]["bytes"] == (vlkeb_fixture_dir / "mmkb_images" / record[field]).read_bytes()


_LOAD_OFFLINE = """
import json
from datasets import load_dataset
edit = load_dataset("kebench")
multihop = load_dataset("kebench", "multihop", split="test")
print(json.dumps({
    "splits": sorted(edit),
    "train_pred": list(edit["train"]["pred"]),
    "test_case_id": list(edit["test"]["case_id"]),
    "test_image_size": list(edit["test"][1]["m_loc"].size),
    "multihop": list(multihop["portability"]),
}))
"""


def test_load_dataset_offline_in_the_parent_directory(exported: Path, vlkeb_fixture_dir: Path, tmp_path: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-c", _LOAD_OFFLINE], cwd=exported.parent, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["splits"] == ["test", "train"]
    assert loaded["train_pred"] == [record["pred"] for record in _json(vlkeb_fixture_dir, "train.json")]
    assert loaded["test_case_id"] == ["eval-00000", "eval-00001"]
    assert loaded["test_image_size"] == [48, 48]
    expected = [[{"hop": int(item["port_type"].split("-")[0]), "question": item["Q&A"]["Question"],
                  "answer": item["Q&A"]["Answer"]} for item in record["port_new"]]
                for record in _json(vlkeb_fixture_dir, "eval_multihop.json")]
    assert loaded["multihop"] == expected


def test_load_kebench_on_the_export_matches_the_release(exported: Path, vlkeb_fixture_dir: Path, tmp_path: Path,
                                                        decode_calls: list):
    for config in ("edit", "multihop", "edit_onehop"):
        from_export = load_kebench(exported, config, cache_dir=tmp_path)
        from_release = load_kebench(vlkeb_fixture_dir, config, cache_dir=tmp_path)
        for split in from_release:
            assert from_export[split]["pred"] == from_release[split]["pred"]
            assert dataset_fingerprint(from_export[split]) == dataset_fingerprint(from_release[split])
    assert decode_calls == []
    assert from_export["test"][0]["image"].size == (48, 48)
    assert len(decode_calls) == 3
    with pytest.raises(ValueError, match="images_root and skip_invalid apply to a release-layout directory"):
        load_kebench(exported, skip_invalid=True)


def test_streaming_reads_the_export(exported: Path):
    stream = datasets.load_dataset(str(exported), "multihop", split="test", streaming=True)
    first = next(iter(stream))
    assert first["case_id"] == "eval_multihop-00000" and first["image"].size == (48, 48)


def _grow(release: Path, name: str, copies: int) -> None:
    records = _json(release, name)
    (release / name).write_text(json.dumps([dict(records[i % len(records)]) for i in range(copies)]))


def test_shards_are_written_in_row_groups_and_resume_after_a_failure(writable_release: Path, tmp_path: Path):
    _grow(writable_release, "train.json", 250)
    records = _json(writable_release, "eval_multihop.json")
    broken = json.loads(json.dumps(records))
    broken[1]["image"] = "m.0fx03/missing.jpg"
    (writable_release / "eval_multihop.json").write_text(json.dumps(broken))
    out = tmp_path / "kebench"
    with pytest.raises(ReleaseFormatError, match="eval_multihop.json: record 1: field 'image'"):
        export_release(writable_release, out, shard_size=120)
    train_shards = sorted((out / "data/edit").glob("train-*.parquet"))
    assert [path.name for path in train_shards] == [f"train-0000{k}-of-00003.parquet" for k in range(3)]
    assert [pq.ParquetFile(path).metadata.num_rows for path in train_shards] == [120, 120, 10]
    assert [[pq.ParquetFile(path).metadata.row_group(g).num_rows for g in range(pq.ParquetFile(path).num_row_groups)]
            for path in train_shards] == [[ROW_GROUP_SIZE, 20], [ROW_GROUP_SIZE, 20], [10]]
    assert (out / STATE_FILE).is_file() and not (out / "README.md").exists()
    assert not list(out.rglob("*.partial"))
    written = {path.name: path.stat().st_mtime_ns for path in train_shards}

    (writable_release / "eval_multihop.json").write_text(json.dumps(records))
    result = export_release(writable_release, out, shard_size=120)
    assert {path.name: path.stat().st_mtime_ns for path in (out / "data/edit").glob("train-*")} == written
    assert [(s.config, s.split, s.num_examples) for s in result.splits] == [
        ("edit", "train", 250), ("edit", "test", 2), ("multihop", "test", 2), ("edit_onehop", "test", 1)]
    assert not (out / STATE_FILE).exists()
    assert datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache")).num_rows == 250

    _grow(writable_release, "train.json", 100)  # a smaller release: its old shards must not linger
    export_release(writable_release, out, shard_size=120)
    assert sorted(path.name for path in (out / "data/edit").glob("train-*")) == ["train-00000-of-00001.parquet"]


def test_cli_reports_errors_in_one_line_and_counts_skips(writable_release: Path, tmp_path: Path, capsys):
    records = _json(writable_release, "eval.json")
    records[1]["image"] = "../train.json"
    del records[0]["loc_ans"]
    (writable_release / "eval.json").write_text(json.dumps(records))
    out = tmp_path / "kebench"

    assert main(["export", str(writable_release), str(out)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert error == "kebench: error: eval.json: record 0: field 'loc_ans': missing field"

    assert main(["export", str(writable_release), str(out), "--skip-invalid"]) == 0
    printed = capsys.readouterr().out
    assert "edit/test: 0 cases from eval.json" in printed
    assert "2 invalid record(s) skipped:" in printed
    assert "eval.json: 1 x image path escapes images root (e.g. eval.json: record 1: field 'image'" in printed
    card = (out / "README.md").read_text()
    assert "eval.json: 1 x missing field" in card
    infos = {info["config_name"]: info for info in metadata_load(out / "README.md")["dataset_info"]}
    assert {s["name"]: s["num_examples"] for s in infos["edit"]["splits"]} == {"train": 2, "test": 0}


def test_refuses_to_overwrite_a_foreign_directory(vlkeb_fixture_dir: Path, tmp_path: Path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty directory nor a previous export"):
        export_release(vlkeb_fixture_dir, tmp_path)
    assert main(["export", str(vlkeb_fixture_dir), str(tmp_path / "out"), "--shard-size", "0"]) == 1
