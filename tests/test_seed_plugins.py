"""The seed's two remote-code models, Qwen-VL and mPLUG-Owl2, through their adapter plugins (``plugins/``) on
tiny stand-ins built to the module names and forward signatures of their public code
(``tests/seed_models.py``): found through the ``kebench.adapters`` entry points, loaded only with
``--trust-remote-code``, the adapter contract, and methods end to end (edits change the answer, restores
are bit-exact, ``kebench run`` without a failed case)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from editors.adapters import adapter_class, load_adapter, load_config
from editors.adapters.base import ModelAdapter, Query
from editors.cases import CaseSequence, load_split
from editors.forward import TopLayers, full_logits, score_queries
from editors.losses import answer_nll_row_mean
from editors.methods import make_method, method_names
from editors.queries import DEFAULT_CONFIG, case_queries
from editors.training import edited_weights, gradient_factors
from kebench_hf.cli import main
from tests.seed_models import STAND_INS, install_plugins
from tests.test_families import run_every_method

ADAPTERS = {"qwen-vl": "kebench_qwen_vl:QwenVLAdapter", "mplug-owl2": "kebench_mplug_owl2:MplugOwl2Adapter"}
FAMILIES = sorted(STAND_INS)


@pytest.fixture(scope="module")
def plugins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Both plugins installed in a site directory on ``sys.path`` for this module's tests."""
    site = install_plugins(tmp_path_factory.mktemp("seed-site"))
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(site))
        yield site


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory, tiny_world: Path) -> dict[str, Path]:
    texts = [value for case in json.loads((tiny_world / "train.json").read_text())
             for value in case.values() if isinstance(value, str)]
    root = tmp_path_factory.mktemp("seed-models")
    return {family: build(texts, root / family) for family, build in STAND_INS.items()}


@pytest.fixture(scope="module")
def adapters(plugins: Path, stand_ins: dict[str, Path]) -> dict[str, ModelAdapter]:
    loaded = {family: load_adapter(path, trust_remote_code=True) for family, path in stand_ins.items()}
    for adapter in loaded.values():
        adapter.model.requires_grad_(False)
    return loaded


@pytest.fixture(scope="module")
def cases(tiny_world: Path) -> CaseSequence:
    return CaseSequence(load_split(tiny_world, "edit", "test"))


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def changed_tensors(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, value in model.state_dict().items() if not torch.equal(value, before[name])}


