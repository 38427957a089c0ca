"""The datasets builder and ``load_kebench`` over a release-layout directory."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from kebench_hf import dataset_fingerprint, load_kebench
from kebench_hf.release import ReleaseFormatError
from kebench_hf.schema import features


@pytest.fixture(scope="module")
def edit(vlkeb_fixture_dir: Path, tmp_path_factory) -> datasets.DatasetDict:
    return load_kebench(vlkeb_fixture_dir, cache_dir=tmp_path_factory.mktemp("hf-cache"))


def test_edit_config_has_both_splits_with_the_json_values(edit, vlkeb_fixture_dir: Path):
    assert set(edit) == {"train", "test"}
    for split, name in [("train", "train.json"), ("test", "eval.json")]:
        records = json.loads((vlkeb_fixture_dir / name).read_text(encoding="utf-8"))
        dataset = edit[split]
        assert dataset.features == features("edit")
        assert dataset["case_id"] == [f"{name[:-5]}-{i:05d}" for i in range(len(records))]
        for field in ("src", "rephrase", "pred", "alt", "loc", "loc_ans", "m_loc_q", "m_loc_a"):
            assert dataset[field] == [record[field] for record in records]
        for field in ("image", "image_rephrase", "m_loc"):
            assert dataset[f"{field}_path"] == [record[field] for record in records]
    assert edit["test"]["pred"] == ["Lionel Messi", "Laredo,_Texas"]


def test_images_decode_only_on_access(edit, decode_calls: list):
    test = edit["test"]
    texts = test["src"], test["alt"], test.select_columns(["case_id", "image_path"])[:]
    assert texts[1] == ["Cristiano Ronaldo", "El_Paso,_Texas"]
    dataset_fingerprint(test)
    assert decode_calls == []
    row = test[1]
    assert len(decode_calls) == 3
    assert row["image"].size == (48, 48)
    assert decode_calls[0].endswith("mmkb_images/m.0fx03/google_4.jpg")


def test_multihop_and_onehop_configs(vlkeb_fixture_dir: Path, tmp_path: Path):
    multihop = load_kebench(vlkeb_fixture_dir, "multihop", split="test", cache_dir=tmp_path)
    assert multihop.features == features("multihop")
    assert [[hop["hop"] for hop in row] for row in multihop["portability"]] == [[1, 2], [1]]
    assert multihop[1]["portability"][0] == {
        "hop": 1, "question": "In which county is the city in the picture located?", "answer": "El Paso County"}
    onehop = load_kebench(vlkeb_fixture_dir, "edit_onehop", split="test", cache_dir=tmp_path)
    assert onehop["onehop"][0][0]["edit_answer"] == "Inter Miami"
    assert onehop["case_id"] == ["eval_edit_onehop-00000"]


def test_bad_record_error_is_the_release_error(writable_release: Path, tmp_path: Path):
    records = json.loads((writable_release / "eval.json").read_text())
    records[1]["image"] = "m.0fx03/../../eval.json"
    (writable_release / "eval.json").write_text(json.dumps(records))
    with pytest.raises(ReleaseFormatError, match="eval.json: record 1: field 'image': .*leaves the images root"):
        load_kebench(writable_release, cache_dir=tmp_path / "cache")
    skipped = load_kebench(writable_release, split="test", skip_invalid=True, cache_dir=tmp_path / "cache")
    assert skipped["case_id"] == ["eval-00000"]


def test_edited_release_is_not_served_from_a_stale_cache(writable_release: Path, tmp_path: Path):
    first = load_kebench(writable_release, split="test", cache_dir=tmp_path)
    records = json.loads((writable_release / "eval.json").read_text())
    records[0]["alt"] = "Kylian Mbappé"
    (writable_release / "eval.json").write_text(json.dumps(records, ensure_ascii=False))
    second = load_kebench(writable_release, split="test", cache_dir=tmp_path)
    assert second["alt"] == ["Kylian Mbappé", "El_Paso,_Texas"]
    assert dataset_fingerprint(first) != dataset_fingerprint(second)


def test_fingerprint_is_stable_and_content_sensitive(edit, vlkeb_fixture_dir: Path, tmp_path: Path):
    again = load_kebench(vlkeb_fixture_dir, split="test", cache_dir=tmp_path)
    assert dataset_fingerprint(again) == dataset_fingerprint(edit["test"])
    assert len(dataset_fingerprint(again)) == 64
    assert dataset_fingerprint(edit["train"]) != dataset_fingerprint(edit["test"])
    reordered = edit["test"].select([1, 0])
    assert dataset_fingerprint(reordered) != dataset_fingerprint(edit["test"])
    with pytest.raises(ValueError, match="no 'case_id' column"):
        dataset_fingerprint(edit["test"].remove_columns(["case_id"]))


def test_unusable_sources(tmp_path: Path, vlkeb_fixture_dir: Path):
    with pytest.raises(ReleaseFormatError, match="neither a release-layout directory"):
        load_kebench(tmp_path)
    with pytest.raises(ValueError, match="unknown KEBench config 'edits'"):
        load_kebench(vlkeb_fixture_dir, "edits")
    with pytest.raises(FileNotFoundError, match="no such directory, and not a hub repo id"):
        load_kebench(str(tmp_path / "missing dir"))
    with pytest.raises(ValueError, match="revision applies to hub repos"):
        load_kebench(vlkeb_fixture_dir, revision="main")
