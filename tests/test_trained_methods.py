"""KE, SERAC and MEND on the tiny world: training, saving/loading editors, edits, restore.

Editors train for a handful of steps (the point is the mechanics, not the scores); an edit must
still change the model's answer, a reloaded editor must give identical predictions, and editors of
another base model or damaged files must be refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from editors.adapters import load_adapter
from editors.adapters.base import Query
from editors.cases import CaseSequence
from editors.forward import score_queries
from editors.methods import get_method
from editors.queries import DEFAULT_CONFIG, case_queries
from editors.training import EditorFileError, MetaTrainingConfig, meta_train
from kebench_hf.builder import load_kebench
from kebench_hf.cli import main

#: few steps, tiny validation; MEND/KE start from a large edit lr so that even a barely trained
#: editor moves the answer
QUICK = {"max_steps": 6, "val_every": 3, "val_cases": 2}
SETTINGS = {
    "mend": {**QUICK, "edit_lr": 3e-2},
    "ke": {**QUICK, "edit_lr": 3e-2},
    "serac": {**QUICK, "max_steps": 4, "val_every": 2},
}


@pytest.fixture(scope="module")
def splits(tiny_world: Path):
    data = load_kebench(tiny_world, "edit")
    return CaseSequence(data["train"]), CaseSequence(data["test"])


@pytest.fixture(scope="module")
def editors(tiny_llava: Path, tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each method trained through ``kebench train-editor``: ``{method: editor directory}``."""
    root = tmp_path_factory.mktemp("editors")
    for name, settings in SETTINGS.items():
        options = [f"--set={key}={value}" for key, value in settings.items()]
        command = ["train-editor", "--method", name, "--model", str(tiny_llava), "--data", str(tiny_world)]
        assert main([*command, "--out", str(root / name), *options]) == 0
    return {name: root / name for name in SETTINGS}


def loaded(name: str, adapter, editor_dir: Path, train):
    method = get_method(name)()
    method.prepare(adapter, train, editor_dir)
    return method


def parameters(adapter) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in adapter.model.named_parameters()}


def assert_bit_identical(adapter, before: dict[str, torch.Tensor]) -> None:
    for name, parameter in adapter.model.named_parameters():
        assert torch.equal(parameter, before[name]), f"{name} differs after restore"


def test_train_editor_writes_safetensors_and_json(editors):
    for name, directory in editors.items():
        description = json.loads((directory / "editor.json").read_text())
        assert description["method"] == name
        assert description["base_model"]["model_type"] == "llava"
        assert (directory / "editor.safetensors").stat().st_size > 0
        assert not (directory / "checkpoint").exists()
        assert description["report"]["steps"] == SETTINGS[name]["max_steps"]
    scope = json.loads((editors["serac"] / "editor.json").read_text())["report"]["scope_classifier"]
    assert 0 <= scope["precision"] <= 1 and 0 <= scope["recall"] <= 1


@pytest.mark.parametrize("name", ["mend", "ke"])
def test_weight_edit_changes_answer_and_restores_bit_identically(name, llava, editors, splits):
    train, test = splits
    method = loaded(name, llava, editors[name], train)
    case = test[0]
    before = parameters(llava)
    pre = score_queries(llava, [case.edit_query], [5])[0]
    edit = method.apply(llava, case)
    post = edit.score([case.edit_query], [5])[0]
    changed = [n for n, p in llava.model.named_parameters() if not torch.equal(p, before[n])]
    assert sorted(changed) == sorted(method.weights), "only the editor's weights may change"
    assert not torch.equal(pre.topk, post.topk), "the edit did not change the model's answer distribution"
    edit.restore()
    assert_bit_identical(llava, before)

    # sequential: two edits stacked, then restored in reverse order
    first = method.apply(llava, test[0])
    after_first = parameters(llava)
    second = method.apply(llava, test[1])
    assert any(not torch.equal(p, after_first[n]) for n, p in llava.model.named_parameters())
    second.restore()
    assert_bit_identical(llava, after_first)
    first.restore()
    assert_bit_identical(llava, before)


def test_serac_routes_edits_to_counterfactual_and_leaves_the_rest(llava, editors, splits):
    train, test = splits
    method = loaded("serac", llava, editors["serac"], train)
    method.config.threshold = 0.0  # whatever the classifier says: its routing is tested below
    case = test[0]
    before = parameters(llava)
    queries = [case.edit_query, Query(case.loc, case.loc_ans)]
    pre = score_queries(llava, queries, [5, 5])
    edit = method.apply(llava, case)
    assert method.route(llava, queries) == [case, case]
    post = edit.score(queries, [5, 5])
    assert not torch.equal(pre[0].topk, post[0].topk), "the edit did not change the answer"
    method.config.threshold = 1.0  # nothing in scope: the untouched base model answers
    assert method.route(llava, queries) == [None, None]
    unchanged = edit.score(queries, [5, 5])
    assert all(torch.equal(a.topk, b.topk) for a, b in zip(pre, unchanged, strict=True))
    edit.restore()
    assert method.memory == []
    assert_bit_identical(llava, before)


