"""The evaluation engine: exact shortcuts, row layout, failed cases, resume after a crash."""

from __future__ import annotations

import json
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
import torch

from editors import run as runs
from editors.bench import reference_rows
from editors.cases import CaseSequence, case_from_row, load_split
from editors.engine import Engine, EngineOptions
from editors.forward import TopLayers, model_logits
from editors.methods import make_method
from editors.methods.ft_llm import FTLLM
from editors.queries import DEFAULT_CONFIG, case_queries
from editors.run_dir import RunSettings
from metric.kebench import score_predictions


@pytest.fixture(scope="module")
def test_split(tiny_world):
    return load_split(tiny_world, "edit", "test")


@pytest.fixture(scope="module")
def train_cases(tiny_world) -> CaseSequence:
    return CaseSequence(load_split(tiny_world, "edit", "train"))


def test_prefix_cache_and_top_layers_give_the_plain_logits(llava, test_split):
    case = CaseSequence(test_split)[0]
    queries = [replace(query, context="New Fact: a b\nPrompt: c d\n\nNew Fact: e f\nPrompt:") for _, _, query in case_queries(case, DEFAULT_CONFIG)]
    batch = llava.encode(queries)
    with torch.no_grad():
        cached, offset = model_logits(llava, batch)
        plain = llava.model(**batch.inputs).logits
    assert offset > 0, "rows sharing a context must reuse its KV cache"
    torch.testing.assert_close(cached, plain[:, offset:], rtol=1e-4, atol=1e-4)
    top = TopLayers(llava, batch, -2)
    with torch.no_grad():
        torch.testing.assert_close(top.logits(), plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["ft-llm", "ike"])
def test_batched_engine_matches_per_query_reference_loop(llava, test_split, train_cases, method):
    """Our engine (batched, cached) and the reference-style loop (batch 1, deep copy) agree."""
    cases = [CaseSequence(test_split)[i] for i in range(2)]
    options = {"k": 8} if method == "ike" else {}
    ours, reference = make_method(method, options), make_method(method, options)
    for m in (ours, reference):
        m.prepare(llava, train_cases)
    engine = Engine(llava, ours, EngineOptions(generate=False))
    our_rows = [row for result in engine.run((c.case_id, c) for c in cases) for row in result.rows]
    ref_rows = reference_rows(llava, reference, cases)
    assert [(r["case_id"], r["metric"], r["target"]) for r in our_rows] == [
        (r["case_id"], r["metric"], r["target"]) for r in ref_rows
    ]
    ours_scores = score_predictions(our_rows, bootstrap=0)["scores"]
    ref_scores = score_predictions(ref_rows, bootstrap=0)["scores"]
    for name, value in ours_scores.items():
        assert (value is None) == (ref_scores[name] is None)
        if value is not None:
            assert abs(value - ref_scores[name]) <= 0.1, name


def test_rows_follow_the_metric_schema(llava, test_split):
    case = CaseSequence(test_split)[0]
    engine = Engine(llava, make_method("ft-llm", {}), EngineOptions(generate=True, max_new_tokens=4))
    (result,) = list(engine.run(iter([(case.case_id, case)])))
    by_metric = {row["metric"]: row for row in result.rows}
    tokenizer = llava.processor.tokenizer
    reliability = by_metric["reliability"]
    assert reliability["target"] == tokenizer(" " + case.alt, add_special_tokens=False)["input_ids"]
    assert len(reliability["pre"]) == len(reliability["post"]) == len(reliability["target"])
    assert reliability["answer_span"] == [] and reliability["post_text"] != ""
    for metric, k in (("t_locality", 1), ("i_locality", 10)):
        row = by_metric[metric]
        start, end = row["answer_span"]
        assert 0 < start < end <= len(row["post"]) == len(row["pre"])
        assert {len(ids) for ids in row["post"]} == {k}
        assert [ids[0] for ids in row["pre"][start:end]] == row["target"], "the model knows its locality answers"
    assert by_metric["t_locality"]["answer"] == case.loc_ans
    assert len(by_metric["i_locality"]["pre"]) > len(by_metric["t_locality"]["pre"]), "image positions count"


def broken_image_split(test_split, count: int):
    """The first ``count`` test rows, the second one's edit image replaced by bytes that are no image."""
    import datasets

    rows = test_split.select(range(count)).cast_column("image", datasets.Image(decode=False)).to_list()
    rows[1]["image"] = {"bytes": b"this is not a jpeg", "path": rows[1]["image_path"]}
    return datasets.Dataset.from_list(rows, features=test_split.features)


def test_a_broken_image_fails_its_case_only_and_is_counted(tiny_llava, tiny_world, test_split, tmp_path, monkeypatch):
    broken = broken_image_split(test_split, 3)
    load = load_split
    monkeypatch.setattr(runs, "load_split", lambda data, config, split: broken if split == "test" else load(data, config, split))
    out = tmp_path / "run"
    scores = runs.run(RunSettings(method="ft-llm", out=out, model=str(tiny_llava), data=str(tiny_world), generate=False))
    info = json.loads((out / "run.json").read_text())
    assert info["failed_cases"] == 1 and info["failed_case_ids"] == [broken["case_id"][1]]
    assert scores["token"]["counts"]["reliability"] == 2
    assert scores["token"]["skipped"]["reliability"] == 1
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    failed = [line for line in lines if line["error"]]
    assert len(failed) == 1 and "field 'image'" in failed[0]["error"] and broken["case_id"][1] in failed[0]["error"]
    assert pq.read_table(out / "predictions.parquet").num_rows == sum(len(line["rows"]) for line in lines)


def test_resume_after_a_crash_loses_nothing_and_redoes_nothing(tiny_llava, tiny_world, tmp_path, monkeypatch):
    settings = dict(method="ft-llm", model=str(tiny_llava), data=str(tiny_world), limit=3, generate=False)
    runs.run(RunSettings(out=tmp_path / "whole", **settings))

    applied: list[str] = []
    apply = FTLLM.apply

    def crashing(self, adapter, case):
        applied.append(case.case_id)
        if len(applied) == 2:
            raise KeyboardInterrupt("simulated crash")
        return apply(self, adapter, case)

    monkeypatch.setattr(FTLLM, "apply", crashing)
    out = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        runs.run(RunSettings(out=out, **settings))
    jsonl = out / "predictions.jsonl"
    assert len(jsonl.read_text().splitlines()) == 1
    with jsonl.open("a") as sink:
        sink.write('{"case_id": "torn')  # a line cut short by the crash
    with pytest.raises(ValueError, match="--resume"):
        runs.run(RunSettings(out=out, **settings))

    applied.clear()
    monkeypatch.setattr(FTLLM, "apply", lambda self, adapter, case: applied.append(case.case_id) or apply(self, adapter, case))
    runs.run(RunSettings(out=out, resume=True, **settings))
    whole = pq.read_table(tmp_path / "whole" / "predictions.parquet")
    resumed = pq.read_table(out / "predictions.parquet")
    assert len(applied) == 2, "only the two unfinished cases are edited again"
    assert resumed.equals(whole), "a resumed run gives exactly the uninterrupted run's predictions"


def test_case_errors_name_case_and_field(test_split):
    broken = broken_image_split(test_split, 2)
    cases = CaseSequence(broken)
    with pytest.raises(ValueError, match=rf"case {broken['case_id'][1]}: field 'image'"):
        cases[1]
    row = test_split.select(range(1)).to_list()[0]
    row["alt"] = ""
    with pytest.raises(ValueError, match=rf"case {row['case_id']}: field 'alt' is missing, empty or not a string"):
        case_from_row(row)
