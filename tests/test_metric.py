"""The KEBench metric: hand-computed scores under both protocols, intervals, bad input, evaluate."""

from __future__ import annotations

import copy
import doctest
import math
import re
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest

from metric.kebench import (
    DISPLAY_NAMES,
    METRICS,
    PREDICTION_FEATURES,
    SCORES,
    normalize_answer,
    score_predictions,
    to_table,
)

REPO = Path(__file__).resolve().parent.parent


def row(case_id, metric, target, pre, post, *, hop=0, span=(), answer="x", pre_text="", post_text="", aliases=()):
    return {
        "case_id": case_id,
        "metric": metric,
        "hop": hop,
        "target": list(target),
        "answer_span": list(span),
        "pre": pre,
        "post": post,
        "answer": answer,
        "pre_text": pre_text,
        "post_text": post_text,
        "aliases": list(aliases),
    }


def case_rows() -> list[dict]:
    """Two cases, every score, ragged shapes, k = 1 to 3; the comments give each row's score."""
    return [
        # 0: top-1 right at 2 of 3 answer tokens -> 2/3
        row("c1", "reliability", [10, 11, 12], [[10], [11], [12]], [[10], [11], [99]],
            answer="Cristiano Ronaldo", post_text="cristiano ronaldo."),
        # 1: -> 1
        row("c2", "reliability", [20], [[1]], [[20]], answer="Laredo,_Texas", post_text="Laredo, Texas"),
        # 2: only rank 0 counts: 10 == 10, 5 != 11 -> 1/2
        row("c1", "t_generality", [10, 11], [[10, 1], [5, 11]], [[10, 1], [5, 11]],
            answer="The Beatles", post_text="Beatles"),
        # 3: -> 2/4
        row("c2", "t_generality", [20, 21, 22, 23], [[20], [21], [0], [0]], [[20], [21], [0], [0]],
            answer="Paris", aliases=["City of Light"], post_text="city of lights"),
        # 4: -> 0 (a real zero, unlike the missing metrics' None)
        row("c1", "i_generality", [7], [[8]], [[8]], answer="Ronaldo", aliases=["CR7"], post_text="CR7"),
        # 5: all positions 3/4; answer span [2, 4): 3 != 0, 4 == 4 -> 1/2
        row("c1", "t_locality", [3, 4], [[1], [2], [3], [4]], [[1], [2], [0], [4]], span=(2, 4),
            pre_text="The answer is 42", post_text="answer is 42"),
        # 6: -> 1, answer only 1
        row("c2", "t_locality", [6], [[5], [6]], [[5], [6]], span=(1, 2), pre_text="blue", post_text="red"),
        # 7: ordered ranks: [1,2,3] vs [1,3,2] matches once, [4,5,6] three times -> 4/6; span [1, 2) -> 1
        row("c1", "i_locality", [5], [[1, 2, 3], [4, 5, 6]], [[1, 3, 2], [4, 5, 6]], span=(1, 2),
            pre_text="a dog", post_text="A Dog"),
        # 8: -> 0, answer only 0
        row("c2", "i_locality", [1], [[1, 1, 1]], [[2, 2, 2]], span=(0, 1), pre_text="cat"),
        # 9: -> 1
        row("c1", "portability", [30], [[0]], [[30]], hop=1, answer="Lisbon", post_text="Lisbon"),
        # 10: -> 1/4
        row("c1", "portability", [31, 32, 33, 34], [[0]] * 4, [[31], [0], [0], [0]], hop=2,
            answer="Portugal", post_text="Spain"),
        # 11: -> 0
        row("c2", "portability", [40], [[41]], [[41]], hop=1, answer="Madrid", post_text="Madrid"),
        # 12: edited twice, then asked the one-hop question: 1/2
        row("c1", "edit_onehop", [50, 51], [[0], [0]], [[50], [0]], answer="United States",
            post_text="the United States"),
        # 13: -> 0
        row("c2", "edit_onehop", [60], [[60]], [[61]], answer="Spain", post_text="Portugal"),
    ]


TOKEN_SCORES = {
    "reliability": 100 * (2 / 3 + 1) / 2,
    "t_generality": 100 * (1 / 2 + 2 / 4) / 2,
    "i_generality": 0.0,
    "t_locality": 100 * (3 / 4 + 1) / 2,
    "i_locality": 100 * (4 / 6 + 0) / 2,
    # c1 = mean(1, 1/4), c2 = 0: mean over cases, not over rows (which would give 41.67)
    "portability": 100 * ((1 + 1 / 4) / 2 + 0) / 2,
    "edit_onehop": 100 * (1 / 2 + 0) / 2,
}

