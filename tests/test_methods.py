"""Editing methods on the tiny pretrained LLaVA: edits change answers, restores are bit-exact."""

from __future__ import annotations

import pytest
import torch

from editors.cases import CaseSequence
from editors.engine import Engine, EngineOptions
from editors.forward import score_queries
from editors.methods import METHODS, get_method, make_method
from editors.methods.base import fine_tune
from editors.methods.ike import demonstration
from editors.queries import DEFAULT_CONFIG, case_queries


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def changed_tensors(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, value in model.state_dict().items() if not torch.equal(value, before[name])}


def names_of(model: torch.nn.Module, module: torch.nn.Module) -> set[str]:
    owned = {id(param) for param in module.parameters()}
    return {name for name, param in model.named_parameters() if id(param) in owned}


def test_registry_names_and_unknown_method():
    assert {"ft-llm", "ft-vision", "ike"} <= set(METHODS)
    assert get_method("ft-llm").name == "ft-llm"
    with pytest.raises(ValueError, match="unknown editing method 'nope'"):
        get_method("nope")
    with pytest.raises(ValueError, match="unknown FTLLMConfig setting"):
        make_method("ft-llm", {"learning_rate": 1.0})


def unknown_edits(llava, test_cases: CaseSequence, count: int) -> list:
    """The first ``count`` cases whose new answer the unedited model does not already give."""
    chosen = []
    for case in test_cases:
        if score_queries(llava, [case.edit_query], [0])[0].answer_accuracy < 1.0:
            chosen.append(case)
        if len(chosen) == count:
            return chosen
    raise AssertionError("the tiny world has too few cases to edit")


@pytest.mark.parametrize(
    ("name", "options", "module"),
    [
        ("ft-llm", {}, lambda adapter: adapter.mlp(-1)),
        # the projector of a tiny model needs more steps to move an answer reliably
        ("ft-vision", {"steps": 30, "stop_loss": 0.05}, lambda adapter: adapter.vision_side_module()),
    ],
)
def test_weight_edit_changes_answer_touches_only_its_module_and_restores_bit_exact(
    llava, test_cases, name, options, module
):
    method = make_method(name, options)
    before = state(llava.model)
    allowed = names_of(llava.model, module(llava))
    hits = 0
    for case in unknown_edits(llava, test_cases, 3):
        pre = score_queries(llava, [case.edit_query], [0])[0]
        edit = method.apply(llava, case)
        changed = changed_tensors(llava.model, before)
        assert changed and changed <= allowed, f"{name} changed {sorted(changed - allowed)}"
        post = edit.score([case.edit_query], [0])[0]
        assert post.answer_argmax != pre.answer_argmax, "the edit must change the answer"
        hits += post.answer_accuracy == 1.0
        edit.restore()
        assert changed_tensors(llava.model, before) == set(), "restore must give back every tensor bit for bit"
    assert hits >= 2, "the edit must make the new answer the model's answer"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fine_tuning_takes_steps_smaller_than_the_weights_precision(dtype):
    # 10 Adam steps of lr 1e-4 against a constant gradient: 0.05 -> 0.049. In bfloat16 each step is
    # below half the spacing of 0.05 (1.2e-4): stepped directly, the weight would never move.
    weight = torch.nn.Parameter(torch.full((4,), 0.05, dtype=dtype), requires_grad=False)
    assert fine_tune([weight], lambda: weight.float().sum(), steps=10, lr=1e-4, stop_loss=-1e9) == 10
    assert weight.dtype == dtype and not weight.requires_grad and weight.grad is None
    spacing = 2.0**-12 if dtype == torch.bfloat16 else 1e-7
    assert weight.float().sub(0.049).abs().max().item() <= spacing


def test_ft_llm_top_layer_cache_gives_the_plain_result(llava, test_cases):
    """Training from cached lower-layer activations = training through the whole model."""
    case = test_cases[0]
    results = []
    for cached in (True, False):
        edit = make_method("ft-llm", {"cache_frozen_layers": cached}).apply(llava, case)
        results.append({name: value.clone() for name, value in llava.model.state_dict().items() if ".mlp." in name})
        edit.restore()
    for name, value in results[0].items():
        torch.testing.assert_close(value, results[1][name], rtol=1e-5, atol=1e-6)


def test_ike_retrieves_nearest_demonstrations_and_changes_no_weight(llava, test_cases, train_cases):
    ike = make_method("ike", {"k": 4})
    ike.prepare(llava, train_cases)
    assert ike.run_info() == {"embedder": "all-MiniLM-L6-v2"}
    # A case equal to a train case finds that case's own "copy" demonstration as the nearest (last).
    own = train_cases[0]
    edit = ike.apply(llava, own)
    demos = edit.context.split("\n\n")
    assert demos[-2] + "\n\n" == demonstration(own.src, own.alt, own.src, own.alt)
    assert edit.context.endswith(f"New Fact: {own.src} {own.alt}\nPrompt:")
    assert edit.context.count("New Fact:") == 5

    before = state(llava.model)
    case = test_cases[0]
    queries = [query for _, _, query in case_queries(case, DEFAULT_CONFIG)]
    edit = ike.apply(llava, case)
    pre = score_queries(llava, queries, [1] * len(queries))
    post = edit.score(queries, [1] * len(queries))
    assert [r.topk.tolist() for r in pre] != [r.topk.tolist() for r in post], "the prompt must change outputs"
    assert all(len(a.topk) == len(b.topk) for a, b in zip(pre, post, strict=True)), "context shifts, never widens"
    edit.restore()
    assert changed_tensors(llava.model, before) == set()


def test_sequential_edits_hold_together_and_restore(llava, test_cases):
    method = make_method("ft-llm", {"stop_loss": 0.05})
    before = state(llava.model)
    engine = Engine(llava, method, EngineOptions(generate=False))
    cases = [(case.case_id, case) for case in unknown_edits(llava, test_cases, 2)]
    together = list(engine.run(iter(cases), sequential=2))
    assert changed_tensors(llava.model, before) == set()
    alone = list(engine.run(iter(cases), sequential=1))
    assert [r.case_id for r in together] == [r.case_id for r in alone] == [case_id for case_id, _ in cases]
    # The first case is scored with the second edit applied too, so its outputs differ from editing it alone;
    # the second case's own edit holds.
    assert [row["post"] for row in together[0].rows] != [row["post"] for row in alone[0].rows]
    reliability = next(row for row in together[1].rows if row["metric"] == "reliability")
    assert [ids[0] for ids in reliability["post"]] == reliability["target"]
    assert [row["post"] for row in together[1].rows] != [row["post"] for row in alone[1].rows]
    with pytest.raises(ValueError, match="does not support sequential"):
        list(Engine(llava, make_method("ike", {}), EngineOptions(generate=False)).run(iter(cases), sequential=2))
