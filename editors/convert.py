"""Checkpoints of models outside transformers, converted into a transformers class.

MiniGPT-4 (``kebench convert minigpt4``) is BLIP-2's EVA ViT and Q-Former, one linear projection
and a Vicuna (Llama) language model: ``Blip2ForConditionalGeneration`` with a Llama ``text_config``
holds it exactly. Its public repository's checkpoints name the parts ``visual_encoder.*`` (EVA ViT),
``ln_vision.*``, ``Qformer.*`` (a BERT with cross-attention), ``query_tokens`` and ``llama_proj.*``
(``pretrained_minigpt4.pth`` holds ``llama_proj`` alone; the ViT and Q-Former come from BLIP-2's
``blip2_pretrained_flant5xxl.pth`` and ``eva_vit_g.pth``: pass every file with ``--checkpoint``); the
Vicuna weights are a transformers Llama directory (``--llama``). Every key is mapped or is one that
MiniGPT-4 itself drops (the Q-Former's text-side layers, BLIP-2's other heads); anything else, or a
part missing, is an error naming the keys.

Files are read as safetensors, or ``.pth`` through ``torch.load(weights_only=True)``, which
unpickles tensors and plain containers only (never arbitrary objects).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: MiniGPT-4's placeholder for the query embeddings in a row, added to Vicuna's tokenizer
IMAGE_TOKEN = "<ImageHere>"
#: EVA ViT-g's 16 heads of 88 and the Q-Former's (BERT-base) 12 heads of 64: not readable from weights
EVA_VIT_G_HEADS = 16
QFORMER_HEADS = 12
#: CLIP's normalisation, which MiniGPT-4's image processor (Blip2ImageEvalProcessor) uses, at 224 px
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: (MiniGPT-4 key pattern, transformers key template); the q/v biases are handled on their own
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"visual_encoder\.cls_token", "vision_model.embeddings.class_embedding"),
    (r"visual_encoder\.pos_embed", "vision_model.embeddings.position_embedding"),
    (r"visual_encoder\.patch_embed\.proj\.(weight|bias)", r"vision_model.embeddings.patch_embedding.\1"),
    (r"visual_encoder\.blocks\.(\d+)\.norm1\.(weight|bias)", r"vision_model.encoder.layers.\1.layer_norm1.\2"),
    (r"visual_encoder\.blocks\.(\d+)\.norm2\.(weight|bias)", r"vision_model.encoder.layers.\1.layer_norm2.\2"),
    (r"visual_encoder\.blocks\.(\d+)\.attn\.qkv\.weight", r"vision_model.encoder.layers.\1.self_attn.qkv.weight"),
    (r"visual_encoder\.blocks\.(\d+)\.attn\.proj\.(weight|bias)",
     r"vision_model.encoder.layers.\1.self_attn.projection.\2"),
    (r"visual_encoder\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"vision_model.encoder.layers.\1.mlp.\2.\3"),
    (r"ln_vision\.(weight|bias)", r"vision_model.post_layernorm.\1"),
    (r"query_tokens", "query_tokens"),
    (r"Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)", r"qformer.layernorm.\1"),
    (r"Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)",
     r"qformer.encoder.layer.\1.\2.attention.\3.\4"),
    (r"Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)",
     r"qformer.encoder.layer.\1.\2.output.\3.\4"),
    (r"Qformer\.bert\.encoder\.layer\.(\d+)\.(intermediate_query|output_query)\.dense\.(weight|bias)",
     r"qformer.encoder.layer.\1.\2.dense.\3"),
    (r"Qformer\.bert\.encoder\.layer\.(\d+)\.output_query\.LayerNorm\.(weight|bias)",
     r"qformer.encoder.layer.\1.output_query.LayerNorm.\2"),
    (r"llama_proj\.(weight|bias)", r"language_projection.\1"),
    (r"llama_model\.(.+)", r"language_model.\1"),
)
_QV_BIAS = re.compile(r"visual_encoder\.blocks\.(\d+)\.attn\.([qv])_bias")
#: keys MiniGPT-4 itself does not use: the Q-Former's text side (it sets them to None) and the
#: other heads of BLIP-2's checkpoint
_DROPPED = re.compile(
    r"Qformer\.(cls\..*|bert\.embeddings\.(word_embeddings|position_embeddings)\..*|bert\.embeddings\.position_ids"
    r"|bert\.encoder\.layer\.\d+\.(intermediate|output)\..*)"
    r"|(vision_proj|text_proj|itm_head|t5_proj|opt_proj)\..*|temp"
)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or ``.pth`` file (MiniGPT-4's ``{"model": ...}`` unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a file it will not read
        raise ValueError(f"checkpoint {str(path)!r}: not a tensors-only torch file ({error})") from None
    state = loaded.get("model", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"checkpoint {str(path)!r}: expected a state dict of tensors (or {{'model': ...}})")
    return state


def map_minigpt4_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """MiniGPT-4's tensors under ``Blip2ForConditionalGeneration``'s names, and the keys dropped as
    MiniGPT-4 drops them; any other key is a ``ValueError`` listing them."""
    mapped: dict[str, torch.Tensor] = {}
    dropped, unknown = [], []
    biases: dict[tuple[str, str], torch.Tensor] = {}
    for key, tensor in state.items():
        bias = _QV_BIAS.fullmatch(key)
        if bias:
            biases[(bias.group(1), bias.group(2))] = tensor
            continue
        for pattern, template in _RENAMES:
            match = re.fullmatch(pattern, key)
            if match:
                mapped[match.expand(template)] = tensor
                break
        else:
            (dropped if _DROPPED.fullmatch(key) else unknown).append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} checkpoint key(s) are not MiniGPT-4's: {', '.join(sorted(unknown)[:8])}")
    for layer in sorted({layer for layer, _ in biases}, key=int):
        if (layer, "q") not in biases or (layer, "v") not in biases:
            raise ValueError(f"visual_encoder.blocks.{layer}.attn: q_bias and v_bias come together; one is missing")
        q, v = biases[(layer, "q")], biases[(layer, "v")]
        # EVA's attention has no key bias: transformers' fused qkv bias holds a zero block for it
        mapped[f"vision_model.encoder.layers.{layer}.self_attn.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    return mapped, dropped


def _layers(keys: Iterable[str], pattern: str) -> set[str]:
    """The layer numbers ``pattern``'s group matches among ``keys``."""
    return {match.group(1) for key in keys if (match := re.fullmatch(pattern, key))}