#: average="token": every answer token (locality: every compared id) of a metric's rows counts once
TOKEN_AVERAGE_SCORES = {
    "reliability": 100 * (2 + 1) / (3 + 1),
    "t_generality": 100 * (1 + 2) / (2 + 4),
    "i_generality": 0.0,
    "t_locality": 100 * (3 + 2) / (4 + 2),
    "i_locality": 100 * (4 + 0) / (6 + 3),
    "portability": 100 * (1 + 1 + 0) / (1 + 4 + 1),
    "edit_onehop": 100 * (1 + 0) / (2 + 1),
}

GENERATE_SCORES = {
    "reliability": 100.0,  # "cristiano ronaldo." and "Laredo, Texas" match after normalization
    "t_generality": 50.0,  # articles dropped: "Beatles" matches; "city of lights" is no alias
    "i_generality": 100.0,  # the alias "CR7"
    "t_locality": 50.0,  # "The answer is 42" == "answer is 42"; "blue" != "red"
    "i_locality": 100.0,  # "a dog" == "A Dog"; c2 has no generated post_text -> skipped
    "portability": 100 * ((1 + 0) / 2 + 1) / 2,
    "edit_onehop": 50.0,  # "the United States" matches; "Portugal" does not
}


def assert_scores(actual: dict, expected: dict) -> None:
    assert set(actual) == set(SCORES)
    for name in SCORES:
        if expected.get(name) is None:
            assert actual[name] is None, name
        else:
            assert actual[name] == pytest.approx(expected[name], abs=1e-12), name


def test_token_protocol_matches_hand_computed_scores():
    result = score_predictions(case_rows(), protocol="token", bootstrap=0)
    assert (result["protocol"], result["preset"], result["average"]) == ("token", "kebench", "case")
    assert_scores(result["scores"], TOKEN_SCORES)
    assert result["counts"] == {name: 1 if name == "i_generality" else 2 for name in SCORES}
    assert result["skipped"] == dict.fromkeys(SCORES, 0)
    assert result["portability_by_hop"] == pytest.approx({"1": 50.0, "2": 25.0})
    assert result["locality_answer_only"] == pytest.approx({"t_locality": 75.0, "i_locality": 50.0})
    assert result["ci95"] == dict.fromkeys(SCORES)


def test_token_average_is_the_micro_mean_over_answer_tokens():
    result = score_predictions(case_rows(), average="token", bootstrap=0)
    assert result["average"] == "token"
    assert_scores(result["scores"], TOKEN_AVERAGE_SCORES)
    # the two averages differ wherever rows have different numbers of tokens
    for name in ("reliability", "t_locality", "i_locality", "portability", "edit_onehop"):
        assert result["scores"][name] != pytest.approx(TOKEN_SCORES[name])
    assert result["counts"] == {name: 1 if name == "i_generality" else 2 for name in SCORES}
    # hop 1: rows 9 and 11 hit 1 of 2 tokens; hop 2: 1 of 4
    assert result["portability_by_hop"] == pytest.approx({"1": 50.0, "2": 25.0})
    # answer spans: t_locality 1 of 2 and 1 of 1 ids; i_locality 3 of 3 and 0 of 3
    assert result["locality_answer_only"] == pytest.approx({"t_locality": 100 * 2 / 3, "i_locality": 50.0})


def test_token_average_intervals_resample_cases_and_weigh_them_by_tokens():
    # c0 hits 1 of 1 token, c1 0 of 3: the micro mean is 25 (the case mean 50); resampling cases
    # gives c0 twice (100), c1 twice (0) or one of each (25, where the case mean would say 50)
    rows = [row("c0", "reliability", [1], [[0]], [[1]]), row("c1", "reliability", [1, 2, 3], [[0]] * 3, [[0]] * 3)]
    result = score_predictions(rows, average="token", bootstrap=400, seed=1)
    assert result["scores"]["reliability"] == 25.0
    assert result["ci95"]["reliability"] == [0.0, 100.0]
    case = score_predictions(rows, bootstrap=400, seed=1)
    assert case["scores"]["reliability"] == 50.0


