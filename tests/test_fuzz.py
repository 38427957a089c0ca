"""Property-based fuzzing of the two readers of outside data: predictions (the metric) and the release layout.

Each test takes a valid input, applies a few random mutations (type swaps, deletions, huge and
negative ints, out-of-range spans, wrong nesting, NaN, empty and non-UTF-8-encodable strings) and
checks the one promise of the reader: the input is either read (and scored) or refused with a
``ValueError`` that says where, never another exception. Derandomized so that CI sees the same
examples every run; no example database, so nothing is written to the checkout.
"""

from __future__ import annotations

import copy
import json
import math
import re
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kebench_hf.release import ImagesRoot, ReleaseFile, ReleaseFormatError, SkipReport, find_images_root
from kebench_hf.schema import features
from kebench_hf.scoring import read_predictions
from metric.kebench import PREDICTION_FEATURES, SCORES, score_predictions
from tests.conftest import FIXTURES
from tests.test_metric import case_rows

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: values that have broken readers: out-of-range ints, NaN, non-encodable and empty strings, nesting
NASTY = st.sampled_from(
    [
        None, float("nan"), float("inf"), -1, 0, 2**31, 2**63, -(2**63) - 1, 2**64, 10**30, 1.5, True,
        "", " ", "ü", "\ud800", "\x00", "名前", "The", [], [[]], [[[1]]], [1, 2], [-1, 5], [0, 10**9], [5, 2],
        [2**63, 0], {}, {"a": 1}, [None], [[None]], ["x"], [[2**63]], [[-(2**63) - 1]], [[float("nan")]], [["a"]],
        [[1, 2], [3]], [[1.0]], [True],
    ]
) | st.integers() | st.text(max_size=6)

FIELDS = list(PREDICTION_FEATURES)


@st.composite
def mutation(draw, rows: int):
    kind = draw(st.sampled_from(["set", "set", "set", "delete", "swap", "wrap", "unwrap", "span", "row", "drop", "copy"]))
    row = draw(st.integers(0, rows - 1))
    field = draw(st.sampled_from(FIELDS))
    if kind == "set":
        return kind, row, field, draw(NASTY)
    if kind == "swap":
        return kind, row, field, draw(st.sampled_from(FIELDS))
    if kind == "span":
        bound = st.integers(-3, 8) | st.sampled_from([2**31, 2**62, 2**63 - 1, 2**63, -(2**63)])
        return kind, row, "answer_span", draw(st.lists(bound, max_size=3))
    if kind == "row":
        return kind, row, field, draw(NASTY)
    return kind, row, field, None


def mutate(rows: list, mutations: list) -> list:
    rows = copy.deepcopy(rows)
    for kind, row, field, value in mutations:
        if not rows:
            break
        row %= len(rows)
        record = rows[row]
        if kind == "row":
            rows[row] = value
        elif kind == "drop":
            del rows[row]
        elif kind == "copy":
            rows.append(copy.deepcopy(record))
        elif not isinstance(record, dict) or field not in record:
            continue
        elif kind in ("set", "span"):
            record[field] = value
        elif kind == "delete":
            del record[field]
        elif kind == "swap" and value in record:
            record[field], record[value] = record[value], record[field]
        elif kind == "wrap":
            record[field] = [record[field]]
        elif kind == "unwrap" and isinstance(record[field], list) and record[field]:
            record[field] = record[field][0]
    return rows


def check_scored(result: dict) -> None:
    assert set(result["scores"]) == set(SCORES)
    for name, score in result["scores"].items():
        assert score is None or (math.isfinite(score) and 0 <= score <= 100), (name, score)
        assert result["counts"][name] >= 0 and result["skipped"][name] >= 0


def check_refusal(error: ValueError, *, rows_given: bool) -> None:
    """A refusal says where: a row and a column, or which column, or what is wrong with the whole input."""
    message = str(error)
    empty = "empty" in message  # no rows left (an empty list, or an empty JSON Lines file)
    whole_input = empty or any(text in message for text in ("missing column", "differ in length"))
    row = re.search(r"\brows? \d+", message)
    column = re.search(r"column '\w+'", message)
    if rows_given:
        # a list of rows always has a row to blame, except when no row is left
        assert row or empty, message
    else:
        assert row or column or whole_input, message


VALID_ROWS = case_rows()


@FUZZ
@given(
    mutations=st.lists(mutation(len(VALID_ROWS)), min_size=1, max_size=4),
    form=st.sampled_from(["rows", "columns", "jsonl"]),
    protocol=st.sampled_from(["token", "generate"]),
    average=st.sampled_from(["case", "token"]),
)
def test_mutated_predictions_are_scored_or_refused_with_row_and_column(mutations, form, protocol, average):
    check_predictions(mutations, form, protocol, average)


def check_predictions(mutations: list, form: str, protocol: str, average: str) -> None:
    rows = mutate(VALID_ROWS, mutations)
    average = average if protocol == "token" else "case"
    try:
        if form == "jsonl":
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "predictions.jsonl"
                path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
                data = read_predictions(path)
        elif form == "columns":
            data = {name: [row.get(name) if isinstance(row, dict) else row for row in rows] for name in FIELDS}
        else:
            data = rows
        result = score_predictions(data, protocol=protocol, average=average, bootstrap=3)
    except ValueError as error:
        check_refusal(error, rows_given=form != "columns")
    else:
        check_scored(result)


