"""``kebench convert minigpt4`` on a synthetic tiny checkpoint in MiniGPT-4's key layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from editors.adapters import load_adapter
from editors.adapters.base import Query
from editors.convert import IMAGE_TOKEN, map_minigpt4_keys
from editors.tiny import build_tokenizer
from kebench_hf.cli import main

VISION, QFORMER, TEXT, QUERIES, HEADS = 32, 32, 48, 4, 2


def minigpt4_checkpoint(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random tensors under the names of MiniGPT-4's public code (EVA ViT, ln_vision, Q-Former
    without its text side, query tokens, llama_proj): 2 ViT blocks on 16x16 images in 8x8 patches,
    2 Q-Former layers with cross-attention every other layer."""
    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.2

    state = {"visual_encoder.cls_token": rand(1, 1, VISION), "visual_encoder.pos_embed": rand(1, 5, VISION),
             "visual_encoder.patch_embed.proj.weight": rand(VISION, 3, 8, 8),
             "visual_encoder.patch_embed.proj.bias": rand(VISION),
             "ln_vision.weight": 1 + rand(VISION), "ln_vision.bias": rand(VISION), "query_tokens": rand(1, QUERIES, QFORMER),
             "Qformer.bert.embeddings.LayerNorm.weight": 1 + rand(QFORMER),
             "Qformer.bert.embeddings.LayerNorm.bias": rand(QFORMER),
             "llama_proj.weight": rand(TEXT, QFORMER), "llama_proj.bias": rand(TEXT)}
    for block in range(2):
        prefix = f"visual_encoder.blocks.{block}."
        state.update({prefix + "norm1.weight": 1 + rand(VISION), prefix + "norm1.bias": rand(VISION),
                      prefix + "norm2.weight": 1 + rand(VISION), prefix + "norm2.bias": rand(VISION),
                      prefix + "attn.qkv.weight": rand(3 * VISION, VISION), prefix + "attn.q_bias": rand(VISION),
                      prefix + "attn.v_bias": rand(VISION), prefix + "attn.proj.weight": rand(VISION, VISION),
                      prefix + "attn.proj.bias": rand(VISION), prefix + "mlp.fc1.weight": rand(2 * VISION, VISION),
                      prefix + "mlp.fc1.bias": rand(2 * VISION), prefix + "mlp.fc2.weight": rand(VISION, 2 * VISION),
                      prefix + "mlp.fc2.bias": rand(VISION)})
    for layer in range(2):
        prefix = f"Qformer.bert.encoder.layer.{layer}."
        for block, width in [("attention", QFORMER)] + ([("crossattention", VISION)] if layer == 0 else []):
            for projection in ("query", "key", "value"):
                state[f"{prefix}{block}.self.{projection}.weight"] = rand(QFORMER, QFORMER if projection == "query" else width)
                state[f"{prefix}{block}.self.{projection}.bias"] = rand(QFORMER)
            state.update({f"{prefix}{block}.output.dense.weight": rand(QFORMER, QFORMER),
                          f"{prefix}{block}.output.dense.bias": rand(QFORMER),
                          f"{prefix}{block}.output.LayerNorm.weight": 1 + rand(QFORMER),
                          f"{prefix}{block}.output.LayerNorm.bias": rand(QFORMER)})
        state.update({prefix + "intermediate_query.dense.weight": rand(2 * QFORMER, QFORMER),
                      prefix + "intermediate_query.dense.bias": rand(2 * QFORMER),
                      prefix + "output_query.dense.weight": rand(QFORMER, 2 * QFORMER),
                      prefix + "output_query.dense.bias": rand(QFORMER),
                      prefix + "output_query.LayerNorm.weight": 1 + rand(QFORMER),
                      prefix + "output_query.LayerNorm.bias": rand(QFORMER)})
    return state