def test_preset_is_recorded_and_checked():
    assert score_predictions(case_rows(), bootstrap=0, preset="vlkeb")["preset"] == "vlkeb"
    with pytest.raises(ValueError, match=r"unknown preset 'easyedit'.*kebench.*vlkeb"):
        score_predictions(case_rows(), preset="easyedit")
    with pytest.raises(ValueError, match=r"unknown average 'macro'"):
        score_predictions(case_rows(), average="macro")
    with pytest.raises(ValueError, match=r"average 'token'.*token protocol.*'generate'"):
        score_predictions(case_rows(), protocol="generate", average="token")


def test_score_names_and_display_names_are_exported():
    assert SCORES[:-1] == METRICS and SCORES[-1] == "edit_onehop"
    assert list(DISPLAY_NAMES) == list(SCORES)
    assert DISPLAY_NAMES["edit_onehop"] == "Edit-1-hop Port."
    assert DISPLAY_NAMES["t_generality"] == "T-Generality"


def test_generate_protocol_matches_hand_computed_scores():
    result = score_predictions(case_rows(), protocol="generate", bootstrap=0)
    assert result["protocol"] == "generate"
    assert_scores(result["scores"], GENERATE_SCORES)
    assert result["counts"]["i_locality"] == 1
    assert result["skipped"] == {**dict.fromkeys(SCORES, 0), "i_locality": 1}
    assert result["portability_by_hop"] == pytest.approx({"1": 100.0, "2": 0.0})
    assert result["locality_answer_only"] == {"t_locality": None, "i_locality": None}


@pytest.mark.parametrize(
    ("text", "normalized"),
    [("The Beatles!", "beatles"), ("Laredo,_Texas", "laredo texas"), ("  an  Apple a day ", "apple day")],
)
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


def test_missing_metrics_are_none_not_zero():
    rows = [r for r in case_rows() if r["metric"] == "reliability"]
    result = score_predictions(rows, bootstrap=50)
    assert_scores(result["scores"], {"reliability": TOKEN_SCORES["reliability"]})
    for name in SCORES[1:]:
        assert result["ci95"][name] is None and result["counts"][name] == 0
    assert result["portability_by_hop"] == {}
    assert result["locality_answer_only"] == {"t_locality": None, "i_locality": None}


def test_failed_rows_are_skipped_and_counted():
    # as the editors write a case that could not run: nothing predicted, hop 0 even for portability
    failed = [row("c3", metric, [], [], [], answer="") for metric in METRICS]
    failed_c1 = row("c1", "reliability", [10], [], [])
    rows = [*case_rows(), *failed, failed_c1]
    result = score_predictions(rows, bootstrap=0)
    # c1's failed reliability row does not dilute its scored row; c3 has no scored row at all
    assert_scores(result["scores"], TOKEN_SCORES)
    assert result["skipped"] == {**dict.fromkeys(METRICS, 1), "reliability": 2, "edit_onehop": 0}
    assert result["counts"]["t_locality"] == 2
    assert result["portability_by_hop"] == pytest.approx({"1": 50.0, "2": 25.0})
    generate = score_predictions(rows, protocol="generate", bootstrap=0)
    assert_scores(generate["scores"], GENERATE_SCORES)
    assert generate["skipped"] == {**dict.fromkeys(METRICS, 1), "reliability": 2, "i_locality": 2, "edit_onehop": 0}


def test_exact_duplicate_rows_are_an_error_naming_both():
    rows = case_rows()
    rows.append(copy.deepcopy(rows[9]))
    with pytest.raises(ValueError, match=r"rows 9 and 14 are identical.*'c1'.*portability"):
        score_predictions(rows)


def test_distinct_rows_of_one_case_metric_and_hop_all_count():
    second_question = row("c2", "portability", [42, 43], [[0], [0]], [[42], [43]], hop=1)
    result = score_predictions([*case_rows(), second_question], bootstrap=0)
    # c2 portability = mean(0, 1) now
    assert result["scores"]["portability"] == pytest.approx(100 * ((1 + 1 / 4) / 2 + 1 / 2) / 2)
    assert result["portability_by_hop"]["1"] == pytest.approx(100 * (1 + 1 / 2) / 2)


def test_every_input_form_gives_the_same_result():
    rows = case_rows()
    expected = score_predictions(rows, bootstrap=100)
    columns = {name: [r[name] for r in rows] for name in PREDICTION_FEATURES}
    table = to_table(rows)
    dataset = datasets.Dataset.from_dict(columns, features=PREDICTION_FEATURES)
    with_numpy = [{**r, "pre": np.array(r["pre"]), "target": np.array(r["target"])} for r in rows]
    for data in (columns, table, dataset, with_numpy):
        assert score_predictions(data, bootstrap=100) == expected
    # a narrower integer type or a second chunk is read the same way
    narrow = table.set_column(table.schema.get_field_index("target"), "target", table["target"].cast(pa.list_(pa.int32())))
    assert score_predictions(pa.concat_tables([narrow.slice(0, 5), narrow.slice(5)]), bootstrap=100) == expected


