"""The release-layout reader: exact values from the fixture, and a clear error for every defect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kebench_hf.release import (
    ImagesRoot,
    ReleaseFile,
    ReleaseFormatError,
    SkipReport,
    find_images_root,
    load_records,
)


def _rows(release_dir: Path, name: str, config: str, **kwargs) -> list[dict]:
    images = ImagesRoot(find_images_root(release_dir))
    return list(ReleaseFile(release_dir / name, config).rows(images, **kwargs))


def _rewrite(path: Path, change) -> None:
    records = json.loads(path.read_text())
    change(records)
    path.write_text(json.dumps(records))


def test_fixture_rows_keep_every_value_byte_identical(vlkeb_fixture_dir: Path):
    for name, config in [("train.json", "edit"), ("eval.json", "edit"), ("eval_multihop.json", "multihop"),
                         ("eval_edit_onehop.json", "edit_onehop")]:
        records = json.loads((vlkeb_fixture_dir / name).read_text(encoding="utf-8"))
        rows = _rows(vlkeb_fixture_dir, name, config)
        assert len(rows) == len(records)
        for index, (record, row) in enumerate(zip(records, rows, strict=True)):
            assert row["case_id"] == f"{name[:-5]}-{index:05d}"
            for field in ("src", "rephrase", "pred", "alt", "loc", "loc_ans", "m_loc_q", "m_loc_a"):
                assert row[field] == record[field]
            for field in ("image", "image_rephrase", "m_loc"):
                assert row[f"{field}_path"] == record[field]
                assert Path(row[field]["path"]) == vlkeb_fixture_dir.absolute() / "mmkb_images" / record[field]
                assert row[field]["bytes"] is None


def test_fixture_specific_values(vlkeb_fixture_dir: Path):
    train = _rows(vlkeb_fixture_dir, "train.json", "edit")
    assert train[1]["pred"] == "Laredo,_Texas"  # underscores are the release's, kept
    assert train[1]["portability"] == []
    multihop = _rows(vlkeb_fixture_dir, "eval_multihop.json", "multihop")
    assert multihop[0]["portability"] == [
        {"hop": 1, "question": "In which country was the footballer in the image born?", "answer": "Portugal"},
        {"hop": 2, "question": "What is the capital of the country where the footballer in the image was born?",
         "answer": "Lisbon"},
    ]
    onehop = _rows(vlkeb_fixture_dir, "eval_edit_onehop.json", "edit_onehop")
    assert onehop[0]["onehop"] == [{
        "edit_question": "Which club does the footballer in the image play for?",
        "edit_answer": "Inter Miami",
        "question": "In which country does the footballer in the image play club football?",
        "answer": "United States",
    }]
    assert onehop[0]["portability"] == []


def test_embedded_images_are_the_file_bytes(vlkeb_fixture_dir: Path):
    row = _rows(vlkeb_fixture_dir, "eval.json", "edit", embed_images=True)[0]
    assert row["image"] == {"bytes": (vlkeb_fixture_dir / "mmkb_images/m.0fx05/google_3.jpg").read_bytes(),
                            "path": "m.0fx05/google_3.jpg"}


def _drop_alt(records):
    del records[1]["alt"]


def _int_src(records):
    records[1]["src"] = 7


def _missing_image(records):
    records[1]["image_rephrase"] = "m.0fx03/missing.jpg"


def _parent_escape(records):
    records[1]["m_loc"] = "../eval.json"


def _nested_escape(records):
    records[1]["image"] = "m.0fx03/../../train.json"


def _absolute_path(records):
    records[1]["image"] = "/etc/hostname"


def _image_not_string(records):
    records[1]["image"] = ["m.0fx03/google_4.jpg"]


def _record_not_object(records):
    records[1] = "not a record"


def _long_image_path(records):
    records[1]["image"] = "m.0fx03/" + "a" * 5000 + ".jpg"


def _lone_surrogate(records):
    records[1]["rephrase"] = "Who is \ud800?"


BAD_RECORDS = {
    "missing field": (_drop_alt, "'alt'", "missing field"),
    "wrong type": (_int_src, "'src'", "expected a string, got int"),
    "missing image": (_missing_image, "'image_rephrase'", "does not exist"),
    "parent escape": (_parent_escape, "'m_loc'", "leaves the images root"),
    "nested escape": (_nested_escape, "'image'", "leaves the images root"),
    "absolute path": (_absolute_path, "'image'", "absolute image path"),
    "image not a string": (_image_not_string, "'image'", "expected a string, got list"),
    "record not an object": (_record_not_object, "record 1", "expected a JSON object"),
    # found by tests/test_fuzz.py: an OSError from the file system, an encoding error when written
    "image name too long": (_long_image_path, "'image'", "cannot be looked up: File name too long"),
    "lone surrogate": (_lone_surrogate, "'rephrase'", "not valid Unicode: surrogates not allowed"),
}


@pytest.mark.parametrize("kind", BAD_RECORDS)
def test_bad_record_names_file_record_and_field(writable_release: Path, kind: str):
    change, field, problem = BAD_RECORDS[kind]
    _rewrite(writable_release / "eval.json", change)
    with pytest.raises(ReleaseFormatError) as caught:
        _rows(writable_release, "eval.json", "edit")
    message = str(caught.value)
    assert message.startswith("eval.json: record 1")
    assert field in message and problem in message
    assert caught.value.index == 1 and caught.value.file == "eval.json"


@pytest.mark.parametrize("content", [b"", b"[1, 2", b"\xff\xfe\x00", b'{"src": "a"}'])
def test_corrupt_image_is_found_when_reading(writable_release: Path, content: bytes):
    (writable_release / "mmkb_images/m.0fx03/bing_5.jpg").write_bytes(content)
    with pytest.raises(ReleaseFormatError, match=r"eval.json: record 1: field 'image_rephrase': .*cannot be decoded"):
        _rows(writable_release, "eval.json", "edit")
    with pytest.raises(ReleaseFormatError, match="cannot be decoded"):
        _rows(writable_release, "eval.json", "edit", embed_images=True)


def test_truncated_jpeg_is_corrupt(writable_release: Path):
    image = writable_release / "mmkb_images/m.0fx03/bing_5.jpg"
    image.write_bytes(image.read_bytes()[:600])
    with pytest.raises(ReleaseFormatError, match="record 1: field 'image_rephrase'.*cannot be decoded"):
        _rows(writable_release, "eval.json", "edit")


@pytest.mark.parametrize("content, problem", [
    ("", "file is empty"),
    ("  \n", "file is empty"),
    ("[]", "holds no records"),
    ('{"src": "a"}', "expected a JSON list of records, got a JSON dict"),
    ("[{", "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_bad_file(tmp_path: Path, content: str, problem: str):
    path = tmp_path / "eval.json"
    path.write_text(content)
    with pytest.raises(ReleaseFormatError, match=problem) as caught:
        load_records(path)
    assert str(caught.value).startswith("eval.json: ")


def test_missing_file_and_images_root(tmp_path: Path):
    with pytest.raises(ReleaseFormatError, match="release file not found"):
        load_records(tmp_path / "train.json")
    with pytest.raises(ReleaseFormatError, match="mmkb_images: images root is not a directory"):
        find_images_root(tmp_path)


def _port(items):
    def change(records):
        records[0]["port_new"] = items
    return change


@pytest.mark.parametrize("items, field, problem", [
    ("1-hop", "'port_new'", "expected a list, got str"),
    (["x"], "'port_new[0]'", "expected an object"),
    ([{"port_type": "two-hop", "Q&A": {"Question": "q", "Answer": "a"}}], "'port_new[0].port_type'", "'k-hop'"),
    ([{"port_type": 2, "Q&A": {"Question": "q", "Answer": "a"}}], "'port_new[0].port_type'", "expected a string"),
    # past the int32 hop column, and thousands of digits (which int() itself refuses)
    ([{"port_type": "2147483648-hop", "Q&A": {"Question": "q", "Answer": "a"}}], "'port_new[0].port_type'",
     "k at most 2147483647"),
    ([{"port_type": "9" * 5000 + "-hop", "Q&A": {"Question": "q", "Answer": "a"}}], "'port_new[0].port_type'",
     "'k-hop'"),
    ([{"port_type": "\u0663-hop", "Q&A": {"Question": "q", "Answer": "a"}}], "'port_new[0].port_type'", "'k-hop'"),
    ([{"port_type": "1-hop"}], "'port_new[0].Q&A'", "missing field"),
    ([{"port_type": "1-hop", "Q&A": {"Question": "q"}}], "'port_new[0].Q&A.Answer'", "missing field"),
    ([{"port_type": "1-hop", "Q&A": {"Question": "q", "Answer": "a"}},
      {"port_type": "3-hop", "Q&A": {"Question": None, "Answer": "a"}}], "'port_new[1].Q&A.Question'",
     "expected a string, got NoneType"),
])
def test_malformed_port_new(writable_release: Path, items, field: str, problem: str):
    _rewrite(writable_release / "eval_multihop.json", _port(items))
    with pytest.raises(ReleaseFormatError) as caught:
        _rows(writable_release, "eval_multihop.json", "multihop")
    assert str(caught.value).startswith(f"eval_multihop.json: record 0: field {field}")
    assert problem in str(caught.value)
    assert caught.value.reason == "malformed port_new"


def test_malformed_onehop(writable_release: Path):
    _rewrite(writable_release / "eval_edit_onehop.json", lambda records: records[0]["port_new"][0].pop("port_a"))
    with pytest.raises(ReleaseFormatError, match="eval_edit_onehop.json: record 0: field 'port_new.0..port_a'"):
        _rows(writable_release, "eval_edit_onehop.json", "edit_onehop")
    _rewrite(writable_release / "eval_edit_onehop.json", lambda records: records[0].pop("port_new"))
    with pytest.raises(ReleaseFormatError, match="record 0: field 'port_new': missing field"):
        _rows(writable_release, "eval_edit_onehop.json", "edit_onehop")


def test_skip_invalid_counts_each_skipped_record(writable_release: Path):
    def break_records(records):
        records.extend(json.loads(json.dumps(records + records)))  # 6 records: 0-1 good, 2-5 to break
        del records[2]["alt"]
        records[3]["image"] = "../train.json"
        records[4]["port_new"][0]["port_type"] = "many-hops"
        del records[5]["loc"]

    _rewrite(writable_release / "eval_multihop.json", break_records)
    with pytest.raises(ReleaseFormatError, match="record 2: field 'alt'"):
        _rows(writable_release, "eval_multihop.json", "multihop")
    report = SkipReport()
    rows = _rows(writable_release, "eval_multihop.json", "multihop", skip_invalid=True, report=report)
    assert [row["case_id"] for row in rows] == ["eval_multihop-00000", "eval_multihop-00001"]
    assert report.total == 4
    assert report.to_dict() == {"eval_multihop.json": {
        "missing field": 2, "image path escapes images root": 1, "malformed port_new": 1}}
    summary = report.summary()
    assert summary.startswith("4 invalid record(s) skipped:")
    assert "eval_multihop.json: 2 x missing field (e.g. eval_multihop.json: record 2: field 'alt'" in summary


def test_images_root_given_elsewhere_and_symlinks_inside_it(writable_release: Path, tmp_path: Path):
    moved = tmp_path / "pictures"
    (writable_release / "mmkb_images").rename(moved)
    blob = tmp_path / "blob.jpg"  # like a hub snapshot: the file is a symlink to a blob outside the root
    (moved / "m.0fx05/google_3.jpg").rename(blob)
    (moved / "m.0fx05/google_3.jpg").symlink_to(blob)
    images = ImagesRoot(find_images_root(writable_release, moved))
    rows = list(ReleaseFile(writable_release / "eval.json", "edit").rows(images, embed_images=True))
    assert rows[0]["image"]["bytes"] == blob.read_bytes()
