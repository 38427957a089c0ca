"""Model adapters on tiny models of the real architectures (untrained: the checks are exact)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from editors.adapters import ADAPTERS, GenericAdapter, Query, adapter_for, load_adapter
from editors.tiny import BUILDERS

ARCHS = sorted(BUILDERS)
#: tiny architectures without an adapter of their own: the generic adapter serves them
GENERIC = {"vipllava", "internvl"}
#: the adapter family of each tiny architecture (Qwen2.5-VL shares Qwen2-VL's adapter; a generic
#: family is its model_type)
FAMILY = {arch: "qwen2-vl" if arch == "qwen2.5-vl" else arch for arch in ARCHS}


@pytest.fixture(scope="module")
def adapters(tiny_models: dict[str, Path]) -> dict:
    return {arch: load_adapter(path) for arch, path in tiny_models.items()}


@pytest.fixture(scope="module")
def queries(vlkeb_fixture_dir: Path) -> list[Query]:
    """Image, text-only and in-context queries, with two different images."""
    images = vlkeb_fixture_dir / "mmkb_images"
    messi = Image.open(images / "m.0fx05" / "google_3.jpg")
    henry = Image.open(images / "m.0fx059" / "yahoo_3.jpg")
    context = "New Fact: Who is the footballer featured in this image? Cristiano Ronaldo\nPrompt:"
    return [
        Query("Who is the footballer featured in this image?", "Lionel Messi", messi),
        Query("what is the capital city of australia", "Canberra"),
        Query("Who is the athlete in the image?", "Thierry Henry", henry, context=context),
        Query("Who is the footballer featured in this image?", "Cristiano Ronaldo", messi, context=context),
    ]


def test_every_architecture_has_an_adapter() -> None:
    assert sorted(ADAPTERS) == sorted({family for arch, family in FAMILY.items() if arch not in GENERIC})
    assert not GENERIC & set(ADAPTERS), "the generic adapter's test families have no adapter of their own"


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_loads_with_auto_classes_and_registry_picks_by_config(
    arch: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoConfig, AutoModelForImageTextToText

    # A misleading directory name must not matter: the family comes from config.model_type.
    misnamed = tmp_path / ("blip2" if arch != "blip2" else "llava")
    shutil.copytree(tiny_models[arch], misnamed)
    assert (misnamed / "model.safetensors").exists()
    model = AutoModelForImageTextToText.from_pretrained(misnamed)
    text_config = model.config.get_text_config()
    assert text_config.max_position_embeddings >= 2048
    adapter = load_adapter(misnamed)
    assert adapter.family == FAMILY[arch]
    assert isinstance(adapter, GenericAdapter) == (arch in GENERIC)
    assert AutoConfig.from_pretrained(misnamed).model_type in type(adapter).model_types
    assert type(adapter_for(model, adapter.processor)) is type(adapter)


def test_auto_processor_loads_the_real_processor_classes(tiny_models: dict[str, Path]) -> None:
    import transformers
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    expected = {
        "llava": "LlavaProcessor",
        "blip2": "Blip2Processor",
        "idefics3": "Idefics3Processor",
        "llava-next": "LlavaNextProcessor",
        "gemma3": "Gemma3Processor",
    }
    for family, name in expected.items():
        assert type(AutoProcessor.from_pretrained(tiny_models[family])).__name__ == name
    # processors holding a video processor are saved as the real class, loaded without it here
    with_video = {"qwen2-vl": "Qwen2VLProcessor", "qwen2.5-vl": "Qwen2VLProcessor",
                  "llava-onevision": "LlavaOnevisionProcessor", "qwen3-vl": "Qwen3VLProcessor"}
    for arch, name in with_video.items():
        saved = json.loads((tiny_models[arch] / "processor_config.json").read_text())
        assert saved["processor_class"] == name
        if is_torchvision_available():
            assert type(AutoProcessor.from_pretrained(tiny_models[arch])).__name__ == name
    for arch in ("llava-onevision", "qwen3-vl"):
        processor = load_adapter(tiny_models[arch]).processor
        assert isinstance(processor, getattr(transformers, with_video[arch]))
        assert processor.chat_template == (tiny_models[arch] / "chat_template.jinja").read_text()
    # the saved options come back (LLaVA-OneVision's image token count)
    assert load_adapter(tiny_models["llava-onevision"]).processor.num_image_tokens == 16


def test_unknown_family_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_embd=8, n_layer=1, n_head=2, n_positions=8))
    with pytest.raises(ValueError, match=r"no model adapter for model_type 'gpt2'.*llava"):
        adapter_for(model, processor=None)
    model.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="no model adapter for model_type 'gpt2'"):
        load_adapter(tmp_path / "gpt2")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_adapter(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="cannot load its config"):
        load_adapter(tmp_path / "empty")


def test_generic_adapter_refuses_a_model_whose_parts_it_cannot_find(tiny_models: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText, FuyuConfig

    served = load_adapter(tiny_models["vipllava"])
    assert served.structure.projector == "model.multi_modal_projector"
    assert served.answer_prefix == " " and load_adapter(tiny_models["internvl"]).answer_prefix == ""  # after ChatML's "\n"
    model = AutoModelForImageTextToText.from_pretrained(tiny_models["vipllava"])
    del model.model.multi_modal_projector
    with pytest.raises(ValueError, match=r"model_type 'vipllava' .* cannot find its vision-language projector "
                                         r"\(model: none of model.multi_modal_projector, .*kebench.adapters"):
        adapter_for(model, served.processor)
    # Fuyu feeds patches through one linear layer, no projector by these names: refused from its config
    # alone, before any weight is loaded (the directory has none)
    fuyu = tmp_path / "fuyu"
    FuyuConfig(text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                            "num_attention_heads": 2}).save_pretrained(fuyu)
    with pytest.raises(ValueError, match=r"model_type 'fuyu' .*vision-language projector.*docs/models.md") as error:
        load_adapter(fuyu)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("arch", ARCHS)
def test_encode_matches_manual_tokenization(arch: str, adapters: dict, queries: list[Query]) -> None:
    adapter = adapters[arch]
    tokenizer = adapter.processor.tokenizer
    batch = adapter.encode(queries)
    ids = batch.inputs["input_ids"]
    in_context = queries[3]
    for row, query in enumerate(queries):
        expected = tokenizer(adapter.answer_prefix + query.answer, add_special_tokens=False)["input_ids"]
        assert batch.target_ids[row] == expected
        answer = batch.answer_slices[row]
        # position t predicts token t + 1: the tokens after the answer slice are the answer
        assert ids[row, answer.start + 1 : answer.stop + 1].tolist() == expected
        assert batch.valid_positions[row].stop == answer.stop
        assert batch.inputs["attention_mask"][row].sum() == answer.stop + 1  # right padding
    # Context shifts a row and changes none of the query's own tokens.
    plain = adapter.encode([Query(in_context.question, in_context.answer, in_context.image)])
    shift = batch.extra["context_lengths"][3]
    context_ids = tokenizer(in_context.context + "\n", add_special_tokens=False)["input_ids"]
    assert shift == len(context_ids) > 0
    assert batch.valid_positions[3] == slice(shift, plain.valid_positions[0].stop + shift)
    assert batch.answer_slices[3] == slice(plain.answer_slices[0].start + shift, plain.answer_slices[0].stop + shift)
    own = plain.inputs["input_ids"][0]
    lead = 1 if own[0] == tokenizer.bos_token_id else 0
    row = ids[3, : len(own) + shift]
    assert row[:lead].tolist() + row[lead + shift :].tolist() == own.tolist()
    assert row[lead : lead + shift].tolist() == context_ids


@pytest.mark.parametrize("arch", ARCHS)
def test_answer_slices_give_the_models_own_loss(arch: str, adapters: dict, queries: list[Query]) -> None:
    adapter = adapters[arch]
    query = queries[0]
    batch = adapter.encode([query])
    labels = torch.full_like(batch.inputs["input_ids"], -100)
    answer = batch.answer_slices[0]
    labels[0, answer.start + 1 : answer.stop + 1] = torch.tensor(batch.target_ids[0])
    with torch.no_grad():
        output = adapter.model(**batch.inputs, labels=labels)
    ours = torch.nn.functional.cross_entropy(output.logits[0, answer], torch.tensor(batch.target_ids[0]))
    assert ours.item() == pytest.approx(output.loss.item(), rel=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_equals_unbatched(arch: str, adapters: dict, queries: list[Query]) -> None:
    adapter = adapters[arch]
    batch = adapter.encode(queries)
    with torch.no_grad():
        together = adapter.model(**batch.inputs).logits
        for row, query in enumerate(queries):
            alone = adapter.encode([query])
            assert alone.target_ids[0] == batch.target_ids[row]
            assert alone.valid_positions[0] == batch.valid_positions[row]
            stop = batch.valid_positions[row].stop
            logits = adapter.model(**alone.inputs).logits[0]
            torch.testing.assert_close(together[row, :stop], logits[:stop], atol=1e-5, rtol=1e-4)
    generated = adapter.generate(queries, max_new_tokens=4)
    assert generated == [adapter.generate([query], max_new_tokens=4)[0] for query in queries]
    assert all(isinstance(text, str) for text in generated)


@pytest.mark.parametrize("arch", ARCHS)
def test_named_modules(arch: str, adapters: dict, queries: list[Query]) -> None:
    adapter = adapters[arch]
    layers = adapter.decoder_layers()
    assert len(layers) == 4
    top = {id(p) for p in layers[-1].parameters()}
    mlp = list(adapter.mlp(-1).parameters())
    assert mlp and all(id(p) in top for p in mlp)
    assert len(mlp) < len(top)  # the MLP, not the whole layer

    # head(output of the top decoder layer) is the model's logits
    outputs = []
    hook = layers[-1].register_forward_hook(lambda module, args, out: outputs.append(out))
    batch = adapter.encode(queries[:2])
    try:
        with torch.no_grad():
            logits = adapter.model(**batch.inputs).logits
    finally:
        hook.remove()
    hidden = outputs[0][0] if isinstance(outputs[0], tuple) else outputs[0]
    with torch.no_grad():
        torch.testing.assert_close(adapter.head(hidden), logits, atol=1e-5, rtol=1e-4)

    # the vision-side module changes what the model sees in images, and nothing of text-only input
    vision = adapter.vision_side_module()
    image_query, text_query = queries[0], queries[1]
    with torch.no_grad():
        before = [adapter.model(**adapter.encode([q]).inputs).logits for q in (image_query, text_query)]
        saved = [p.detach().clone() for p in vision.parameters()]
        for parameter in vision.parameters():
            parameter.add_(torch.randn_like(parameter))
        after = [adapter.model(**adapter.encode([q]).inputs).logits for q in (image_query, text_query)]
        for parameter, original in zip(vision.parameters(), saved, strict=True):
            parameter.copy_(original)
    assert not torch.allclose(before[0], after[0])
    assert torch.equal(before[1], after[1])


def test_bad_queries_name_the_field(adapters: dict) -> None:
    adapter = adapters["llava"]
    with pytest.raises(ValueError, match="'answer'"):
        adapter.encode([Query("Who is it?", "  ")])
    with pytest.raises(ValueError, match="'question'"):
        adapter.encode([Query("", "Canberra")])
    with pytest.raises(ValueError, match="no queries"):
        adapter.encode([])
    too_long = Query("Who is it?", "Canberra", context="New Fact: a b c d e f g h " * 400)
    with pytest.raises(ValueError, match=r"query 0 .*exceed this llava model's 2048 positions.*'context'"):
        adapter.encode([too_long])
    with pytest.raises(ValueError, match="exceed"):
        adapter.generate([too_long])


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_context_prefix_runs_once_where_claimed(arch: str, adapters: dict, queries: list[Query]) -> None:
    """``supports_prefix_cache``: the engine's cached-prefix forward gives the full forward's logits."""
    from editors.forward import model_logits

    adapter = adapters[arch]
    context = queries[3].context
    batch = adapter.encode([Query(q.question, q.answer, q.image, context) for q in queries])
    with torch.no_grad():
        full = adapter.model(**batch.inputs).logits
        logits, offset = model_logits(adapter, batch)
    assert (offset > 0) == type(adapter).supports_prefix_cache
    for row, valid in enumerate(batch.valid_positions):
        torch.testing.assert_close(
            logits[row, valid.start - offset : valid.stop - offset], full[row, valid], atol=1e-5, rtol=1e-4
        )


@pytest.mark.parametrize("arch", ARCHS)
def test_image_features_are_what_the_language_model_receives(arch: str, adapters: dict, queries: list[Query]) -> None:
    adapter = adapters[arch]
    messi, henry = queries[0].image, queries[2].image
    features = adapter.image_features([messi, henry, messi])
    assert features.shape == (3, adapter.input_embeddings().embedding_dim)
    torch.testing.assert_close(features[0], features[2])
    assert not torch.allclose(features[0], features[1])
    # downstream of the vision-side module, and differentiable through it (stage 1 of pretraining)
    vision = adapter.vision_side_module()
    trainable = [p.requires_grad for p in vision.parameters()]
    vision.requires_grad_(True)
    try:
        adapter.image_features([messi, henry]).pow(2).sum().backward()
        gradients = [p.grad for p in vision.parameters()]
        assert all(g is not None for g in gradients) and any(g.abs().sum() > 0 for g in gradients)
    finally:
        for parameter, was_trainable in zip(vision.parameters(), trainable, strict=True):
            parameter.requires_grad_(was_trainable)
        adapter.model.zero_grad(set_to_none=True)