def test_confidence_intervals_are_seeded_and_contain_the_estimate():
    first = score_predictions(case_rows(), bootstrap=300, seed=7)
    assert first == score_predictions(case_rows(), bootstrap=300, seed=7)
    for name in SCORES:
        low, high = first["ci95"][name]
        assert 0 <= low <= first["scores"][name] <= high <= 100
    assert first["ci95"]["i_generality"] == [0.0, 0.0]  # one case: nothing to resample


def test_confidence_interval_width_matches_the_binomial_standard_error():
    rng = np.random.default_rng(3)
    n = 400
    hits = rng.random(n) < 0.5
    rows = [row(f"c{i}", "reliability", [1], [[1]], [[1 if hit else 2]]) for i, hit in enumerate(hits)]
    result = score_predictions(rows, bootstrap=2000, seed=0)
    p = hits.mean()
    low, high = result["ci95"]["reliability"]
    expected_width = 2 * 1.96 * math.sqrt(p * (1 - p) / n) * 100
    assert result["scores"]["reliability"] == pytest.approx(100 * p)
    assert high - low == pytest.approx(expected_width, rel=0.15)
    assert score_predictions(rows, bootstrap=2000, seed=1)["ci95"]["reliability"] != [low, high]


def _set(index: int, column: str, value):
    def mutate(rows):
        rows[index][column] = value
        return rows

    return mutate


def _drop(index: int, column: str):
    def mutate(rows):
        del rows[index][column]
        return rows

    return mutate