def _count(keys: Iterable[str], pattern: str) -> int:
    return len(_layers(keys, pattern))


def minigpt4_config(mapped: dict[str, torch.Tensor], llama_config: dict[str, Any], image_token_index: int,
                    vision_heads: int = EVA_VIT_G_HEADS, qformer_heads: int = QFORMER_HEADS) -> Any:
    """The ``Blip2Config`` the mapped weights fill: sizes read from the tensors, heads as given."""
    from transformers import Blip2Config

    def tensor(key: str) -> torch.Tensor:
        if key not in mapped:
            raise ValueError(f"the checkpoint has no tensor for {key} (MiniGPT-4's ViT, Q-Former and projection "
                             "are needed: pass BLIP-2's and MiniGPT-4's checkpoints together)")
        return mapped[key]

    patch = tensor("vision_model.embeddings.patch_embedding.weight")
    positions = tensor("vision_model.embeddings.position_embedding").shape[1] - 1
    keys = list(mapped)
    qformer_layers = _count(keys, r"qformer\.encoder\.layer\.(\d+)\..*")
    cross = sorted(int(layer) for layer in _layers(keys, r"qformer\.encoder\.layer\.(\d+)\.crossattention\..*"))
    return Blip2Config(
        vision_config={
            "hidden_size": patch.shape[0],
            "intermediate_size": tensor("vision_model.encoder.layers.0.mlp.fc1.weight").shape[0],
            "num_hidden_layers": _count(keys, r"vision_model\.encoder\.layers\.(\d+)\..*"),
            "num_attention_heads": vision_heads,
            "patch_size": patch.shape[-1],
            "image_size": int(math.isqrt(positions)) * patch.shape[-1],
            "qkv_bias": True,
        },
        qformer_config={
            "hidden_size": tensor("query_tokens").shape[-1],
            "intermediate_size": tensor("qformer.encoder.layer.0.intermediate_query.dense.weight").shape[0],
            "num_hidden_layers": qformer_layers,
            "num_attention_heads": qformer_heads,
            "encoder_hidden_size": tensor("qformer.encoder.layer.0.crossattention.attention.key.weight").shape[1],
            "cross_attention_frequency": cross[1] - cross[0] if len(cross) > 1 else qformer_layers,
        },
        text_config=llama_config,
        num_query_tokens=tensor("query_tokens").shape[1],
        image_token_index=image_token_index,
    )