def direct_construction(state: dict[str, torch.Tensor], llama: torch.nn.Module, image_token: int, rows: int):
    """The same weights placed into ``Blip2ForConditionalGeneration`` by its modules, written here
    from what each MiniGPT-4 part computes (EVA's attention: q and v biases, no k bias)."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    config = Blip2Config(
        vision_config={"hidden_size": VISION, "intermediate_size": 2 * VISION, "num_hidden_layers": 2,
                       "num_attention_heads": HEADS, "patch_size": 8, "image_size": 16, "qkv_bias": True},
        qformer_config={"hidden_size": QFORMER, "intermediate_size": 2 * QFORMER, "num_hidden_layers": 2,
                        "num_attention_heads": HEADS, "encoder_hidden_size": VISION, "cross_attention_frequency": 2},
        text_config={**llama.config.to_dict(), "vocab_size": rows}, num_query_tokens=QUERIES,
        image_token_index=image_token,
    )
    model = Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():
        vision = model.vision_model
        vision.embeddings.class_embedding.copy_(state["visual_encoder.cls_token"])
        vision.embeddings.position_embedding.copy_(state["visual_encoder.pos_embed"])
        vision.embeddings.patch_embedding.weight.copy_(state["visual_encoder.patch_embed.proj.weight"])
        vision.embeddings.patch_embedding.bias.copy_(state["visual_encoder.patch_embed.proj.bias"])
        for index, layer in enumerate(vision.encoder.layers):
            def get(name: str, index: int = index) -> torch.Tensor:
                return state[f"visual_encoder.blocks.{index}.{name}"]
            for ours, theirs in ((layer.layer_norm1, "norm1"), (layer.layer_norm2, "norm2"),
                                 (layer.self_attn.projection, "attn.proj"), (layer.mlp.fc1, "mlp.fc1"),
                                 (layer.mlp.fc2, "mlp.fc2")):
                ours.weight.copy_(get(f"{theirs}.weight"))
                ours.bias.copy_(get(f"{theirs}.bias"))
            layer.self_attn.qkv.weight.copy_(get("attn.qkv.weight"))
            layer.self_attn.qkv.bias.copy_(torch.cat([get("attn.q_bias"), torch.zeros(VISION), get("attn.v_bias")]))
        vision.post_layernorm.weight.copy_(state["ln_vision.weight"])
        vision.post_layernorm.bias.copy_(state["ln_vision.bias"])
        model.query_tokens.copy_(state["query_tokens"])
        model.qformer.layernorm.weight.copy_(state["Qformer.bert.embeddings.LayerNorm.weight"])
        model.qformer.layernorm.bias.copy_(state["Qformer.bert.embeddings.LayerNorm.bias"])
        for index, layer in enumerate(model.qformer.encoder.layer):
            blocks = [(layer.attention, "attention")] + ([(layer.crossattention, "crossattention")] if index == 0 else [])
            for ours, theirs in blocks:
                prefix = f"Qformer.bert.encoder.layer.{index}.{theirs}"
                for name in ("query", "key", "value"):
                    getattr(ours.attention, name).weight.copy_(state[f"{prefix}.self.{name}.weight"])
                    getattr(ours.attention, name).bias.copy_(state[f"{prefix}.self.{name}.bias"])
                for name, module in (("dense", ours.output.dense), ("LayerNorm", ours.output.LayerNorm)):
                    module.weight.copy_(state[f"{prefix}.output.{name}.weight"])
                    module.bias.copy_(state[f"{prefix}.output.{name}.bias"])
            prefix = f"Qformer.bert.encoder.layer.{index}"
            for name, module in (("intermediate_query.dense", layer.intermediate_query.dense),
                                 ("output_query.dense", layer.output_query.dense),
                                 ("output_query.LayerNorm", layer.output_query.LayerNorm)):
                module.weight.copy_(state[f"{prefix}.{name}.weight"])
                module.bias.copy_(state[f"{prefix}.{name}.bias"])
        model.language_projection.weight.copy_(state["llama_proj.weight"])
        model.language_projection.bias.copy_(state["llama_proj.bias"])
        text = model.language_model
        for name, parameter in llama.state_dict().items():
            target = text.get_parameter(name)
            target[: parameter.shape[0]].copy_(parameter)
            if target.shape[0] > parameter.shape[0]:  # the image placeholder's new row: the mean row
                target[parameter.shape[0] :].copy_(parameter.mean(dim=0, keepdim=True))
    return model


@pytest.fixture(scope="module")
def minigpt4(tmp_path_factory: pytest.TempPathFactory, vlkeb_fixture_dir: Path):
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("minigpt4")
    state = minigpt4_checkpoint(torch.Generator().manual_seed(0))
    save_file(state, root / "minigpt4.safetensors")
    texts = [r["src"] for r in json.loads((vlkeb_fixture_dir / "train.json").read_text())]
    tokenizer = build_tokenizer(texts, [], 512, chat_template=None)
    torch.manual_seed(1)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=TEXT, intermediate_size=96,
                                         num_hidden_layers=2, num_attention_heads=HEADS, max_position_embeddings=256,
                                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                         pad_token_id=tokenizer.pad_token_id)).eval()
    llama.save_pretrained(root / "vicuna")
    tokenizer.save_pretrained(root / "vicuna")
    return root, state, llama


def test_every_key_is_mapped_and_outputs_equal_a_direct_construction(minigpt4, vlkeb_fixture_dir: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    root, state, llama = minigpt4
    out = root / "converted"
    assert main(["convert", "minigpt4", "--checkpoint", str(root / "minigpt4.safetensors"), "--llama",
                 str(root / "vicuna"), "--out", str(out), "--vision-heads", "2", "--qformer-heads", "2"]) == 0
    assert "keys mapped" in capsys.readouterr().out
    report = json.loads((out / "conversion.json").read_text())
    assert report["dropped_keys"] == [] and report["mapped_keys"] == len(state) - 2 + len(llama.state_dict())  # q/v -> qkv

    adapter = load_adapter(out)
    assert adapter.family == "minigpt4" and type(adapter.model).__name__ == "Blip2ForConditionalGeneration"
    image_token = adapter.processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    direct = direct_construction(state, llama, image_token, adapter.model.config.text_config.vocab_size)
    image = Image.open(next((vlkeb_fixture_dir / "mmkb_images").rglob("*.jpg")))
    batch = adapter.encode([Query("Who is shown in the image?", "Lionel Messi", image),
                            Query("What is the capital of France?", "Paris")])
    assert IMAGE_TOKEN in adapter.processor.tokenizer.decode(batch.inputs["input_ids"][0])
    with torch.no_grad():
        converted = adapter.model(**batch.inputs).logits
        expected = direct(**batch.inputs).logits
    torch.testing.assert_close(converted, expected, rtol=0, atol=0)
    assert adapter.generate([Query("What is the capital of France?", "")], max_new_tokens=2)[0] is not None


def test_keys_outside_the_layout_or_missing_parts_are_named(minigpt4, tmp_path: Path) -> None:
    _, state, _ = minigpt4
    with pytest.raises(ValueError, match=r"1 checkpoint key\(s\) are not MiniGPT-4's: visual_encoder.head.weight"):
        map_minigpt4_keys({**state, "visual_encoder.head.weight": torch.zeros(1)})
    # MiniGPT-4 drops the Q-Former's text side: so does the conversion, and says so
    _, dropped = map_minigpt4_keys({**state, "Qformer.cls.predictions.bias": torch.zeros(1)})
    assert dropped == ["Qformer.cls.predictions.bias"]
    root = minigpt4[0]
    partial = {key: value for key, value in state.items() if not key.startswith("llama_proj")}
    save_file(partial, tmp_path / "no-projection.safetensors")
    with pytest.raises(ValueError, match=r"lacks 2 key\(s\): language_projection.bias, language_projection.weight"):
        from editors.convert import convert_minigpt4

        convert_minigpt4([tmp_path / "no-projection.safetensors"], root / "vicuna", tmp_path / "out", 2, 2)