@pytest.mark.parametrize("name", ["mend", "ke", "serac"])
def test_reloaded_editor_gives_identical_predictions(name, llava, editors, splits):
    train, test = splits
    queries = [query for _, _, query in case_queries(test[1], DEFAULT_CONFIG)]
    results = []
    for _ in range(2):
        method = loaded(name, llava, editors[name], train)
        edit = method.apply(llava, test[1])
        results.append(edit.score(queries, [3] * len(queries)))
        edit.restore()
    for first, second in zip(*results, strict=True):
        assert first.answer_argmax == second.answer_argmax
        assert torch.equal(first.topk, second.topk)


def test_editor_of_another_base_model_is_refused(llava, editors, splits, tiny_models):
    train, _ = splits
    other = load_adapter(tiny_models["llava"])
    with pytest.raises(EditorFileError, match="different base model"):
        loaded("mend", other, editors["mend"], train)
    # same architecture, one edited weight nudged: still another model
    method = loaded("mend", llava, editors["mend"], train)
    weight = next(iter(method.weights.values()))
    original = weight.detach().clone()
    with torch.no_grad():
        weight[0, 0] += 1e-3
    try:
        with pytest.raises(EditorFileError, match="edited weight values differ"):
            loaded("mend", llava, editors["mend"], train)
    finally:
        with torch.no_grad():
            weight.copy_(original)


def test_damaged_or_mismatched_editor_files_are_refused(llava, editors, splits, tmp_path):
    train, _ = splits
    truncated = tmp_path / "truncated"
    shutil.copytree(editors["ke"], truncated)
    data = (truncated / "editor.safetensors").read_bytes()
    (truncated / "editor.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(EditorFileError, match="corrupt or truncated"):
        loaded("ke", llava, truncated, train)

    broken_json = tmp_path / "broken-json"
    shutil.copytree(editors["ke"], broken_json)
    (broken_json / "editor.json").write_text("{not json")
    with pytest.raises(EditorFileError, match="not valid JSON"):
        loaded("ke", llava, broken_json, train)

    with pytest.raises(EditorFileError, match="trained for method 'ke', not 'mend'"):
        loaded("mend", llava, editors["ke"], train)
    with pytest.raises(EditorFileError, match="editor.json is missing"):
        loaded("mend", llava, tmp_path / "nowhere", train)
    assert main(["train-editor", "--method", "mend", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 1


def test_meta_training_resumes_where_a_killed_run_stopped(tmp_path):
    """8 steps in one go == 4 steps, then a resumed run to 8 (same editor, same optimizer state)."""
    targets = [torch.full((3,), float(i)) for i in range(12)]

    def run(max_steps: int, directory: Path) -> tuple[nn.Linear, dict]:
        torch.manual_seed(0)
        editor = nn.Linear(3, 3)
        config = MetaTrainingConfig(max_steps=max_steps, lr=1e-2, val_cases=3, val_every=2, patience=100)

        def loss(target):
            return (editor(torch.ones(3)) - target).pow(2).mean()

        report = meta_train(editor, loss, lambda target: -loss(target).item(), targets, config, directory)
        return editor, report

    straight, report = run(8, tmp_path / "straight")
    assert report["steps"] == 8
    run(4, tmp_path / "killed")
    resumed, report = run(8, tmp_path / "killed")
    assert report["steps"] == 8
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["mend", "serac"])
def test_kebench_run_uses_a_trained_editor_sequentially(name, tiny_llava, tiny_world, editors, tmp_path):
    from editors.run import run
    from editors.run_dir import RunSettings

    settings = RunSettings(
        method=name, out=tmp_path / "run", model=str(tiny_llava), data=str(tiny_world), limit=2,
        sequential=2, editor=editors[name], generate=False, bootstrap=10,
    )
    scores = run(settings)
    assert scores["token"]["counts"]["reliability"] == 2
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["method_info"]["editor_dir"] == str(editors[name])
    assert info["method_info"]["training"]["steps"] == SETTINGS[name]["max_steps"]


@pytest.mark.parametrize("name", list(SETTINGS))
def test_edit_onehop_makes_both_edits_and_restores(name, llava, editors, splits, tiny_world):
    from tests.test_protocols import check_onehop_run

    method = loaded(name, llava, editors[name], splits[0])
    check_onehop_run(method, llava, CaseSequence(load_kebench(tiny_world, "edit_onehop")["test"]))
    assert getattr(method, "memory", []) == []
