"""Edit-one-hop, the sequential-gap protocol and the unedited baseline (method ``none``) on the tiny LLaVA."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from editors import run as runs
from editors.cases import CaseSequence, load_split
from editors.engine import Engine, EngineOptions
from editors.forward import score_queries
from editors.methods import make_method
from editors.methods.base import AppliedEdit, EditMethod
from editors.methods.none import NoEditConfig
from editors.queries import spec
from editors.report import running_scores
from editors.run_dir import RunSettings
from tests.test_methods import state

OPTIONS = EngineOptions(generate=False, config="edit_onehop")


@pytest.fixture(scope="module")
def onehop_cases(tiny_world) -> CaseSequence:
    return CaseSequence(load_split(tiny_world, "edit_onehop", "test"))


def assert_restored(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} differs after the run"


def recorded(method: EditMethod) -> list[tuple[list, list[AppliedEdit], int]]:
    """Every ``apply_all`` call: ``(cases, the edits returned, SERAC's memory size then)``."""
    calls: list[tuple[list, list[AppliedEdit], int]] = []
    apply_all = method.apply_all

    def recording(adapter, cases):
        edits = apply_all(adapter, cases)
        calls.append((cases, edits, len(getattr(method, "memory", []))))
        return edits

    method.apply_all = recording  # type: ignore[method-assign]
    return calls


def check_onehop_run(method: EditMethod, adapter, onehop_cases: CaseSequence) -> None:
    """Both edits made (in order, the second text-only), only the one-hop question scored, all restored."""
    calls = recorded(method)
    before = state(adapter.model)
    cases = [(case.case_id, case) for case in list(onehop_cases)[:2]]
    results = list(Engine(adapter, method, OPTIONS).run(iter(cases)))
    assert_restored(adapter.model, before)
    for (_, case), result, (edited, edits, memory) in zip(cases, results, calls, strict=True):
        assert result.error is None
        item = case.onehop[0]
        # the reference's edit_onehop branch scores the two-edit question alone
        assert [(row["metric"], row["hop"], row["answer"]) for row in result.rows] == [("edit_onehop", 0, item.answer)]
        first, second = edited
        assert (first.src, first.alt, first.image) == (case.src, case.alt, case.image)
        # the second edit is text-only, except for a method that edits only through the image
        assert (second.src, second.alt) == (item.edit_question, item.edit_answer)
        assert (second.image is case.image) if method.edits_through_image else second.image is None
        if method.name == "ike":  # both facts in one context, the first one's demonstrations before them
            (edit,) = edits
            assert edit.context.endswith(f"New Fact: {case.src} {case.alt}\nNew Fact: {item.edit_question} "
                                         f"{item.edit_answer}\nPrompt:")
        else:
            assert len(edits) == 2
        if method.name == "serac":  # both facts in memory while the case is scored
            assert memory == 2


@pytest.mark.parametrize("name", ["ft-llm", "ft-vision", "ike", "none"])
def test_edit_onehop_makes_both_edits_scores_the_onehop_question_and_restores(llava, onehop_cases, train_cases, name):
    method = make_method(name, {})
    method.prepare(llava, train_cases)
    check_onehop_run(method, llava, onehop_cases)


def test_edit_onehop_scores_the_model_holding_both_edits_in_order(llava, onehop_cases):
    """An independent replay: edit, second edit, then the one-hop question, by hand."""
    method = make_method("ft-llm", {})
    case = onehop_cases[0]
    (row,) = next(Engine(llava, method, OPTIONS).run(iter([(case.case_id, case)]))).rows
    before = state(llava.model)
    edits = [method.apply(llava, case), method.apply(llava, case.second_edit())]
    (expected,) = score_queries(llava, [query for _, query in spec("edit_onehop").build(case)], [0])
    for edit in reversed(edits):
        edit.restore()
    assert_restored(llava.model, before)
    assert [ids[0] for ids in row["post"]] == expected.answer_argmax
    assert row["target"] == expected.target_ids


class Recorder(EditMethod):
    """Edits nothing; logs every edit, score and restore, with the edits then in place."""

    name = "recorder"
    config_class = NoEditConfig

    def __init__(self, events: list) -> None:
        super().__init__()
        self.events, self.active = events, []

    def apply(self, adapter, case):
        self.active.append(case.case_id)
        self.events.append(("edit", case.case_id))
        return Recorded(self, adapter, case.case_id)


class Recorded(AppliedEdit):
    def __init__(self, method: Recorder, adapter, case_id: str) -> None:
        super().__init__(adapter)
        self.method, self.case_id = method, case_id

    def score(self, queries, topk, encoded=None, top=None, positions=None):
        self.method.events.append(("score", tuple(self.method.active)))
        return super().score(queries, topk, encoded, top, positions)

    def restore(self) -> None:
        assert self.method.active.pop() == self.case_id, "restored out of order"
        self.method.events.append(("restore", self.case_id))


def test_the_gap_protocol_scores_case_i_after_g_further_edits(llava, test_cases, monkeypatch):
    """Hand-worked: 5 cases, gap 2, 3 scored (the reference's loop over ``val_loader`` with ``gap_num=2``)."""
    events: list = []
    engine = Engine(llava, Recorder(events), EngineOptions(generate=False))
    pre_edit = engine._pre_edit
    monkeypatch.setattr(engine, "_pre_edit", lambda case_id, case, **kw: events.append(("pre", case_id)) or pre_edit(case_id, case, **kw))
    cases = [(case.case_id, case) for case in list(test_cases)[:5]]
    c = [case_id for case_id, _ in cases]
    results = list(engine.run_gap(cases, gap=2, scored=3))
    assert [result.case_id for result in results] == c[:3]
    assert events == [
        ("pre", c[0]), ("pre", c[1]), ("pre", c[2]),  # every pre-edit output on the unedited model first
        ("edit", c[0]), ("edit", c[1]), ("edit", c[2]), ("score", tuple(c[:3])),  # case 0 after edits 0..2
        ("edit", c[3]), ("score", tuple(c[:4])),  # case 1 after edits 0..3
        ("edit", c[4]), ("score", tuple(c[:5])),  # case 2 after edits 0..4; cases 3, 4 are edited only
        ("restore", c[4]), ("restore", c[3]), ("restore", c[2]), ("restore", c[1]), ("restore", c[0]),
    ]
    with pytest.raises(ValueError, match="cannot score 4 cases"):
        list(engine.run_gap(cases, gap=2, scored=4))


def test_the_gap_protocol_with_fine_tuning_matches_a_replay_and_restores(llava, test_cases):
    method = make_method("ft-llm", {"stop_loss": 0.05})
    cases = list(test_cases)[:3]
    before = state(llava.model)
    results = list(Engine(llava, method, EngineOptions(generate=False)).run_gap([(c.case_id, c) for c in cases], 1, 2))
    assert_restored(llava.model, before)
    # case 0 is scored with edits 0 and 1 in place, case 1 with edits 0, 1 and 2
    edits = []
    for count, result in zip((2, 3), results, strict=True):
        while len(edits) < count:
            edits.append(method.apply(llava, cases[len(edits)]))
        reliability = next(row for row in result.rows if row["metric"] == "reliability")
        (expected,) = score_queries(llava, [spec("reliability").query(cases[count - 2])], [0])
        assert [ids[0] for ids in reliability["post"]] == expected.answer_argmax
    for edit in reversed(edits):
        edit.restore()
    assert_restored(llava.model, before)


def test_none_scores_the_unedited_model_locality_is_100(tiny_llava, tiny_world, tmp_path):
    settings = RunSettings(method="none", out=tmp_path / "none", model=str(tiny_llava), data=str(tiny_world), limit=3,
                           bootstrap=0)
    scores = runs.run(settings)
    assert scores["token"]["scores"]["t_locality"] == scores["token"]["scores"]["i_locality"] == 100.0
    rows = pq.read_table(tmp_path / "none" / "predictions.parquet").to_pylist()
    assert all(row["pre"] == row["post"] and row["pre_text"] == row["post_text"] for row in rows)
    cases = CaseSequence(load_split(tiny_world, "edit", "test"))
    # the edited queries expect the old answer: how well the model knows what an edit would replace
    reliability = [row["answer"] for row in rows if row["metric"] == "reliability"]
    assert reliability == [cases[index].pred for index in range(3)]
    portability = [row["answer"] for row in rows if row["metric"] == "portability"]
    assert portability == [item.answer for index in range(3) for item in cases[index].portability]
    assert json.loads((tmp_path / "none" / "run.json").read_text())["edit_protocol"]["name"] == "single"


def test_lifelong_runs_each_gap_and_writes_table_curves_and_protocol(tiny_llava, tiny_world, tmp_path):
    settings = RunSettings(method="ft-llm", out=tmp_path / "lifelong", model=str(tiny_llava), data=str(tiny_world),
                           limit=2, bootstrap=0, generate=False)
    root = runs.lifelong(settings, [0, 2])
    info = json.loads((root / "gap-2" / "run.json").read_text())
    protocol = info["edit_protocol"]
    cases = load_split(tiny_world, "edit", "test")["case_id"]
    assert (protocol["name"], protocol["gap"], protocol["scored_cases"]) == ("sequential_gap", 2, 2)
    assert protocol["edit_only_case_ids"] == cases[2:4]
    curve = running_scores(root / "gap-2" / "predictions.parquet", 2)
    assert curve["edits"] == [3, 4]
    assert running_scores(root / "gap-2" / "predictions.parquet", 2, points=1)["edits"] == [4], "thinned: the last point stays"
    final = json.loads((root / "gap-2" / "scores.json").read_text())["token"]["scores"]
    assert curve["reliability"][-1] == pytest.approx(final["reliability"])
    table = (root / "lifelong.md").read_text()
    assert "| gap 0 |" in table and "| gap 2 |" in table
    assert (root / "lifelong.png").stat().st_size > 0
    with pytest.raises(ValueError, match="cannot --resume"):
        runs.run(RunSettings(method="ft-llm", out=tmp_path / "x", sequential_gap=1, resume=True))
    with pytest.raises(ValueError, match="does not support --sequential-gap"):
        runs.run(RunSettings(method="ike", out=tmp_path / "x", sequential_gap=1))
    with pytest.raises(ValueError, match="--sequential-gap 18 needs more than 18 cases; the split has 18"):
        runs.run(RunSettings(method="ft-llm", out=tmp_path / "x", model=str(tiny_llava), data=str(tiny_world),
                             sequential_gap=18))