@pytest.fixture(scope="module")
def kebench_module():
    import evaluate

    return evaluate.load(str(Path(__file__).resolve().parent.parent / "metric" / "kebench.py"), keep_in_memory=True)


@settings(FUZZ, max_examples=40)
@given(mutations=st.lists(mutation(len(VALID_ROWS)), min_size=1, max_size=3))
def test_mutated_predictions_through_evaluate_compute(kebench_module, mutations):
    rows = [row for row in mutate(VALID_ROWS, mutations) if isinstance(row, dict)]
    columns = {name: [row[name] for row in rows if name in row] for name in FIELDS}
    try:
        result = kebench_module.compute(**columns, bootstrap=3)
    except ValueError as error:
        check_refusal(error, rows_given=False)
    else:
        check_scored(result)
    # a refusal leaves the module usable for the next computation
    assert kebench_module.compute(**{name: [row[name] for row in VALID_ROWS] for name in FIELDS}, bootstrap=0)


RELEASE_FILES = {"eval.json": "edit", "eval_multihop.json": "multihop", "eval_edit_onehop.json": "edit_onehop"}
IMAGE_PATHS = ["", "/etc/passwd", "../outside.jpg", "m.0fx05/../../x.jpg", "a" * 5000, "m.0fx05/\x00.jpg",
               "C:\\image.jpg", "m.0fx05/bing_4.jpg", "m.0fx05", "m.0fx05/google_3.jpg/"]
PORT_TYPES = ["0-hop", "-1-hop", "1-hop ", "1-HOP", "hop", "", "\u0663-hop", "9223372036854775808-hop",
              "99999999999999999999999-hop", "2147483648-hop", "4-hop"]
RECORD_FIELDS = ["src", "rephrase", "pred", "alt", "image", "image_rephrase", "loc", "loc_ans", "m_loc", "m_loc_q",
                 "m_loc_a", "port_new"]
PORT_KEYS = ["port_type", "Q&A", "port_edit_q", "port_edit_a", "port_q", "port_a"]


@st.composite
def release_mutation(draw):
    kind = draw(st.sampled_from(["set", "set", "image", "delete", "record", "port", "port", "port_key", "port_type",
                                 "qa", "top"]))
    return (kind, draw(st.integers(0, 3)), draw(st.sampled_from(RECORD_FIELDS)), draw(st.sampled_from(PORT_KEYS)),
            draw(NASTY), draw(st.sampled_from(IMAGE_PATHS)), draw(st.sampled_from(PORT_TYPES)))


def mutate_release(records: list, mutations: list):
    records = copy.deepcopy(records)
    for kind, index, field, key, value, image, port_type in mutations:
        if kind == "top":
            return value
        record = records[index % len(records)]
        if kind == "record":
            records[index % len(records)] = value
            continue
        if not isinstance(record, dict):
            continue
        items = record.get("port_new")
        item = items[index % len(items)] if isinstance(items, list) and items else None
        if kind == "set":
            record[field] = value
        elif kind == "image":
            record[["image", "image_rephrase", "m_loc"][index % 3]] = image
        elif kind == "delete":
            record.pop(field, None)
        elif kind == "port" and isinstance(items, list) and items:
            items[index % len(items)] = value
        elif kind == "port_key" and isinstance(item, dict):
            if key in item and index % 2:
                del item[key]
            else:
                item[key] = value
        elif kind == "port_type" and isinstance(item, dict):
            item["port_type"] = port_type
        elif kind == "qa" and isinstance(item, dict) and isinstance(item.get("Q&A"), dict):
            item["Q&A"][["Question", "Answer"][index % 2]] = value
    return records


@FUZZ
@given(
    name=st.sampled_from(sorted(RELEASE_FILES)),
    mutations=st.lists(release_mutation(), min_size=1, max_size=3),
    skip_invalid=st.booleans(),
)
def test_mutated_release_files_are_read_or_refused_with_record_and_field(name, mutations, skip_invalid):
    check_release(name, mutations, skip_invalid)


def check_release(name: str, mutations: list, skip_invalid: bool) -> None:
    release = FIXTURES / "vlkeb-format"
    config = RELEASE_FILES[name]
    records = mutate_release(json.loads((release / name).read_text(encoding="utf-8")), mutations)
    images = ImagesRoot(find_images_root(release))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_text(json.dumps(records), encoding="utf-8")
        try:
            report = SkipReport()
            rows = list(ReleaseFile(path, config).rows(images, skip_invalid=skip_invalid, report=report))
        except ReleaseFormatError as error:
            # a record's defect names the record, and the field unless the record itself is no object
            assert error.index is not None or error.field is None, str(error)
            if error.index is not None and error.field is None:
                assert "expected a JSON object" in error.problem, str(error)
            return
    # what was read is what the builder writes: it must fit the config's Arrow schema
    pa.Table.from_pylist(rows, schema=features(config).arrow_schema)
    if not skip_invalid:
        assert len(rows) == len(records)