BAD_INPUTS = {
    "unknown metric": (_set(3, "metric", "t_generalty"), r"row 3, column 'metric'.*unknown metric 't_generalty'"),
    "fewer post positions": (_set(2, "post", [[10, 1]]), r"row 2, column 'post'.*1 positions but pre has 2"),
    "top-k shape": (_set(7, "post", [[1, 3], [4, 5, 6]]), r"row 7, column 'post'.*position 0.*differ in length"),
    "position without ids": (
        lambda rows: _set(8, "post", [[]])(_set(8, "pre", [[]])(rows)),
        r"row 8, column 'post'.*no token ids",
    ),
    "float id": (_set(5, "post", [[1], [2.5], [0], [4]]), r"row 5, column 'post'.*integer"),
    "integral float id": (_set(5, "pre", [[1.0], [2], [3], [4]]), r"row 5, column 'pre'.*integer"),
    "nan id": (_set(4, "target", [float("nan")]), r"row 4, column 'target'.*integer.*nan"),
    "string id": (_set(1, "post", [["20"]]), r"row 1, column 'post'.*integer"),
    "bool id": (_set(9, "target", [True]), r"row 9, column 'target'.*integer"),
    "null id": (_set(6, "pre", [[5], [None]]), r"row 6, column 'pre'.*missing value"),
    "null text": (_set(10, "post_text", None), r"row 10, column 'post_text'.*missing value"),
    "numeric case id": (_set(0, "case_id", 17), r"row 0, column 'case_id'.*string"),
    "missing field": (_drop(11, "aliases"), r"row 11, column 'aliases'.*missing field"),
    "post longer than target": (_set(0, "target", [10, 11]), r"row 0, column 'post'.*3 positions but target has 2"),
    "locality without span": (_set(5, "answer_span", []), r"row 5, column 'answer_span'.*\[start, end\)"),
    "span out of range": (_set(6, "answer_span", [1, 3]), r"row 6, column 'answer_span'.*\[1, 3\)"),
    "span far past the row": (_set(6, "answer_span", [0, 10**6]), r"row 6, column 'answer_span'.*\[0, 1000000\)"),
    "span on an answer row": (_set(0, "answer_span", [0, 10**6]), r"row 0, column 'answer_span'.*only locality rows"),
    "span on a failed locality row": (
        lambda rows: _set(8, "answer_span", [0, 1])(_set(8, "post", [])(_set(8, "pre", [])(rows))),
        r"row 8, column 'answer_span'.*within the 0 positions",
    ),
    "id of 2**63": (_set(1, "post", [[2**63]]), r"row 1, column 'post'.*9223372036854775808"),
    "id of -2**63 - 1": (_set(1, "target", [-(2**63) - 1]), r"row 1, column 'target'.*-9223372036854775809"),
    "hop past int32": (_set(9, "hop", 2**31), r"row 9, column 'hop'.*2147483648 does not fit int32"),
    "lone surrogate": (_set(3, "answer", "\ud800"), r"row 3, column 'answer'.*surrogates"),
    "hop on edit_onehop": (_set(12, "hop", 1), r"row 12, column 'hop'.*edit_onehop row has hop 1"),
    "hop on reliability": (_set(1, "hop", 2), r"row 1, column 'hop'.*reliability row has hop 2"),
    "negative hop": (_set(9, "hop", -1), r"row 9, column 'hop'.*>= 0"),
    "float hop": (_set(9, "hop", 1.0), r"row 9, column 'hop'.*integer"),
    "empty normalized answer": (_set(0, "answer", "The"), r"row 0, column 'answer'.*empty after normalization"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_names_row_and_column(case):
    mutate, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        score_predictions(mutate(case_rows()), protocol="generate" if "answer" in case else "token")


def test_bad_shapes_of_the_whole_input():
    with pytest.raises(ValueError, match="empty"):
        score_predictions([])
    with pytest.raises(ValueError, match="empty"):
        score_predictions({name: [] for name in PREDICTION_FEATURES})
    columns = {name: [r[name] for r in case_rows()] for name in PREDICTION_FEATURES}
    with pytest.raises(ValueError, match=r"missing column.*'aliases'"):
        score_predictions({k: v for k, v in columns.items() if k != "aliases"})
    with pytest.raises(ValueError, match="differ in length"):
        score_predictions({**columns, "hop": columns["hop"][:-1]})
    for not_a_column in (3, None, "0" * 14, {"a": 1}, np.int64(1)):
        with pytest.raises(ValueError, match=r"column 'hop'.*(list with one value per row|missing)"):
            score_predictions({**columns, "hop": not_a_column})
    # a whole Arrow column can hold an id no row of the schema can: the row is found and named
    table = to_table(case_rows())
    huge = pa.array([[1]] * 4 + [[2**63]] + [[1]] * 9, pa.list_(pa.uint64()))
    with pytest.raises(ValueError, match=r"row 4, column 'target'.*9223372036854775808 does not fit"):
        score_predictions(table.set_column(table.schema.get_field_index("target"), "target", huge))
    with pytest.raises(ValueError, match="column 'pre'.*integers.*double"):
        score_predictions(to_table(case_rows()).set_column(5, "pre", pa.array([[[0.5]]] * 14)))
    with pytest.raises(ValueError, match="unknown protocol"):
        score_predictions(case_rows(), protocol="exact")
    with pytest.raises(ValueError, match="bootstrap"):
        score_predictions(case_rows(), bootstrap=-1)


@pytest.fixture(scope="module")
def kebench_module():
    import evaluate

    return evaluate.load(str(REPO / "metric" / "kebench.py"), keep_in_memory=True)


def test_evaluate_module_equals_the_direct_function(kebench_module):
    rows = case_rows()
    columns = {name: [r[name] for r in rows] for name in PREDICTION_FEATURES}
    for protocol in ("token", "generate"):
        direct = score_predictions(rows, protocol=protocol, bootstrap=200, seed=3)
        assert kebench_module.compute(**columns, protocol=protocol, bootstrap=200, seed=3) == direct
    for r in rows:
        kebench_module.add(**r)
    assert kebench_module.compute(bootstrap=200, seed=3) == score_predictions(rows, bootstrap=200, seed=3)


def test_evaluate_module_rejects_a_float_id_instead_of_truncating_it(kebench_module):
    columns = {name: [r[name] for r in case_rows()] for name in PREDICTION_FEATURES}
    columns["post"][1] = [[20.7]]
    with pytest.raises(ValueError, match=r"row 1, column 'post'.*integer"):
        kebench_module.compute(**columns)


def test_metric_card_examples_are_right(monkeypatch):
    """The worked examples of metric/README.md run as doctests from the repository root."""
    monkeypatch.chdir(REPO)
    card = (REPO / "metric" / "README.md").read_text(encoding="utf-8")
    blocks = [block for block in re.findall(r"```python\n(.*?)```", card, flags=re.S) if ">>>" in block]
    assert len(blocks) == 2
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    test = parser.get_doctest("\n".join(blocks), {}, "metric card", str(REPO / "metric" / "README.md"), 0)
    runner.run(test)
    failed, attempted = runner.summarize(verbose=False)
    assert failed == 0 and attempted >= 10