def _llama_state(llama_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(llama_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"--llama {str(llama_dir)!r}: no *.safetensors weights (a transformers Llama directory)")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    return {f"language_model.{key}": tensor for key, tensor in state.items()}


def convert_minigpt4(checkpoints: list[str | Path], llama_dir: str | Path, out_dir: str | Path,
                     vision_heads: int = EVA_VIT_G_HEADS, qformer_heads: int = QFORMER_HEADS) -> dict[str, Any]:
    """Write MiniGPT-4 as ``Blip2ForConditionalGeneration`` + ``Blip2Processor`` to ``out_dir``.

    ``checkpoints``: MiniGPT-4's own and BLIP-2's files (their keys together); ``llama_dir``: the
    Vicuna weights, config and tokenizer as transformers saves a Llama. Returns the conversion report
    (also ``out_dir/conversion.json``): keys mapped, keys dropped as MiniGPT-4 drops them.
    """
    from transformers import AutoTokenizer, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    llama_dir, out = Path(llama_dir), Path(out_dir)
    if not (llama_dir / "config.json").is_file():
        raise FileNotFoundError(f"--llama {str(llama_dir)!r}: no config.json (a transformers Llama directory)")
    state: dict[str, torch.Tensor] = {}
    for path in checkpoints:
        state.update(read_state_dict(path))
    mapped, dropped = map_minigpt4_keys(state)
    if not any(key.startswith("language_model.") for key in mapped):
        mapped.update(_llama_state(llama_dir))
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    llama_config = json.loads((llama_dir / "config.json").read_text())
    llama_config["vocab_size"] = max(llama_config.get("vocab_size", 0), len(tokenizer))
    config = minigpt4_config(mapped, llama_config, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                             vision_heads, qformer_heads)
    with torch.device("meta"):
        model = Blip2ForConditionalGeneration(config)
    expected = set(model.state_dict())
    missing = sorted(expected - set(mapped))
    unused = sorted(set(mapped) - expected)
    if unused:
        raise ValueError(f"{len(unused)} mapped key(s) have no place in the model: {', '.join(unused[:8])}")
    # the placeholder token's embedding and LM-head rows are new (its embedding is replaced by the
    # query tokens' before the language model reads it); every other key must come from the files
    new_rows = {"language_model.model.embed_tokens.weight", "language_model.lm_head.weight"}
    if set(missing) - new_rows:
        raise ValueError(f"the checkpoint lacks {len(set(missing) - new_rows)} key(s): "
                         f"{', '.join(sorted(set(missing) - new_rows)[:8])}")
    model = Blip2ForConditionalGeneration(config)
    model.load_state_dict(_with_rows(mapped, model, config.text_config.vocab_size), strict=True, assign=True)
    side = config.vision_config.image_size
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": side, "width": side}, image_mean=CLIP_MEAN, image_std=CLIP_STD),
        tokenizer=tokenizer,
        num_query_tokens=config.num_query_tokens,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    report = {"source": "minigpt4", "checkpoints": [str(path) for path in checkpoints], "llama": str(llama_dir),
              "mapped_keys": len(mapped), "dropped_keys": dropped, "image_token": IMAGE_TOKEN}
    (out / "conversion.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("MiniGPT-4 converted to %s: %d keys mapped, %d dropped", out, len(mapped), len(dropped))
    return report


def _with_rows(mapped: dict[str, torch.Tensor], model: torch.nn.Module, rows: int) -> dict[str, torch.Tensor]:
    """The mapped tensors with the embedding and LM head grown to ``rows`` (new rows: the mean row)."""
    grown = dict(mapped)
    for key in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
        if key not in grown:  # tied: the LM head is the embedding
            continue
        weight = grown[key]
        extra = rows - weight.shape[0]
        if extra > 0:
            grown[key] = torch.cat([weight, weight.mean(dim=0, keepdim=True).expand(extra, -1)])
    if "language_model.lm_head.weight" not in grown and not model.config.text_config.tie_word_embeddings:
        raise ValueError("the Llama weights have no lm_head.weight and its config does not tie it to the embeddings")
    return grown