def names_of(model: torch.nn.Module, module: torch.nn.Module) -> set[str]:
    owned = {id(parameter) for parameter in module.parameters()}
    return {name for name, parameter in model.named_parameters() if id(parameter) in owned}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_plugin_is_chosen_by_the_config_and_only_with_trusted_code(
    family: str, plugins: Path, stand_ins: dict[str, Path], tiny_world: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = load_config(str(stand_ins[family]), trust_remote_code=True)
    adapter = adapter_class(config.model_type, config)
    assert f"{adapter.__module__}:{adapter.__name__}" == ADAPTERS[family] and adapter.family == family
    with pytest.raises(ValueError, match="runs code from its own repository; pass --trust-remote-code"):
        load_adapter(stand_ins[family])
    assert main(["run", "--method", "ft-llm", "--model", str(stand_ins[family]), "--data", str(tiny_world),
                 "--limit", "1", "--out", str(tmp_path / "run")]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the datasets progress bars
    assert error.startswith("kebench: error: model ") and error.endswith("pass --trust-remote-code "
                                                                           "(trust_remote_code=True) if you trust it")


def test_a_text_only_qwen_is_not_qwen_vl(plugins: Path, stand_ins: dict[str, Path]) -> None:
    config = load_config(str(stand_ins["qwen-vl"]), trust_remote_code=True)
    config.visual = None
    with pytest.raises(ValueError, match="no model adapter for model_type 'qwen'"):
        adapter_class(config.model_type, config)


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_batched_equal_unbatched_and_the_head_gives_the_logits(
    family: str, adapters: dict[str, ModelAdapter], cases: CaseSequence
) -> None:
    adapter = adapters[family]
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    queries = [Query("Who is shown in the image?", "Lionel Messi", image), Query("What is the capital of France?", "Paris"),
               Query("Who is this?", "Paris", cases[0].edit_query.image, context="New Fact: x is y\nPrompt:")]
    batch = adapter.encode(queries)
    logits = full_logits(adapter, batch)
    assert logits.shape[1] == max(answer.stop for answer in batch.answer_slices) + 1
    for row, query in enumerate(queries):
        alone = adapter.encode([query])
        assert alone.target_ids[0] == batch.target_ids[row]
        torch.testing.assert_close(full_logits(adapter, alone)[0, alone.answer_slices[0]],
                                   logits[row, batch.answer_slices[row]], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(TopLayers(adapter, batch, -1).logits(), logits)
    assert adapter.generate(queries, max_new_tokens=3) == [adapter.generate([q], max_new_tokens=3)[0] for q in queries]
    features = adapter.image_features([image, image])
    assert features.shape == (2, adapter.input_embeddings().embedding_dim)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("method", "options", "module"), [
    ("ft-llm", {"steps": 20}, lambda adapter: adapter.mlp(-1)),
    ("ft-vision", {"steps": 30}, lambda adapter: adapter.vision_side_module()),
])
def test_a_weight_edit_changes_the_answer_and_restores_bit_exact(
    family: str, method: str, options: dict, module, adapters: dict[str, ModelAdapter], cases: CaseSequence
) -> None:
    adapter = adapters[family]
    case = cases[0]
    before = state(adapter.model)
    pre = score_queries(adapter, [case.edit_query], [0])[0]
    edit = make_method(method, options).apply(adapter, case)
    changed = changed_tensors(adapter.model, before)
    assert changed and changed <= names_of(adapter.model, module(adapter))
    post = edit.score([case.edit_query], [0])[0]
    assert post.answer_argmax != pre.answer_argmax, "the edit must change the answer"
    edit.restore()
    assert changed_tensors(adapter.model, before) == set(), "restore must give back every tensor bit for bit"


@pytest.mark.parametrize("family", FAMILIES)
def test_the_trained_editors_gradient_factors_give_the_weight_gradient(
    family: str, adapters: dict[str, ModelAdapter], cases: CaseSequence
) -> None:
    """KE's and MEND's rank-1 factors over each row's real positions, counted in the logits (mPLUG-Owl2's
    forward widens each image id into the abstractor's tokens)."""
    adapter = adapters[family]
    batch = adapter.encode([cases[0].edit_query, Query("What is the capital of France?", "Paris")])
    weights = edited_weights(adapter, [-1])
    factors, _ = gradient_factors(adapter, weights, batch, [0, 1])
    (name, weight), = weights.items()
    weight.requires_grad_(True)
    try:
        gradient, = torch.autograd.grad(answer_nll_row_mean(full_logits(adapter, batch), batch, [0, 1]), [weight])
    finally:
        weight.requires_grad_(False)
    u, delta = factors[name]
    torch.testing.assert_close(delta.T @ u, gradient, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("family", FAMILIES)
def test_ike_prompts_change_the_outputs_and_no_weight(family: str, adapters: dict[str, ModelAdapter],
                                                      cases: CaseSequence, tiny_world: Path) -> None:
    adapter = adapters[family]
    ike = make_method("ike", {"k": 2})
    ike.prepare(adapter, CaseSequence(load_split(tiny_world, "edit", "train")))
    before = state(adapter.model)
    queries = [query for _, _, query in case_queries(cases[0], DEFAULT_CONFIG)]
    edit = ike.apply(adapter, cases[0])
    pre = score_queries(adapter, queries, [1] * len(queries))
    post = edit.score(queries, [1] * len(queries))
    assert [r.topk.tolist() for r in pre] != [r.topk.tolist() for r in post], "the prompt must change outputs"
    edit.restore()
    assert changed_tensors(adapter.model, before) == set()


@pytest.mark.parametrize("family", FAMILIES)
def test_kebench_run_edits_through_the_plugin(family: str, plugins: Path, stand_ins: dict[str, Path],
                                              tiny_world: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    assert main(["run", "--method", "ft-llm", "--model", str(stand_ins[family]), "--data", str(tiny_world),
                 "--limit", "1", "--set", "steps=3", "--trust-remote-code", "--out", str(out)]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["failed_cases"] == 0 and info["trust_remote_code"] is True
    assert info["model_family"] == family and info["model_adapter"] == ADAPTERS[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_runs_through_the_plugin(family: str, plugins: Path, stand_ins: dict[str, Path],
                                              tiny_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEBENCH_CACHE", str(tmp_path / "cache"))  # the trained editors
    families = run_every_method(stand_ins[family], tiny_world, tmp_path, trust_remote_code=True)
    assert set(families) == set(method_names()) and set(families.values()) == {family}
