"""Tiny LVLMs of the real transformers architectures, with an offline tokenizer and processor.

A tiny model is a real ``*ForConditionalGeneration`` class with a few narrow layers, a byte-level
BPE tokenizer trained on the world's own text (so any text still encodes, byte by byte) and the
family's real processor class with a slow (PIL) image processor. Everything is written with
``save_pretrained``, so ``AutoModelForImageTextToText`` / ``AutoProcessor`` load it offline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"


@dataclass(frozen=True)
class TinySpec:
    """Sizes of a model: a ``text_layers`` deep, ``hidden_size`` wide language model and a vision tower.

    Tiny by default; a real model's sizes (e.g. ``editors.bench.LLAVA_1_5_7B``) give a random-weight
    model of its exact shape. ``None`` sizes follow the tiny ratios: MLPs 4x (text) and 2x (vision)
    their width, the vision tower as many heads as the text model, as many embedding rows as tokens.
    """

    hidden_size: int = 128
    text_layers: int = 4
    heads: int = 4
    vision_hidden_size: int = 64
    vision_layers: int = 2
    image_size: int = 32
    patch_size: int = 8
    vocab_size: int = 2048
    max_positions: int = 2048
    intermediate_size: int | None = None
    vision_intermediate_size: int | None = None
    vision_heads: int | None = None
    #: embedding / LM-head rows when more than the tokenizer's (a real model's vocabulary size)
    embedding_rows: int | None = None

    def __post_init__(self) -> None:
        derived = {
            "intermediate_size": 4 * self.hidden_size,
            "vision_intermediate_size": 2 * self.vision_hidden_size,
            "vision_heads": self.heads,
        }
        for name, value in derived.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    def vocabulary(self, tokenizer: PreTrainedTokenizerFast) -> int:
        """Rows of the text model's embeddings: the tokenizer's, or ``embedding_rows`` when more."""
        return max(len(tokenizer), self.embedding_rows or 0)


def build_tokenizer(
    texts: Iterable[str], special_tokens: list[str], vocab_size: int, chat_template: str | None,
    named_tokens: dict[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``texts``; every sequence starts with ``<s>``.

    ``special_tokens`` (the family's image/vision markers) are added as single tokens that the
    BPE never splits or produces from plain text; ``named_tokens`` are special tokens the family's
    processor reads as tokenizer attributes (e.g. Gemma 3's ``boi_token``).
    """
    special_tokens = [*special_tokens, *(named_tokens or {}).values()]
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    all_special = [PAD, BOS, EOS, UNK, *special_tokens]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=all_special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    bos_id = core.token_to_id(BOS)
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=named_tokens or {},
        additional_special_tokens=special_tokens,
        chat_template=chat_template,
        model_max_length=4096,
    )


# LLaVA-1.5's own conversation format: "USER: <image>\n{question} ASSISTANT: {answer}</s>".
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %} {% else %}ASSISTANT: "
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _llama_config(spec: TinySpec, tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "vocab_size": spec.vocabulary(tokenizer),
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.text_layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.heads,
        "max_position_embeddings": spec.max_positions,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _vision_tower_config(spec: TinySpec, patch_size: int | None = None) -> dict[str, Any]:
    """The sizes every family's ViT-style vision tower shares."""
    return {
        "hidden_size": spec.vision_hidden_size,
        "intermediate_size": spec.vision_intermediate_size,
        "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": spec.vision_heads,
        "image_size": spec.image_size,
        "patch_size": patch_size or spec.patch_size,
    }


def _clip_vision_config(spec: TinySpec) -> dict[str, Any]:
    return {
        "model_type": "clip_vision_model",
        **_vision_tower_config(spec),
        "projection_dim": spec.vision_hidden_size,
    }


def _clip_image_processor(spec: TinySpec) -> Any:
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": spec.image_size}, crop_size={"height": spec.image_size, "width": spec.image_size}
    )


def _llava_processor(texts: list[str], spec: TinySpec) -> Any:
    """LLaVA's processor: CLIP images, one ``<image>`` token per patch, LLaVA's chat template."""
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=_clip_image_processor(spec),
        tokenizer=build_tokenizer(texts, ["<image>"], spec.vocab_size, LLAVA_CHAT_TEMPLATE),
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def _build_llava(texts: list[str], spec: TinySpec) -> tuple[torch.nn.Module, Any]:
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    processor = _llava_processor(texts, spec)
    tokenizer = processor.tokenizer
    config = LlavaConfig(
        vision_config=_clip_vision_config(spec),
        text_config=_llama_config(spec, tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(spec.image_size // spec.patch_size) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    return LlavaForConditionalGeneration(config), processor


def _build_blip2(texts: list[str], spec: TinySpec, language_model: str = "opt") -> tuple[torch.nn.Module, Any]:
    """BLIP-2 with OPT, or with ``language_model="llama"`` MiniGPT-4 (as ``kebench convert minigpt4`` writes it)."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessorPil

    from editors.convert import IMAGE_TOKEN

    # BLIP-2 and MiniGPT-4 prompts are plain text; no chat template.
    image_token = IMAGE_TOKEN if language_model == "llama" else "<image>"
    tokenizer = build_tokenizer(texts, [image_token], spec.vocab_size, chat_template=None)
    queries = (spec.image_size // spec.patch_size) ** 2 // 2
    processor = Blip2Processor(
        image_processor=BlipImageProcessorPil(size={"height": spec.image_size, "width": spec.image_size}),
        tokenizer=tokenizer,
        num_query_tokens=queries,
    )
    config = Blip2Config(
        vision_config=_vision_tower_config(spec),
        qformer_config={
            "hidden_size": spec.vision_hidden_size,
            "intermediate_size": spec.vision_intermediate_size,
            "num_hidden_layers": spec.vision_layers,
            "num_attention_heads": spec.vision_heads,
            "encoder_hidden_size": spec.vision_hidden_size,
            "cross_attention_frequency": 1,
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        },
        text_config=_llama_config(spec, tokenizer) if language_model == "llama" else {
            "model_type": "opt",
            "vocab_size": spec.vocabulary(tokenizer),
            "hidden_size": spec.hidden_size,
            "word_embed_proj_dim": spec.hidden_size,
            "ffn_dim": spec.intermediate_size,
            "num_hidden_layers": spec.text_layers,
            "num_attention_heads": spec.heads,
            "max_position_embeddings": spec.max_positions,
            "dropout": 0.0,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        num_query_tokens=queries,
        image_token_index=tokenizer.convert_tokens_to_ids(image_token),
    )
    return Blip2ForConditionalGeneration(config), processor


# Qwen2-VL's ChatML format (the real template also adds a default system turn, omitted here).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN2_VL_SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                           "<|video_pad|>"]


def _build_qwen_vl(texts: list[str], spec: TinySpec, version: str) -> tuple[torch.nn.Module, Any]:
    """Qwen2-VL (``version="2"``) or Qwen2.5-VL (``"2.5"``): same tokens, processor and text model."""
    import transformers
    from transformers import Qwen2VLImageProcessorPil

    from editors.adapters.qwen2_vl import ImageOnlyQwen2VLProcessor

    tokenizer = build_tokenizer(texts, QWEN2_VL_SPECIAL_TOKENS, spec.vocab_size, QWEN2_VL_CHAT_TEMPLATE)
    patch, merge = spec.patch_size // 2, 2
    pixels = spec.image_size * spec.image_size
    processor = ImageOnlyQwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(
            size={"shortest_edge": pixels, "longest_edge": pixels}, patch_size=patch, merge_size=merge
        ),
        tokenizer=tokenizer,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    # M-RoPE splits the rotary half of each head over (time, height, width) as 2:3:3.
    half = spec.hidden_size // spec.heads // 2
    height = width = half * 3 // 8
    vision = {"depth": spec.vision_layers, "num_heads": spec.vision_heads, "patch_size": patch, "spatial_merge_size": merge,
              "temporal_patch_size": 2}
    if version == "2":
        vision.update(embed_dim=spec.vision_hidden_size, hidden_size=spec.hidden_size, mlp_ratio=2)
    else:
        vision.update(hidden_size=spec.vision_hidden_size, intermediate_size=spec.vision_intermediate_size,
                      out_hidden_size=spec.hidden_size, window_size=spec.image_size,
                      fullatt_block_indexes=[spec.vision_layers - 1])
    prefix = {"2": "Qwen2VL", "2.5": "Qwen2_5_VL"}[version]
    ids = tokenizer.convert_tokens_to_ids
    config = getattr(transformers, f"{prefix}Config")(
        vision_config=vision,
        text_config={
            "vocab_size": spec.vocabulary(tokenizer),
            "hidden_size": spec.hidden_size,
            "intermediate_size": spec.intermediate_size,
            "num_hidden_layers": spec.text_layers,
            "num_attention_heads": spec.heads,
            "num_key_value_heads": spec.heads,
            "max_position_embeddings": spec.max_positions,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "mrope_section": [half - height - width, height, width]},
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    return getattr(transformers, f"{prefix}ForConditionalGeneration")(config), processor


# Idefics3 / SmolVLM conversation format.
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def _build_idefics3(texts: list[str], spec: TinySpec) -> tuple[torch.nn.Module, Any]:
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    special = ["<|im_start|>", "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    tokenizer = build_tokenizer(texts, special, spec.vocab_size, IDEFICS3_CHAT_TEMPLATE)
    patch, scale_factor = spec.patch_size // 2, 2
    image_tokens = (spec.image_size // patch) ** 2 // scale_factor**2
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(
            size={"longest_edge": spec.image_size},
            max_image_size={"longest_edge": spec.image_size},
            do_image_splitting=False,
        ),
        tokenizer=tokenizer,
        image_seq_len=image_tokens,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    config = Idefics3Config(
        vision_config=_vision_tower_config(spec, patch),
        text_config=_llama_config(spec, tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
    )
    return Idefics3ForConditionalGeneration(config), processor


def _build_llava_next(texts: list[str], spec: TinySpec) -> tuple[torch.nn.Module, Any]:
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    tokenizer = build_tokenizer(texts, ["<image>"], spec.vocab_size, LLAVA_CHAT_TEMPLATE)
    side = spec.image_size
    pinpoints = [[side, side], [side, 2 * side], [2 * side, side]]
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}, image_grid_pinpoints=pinpoints
        ),
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    config = LlavaNextConfig(
        vision_config=_clip_vision_config(spec),
        text_config=_llama_config(spec, tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        image_seq_length=(side // spec.patch_size) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    return LlavaNextForConditionalGeneration(config), processor


# ChatML with LLaVA's image placeholder (LLaVA-OneVision's Qwen2 conversation format).
CHATML_IMAGE_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _qwen2_config(spec: TinySpec, tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    return {**_llama_config(spec, tokenizer), "model_type": "qwen2"}


def _siglip_vision_config(spec: TinySpec, patch_size: int | None = None) -> dict[str, Any]:
    return {"model_type": "siglip_vision_model", **_vision_tower_config(spec, patch_size), "vision_use_head": False}


def _build_llava_onevision(texts: list[str], spec: TinySpec) -> tuple[torch.nn.Module, Any]:
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
    )

    from editors.adapters.processors import image_only

    tokenizer = build_tokenizer(texts, ["<|im_start|>", "<|im_end|>", "<image>", "<video>"], spec.vocab_size,
                                CHATML_IMAGE_CHAT_TEMPLATE)
    side = spec.image_size
    pinpoints = [[side, side], [side, 2 * side], [2 * side, side]]
    processor = image_only(LlavaOnevisionProcessor)(
        image_processor=LlavaOnevisionImageProcessorPil(size={"height": side, "width": side},
                                                        image_grid_pinpoints=pinpoints),
        tokenizer=tokenizer,
        num_image_tokens=(side // spec.patch_size) ** 2,
        vision_feature_select_strategy="full",  # SigLIP has no CLS token
        chat_template=CHATML_IMAGE_CHAT_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = LlavaOnevisionConfig(
        vision_config=_siglip_vision_config(spec),
        text_config=_qwen2_config(spec, tokenizer),
        image_token_index=ids("<image>"),
        video_token_index=ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    return LlavaOnevisionForConditionalGeneration(config), processor


def _build_qwen3_vl(texts: list[str], spec: TinySpec) -> tuple[torch.nn.Module, Any]:
    from transformers import (
        Qwen2VLImageProcessorPil,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
    )

    from editors.adapters.processors import image_only

    tokenizer = build_tokenizer(texts, QWEN2_VL_SPECIAL_TOKENS, spec.vocab_size, QWEN2_VL_CHAT_TEMPLATE)
    patch, merge = spec.patch_size // 2, 2
    pixels = spec.image_size * spec.image_size
    processor = image_only(Qwen3VLProcessor)(
        image_processor=Qwen2VLImageProcessorPil(
            size={"shortest_edge": pixels, "longest_edge": pixels}, patch_size=patch, merge_size=merge
        ),
        tokenizer=tokenizer,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    # interleaved M-RoPE over (time, height, width), 3 frequencies in every 8 for height and width
    head_dim = spec.hidden_size // spec.heads
    half = head_dim // 2
    height = width = half * 3 // 8
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen3VLConfig(
        vision_config={
            "depth": spec.vision_layers, "hidden_size": spec.vision_hidden_size,
            "intermediate_size": spec.vision_intermediate_size, "num_heads": spec.vision_heads, "patch_size": patch,
            "spatial_merge_size": merge, "temporal_patch_size": 2, "out_hidden_size": spec.hidden_size,
            "num_position_embeddings": (spec.image_size // patch) ** 2, "deepstack_visual_indexes": [0],
        },
        text_config={
            **_llama_config(spec, tokenizer),
            "model_type": "qwen3_vl_text",
            "head_dim": head_dim,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_interleaved": True,
                                "mrope_section": [half - height - width, height, width]},
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    return Qwen3VLForConditionalGeneration(config), processor


# Gemma 3's turn format (the real template also opens with BOS, which the tokenizer adds here).
GEMMA3_CHAT_TEMPLATE = (
    "{% for message in messages %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _build_gemma3(texts: list[str], spec: TinySpec) -> tuple[torch.nn.Module, Any]:
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
    )

    named = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tokenizer = build_tokenizer(texts, ["<start_of_turn>", "<end_of_turn>"], spec.vocab_size, GEMMA3_CHAT_TEMPLATE,
                                named_tokens=named)
    patch = spec.patch_size // 2
    image_tokens = (spec.image_size // patch) ** 2 // 4  # the projector average-pools 2x2 patches
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": spec.image_size, "width": spec.image_size}),
        tokenizer=tokenizer,
        image_seq_length=image_tokens,
        chat_template=GEMMA3_CHAT_TEMPLATE,
    )
    head_dim = spec.hidden_size // spec.heads
    ids = tokenizer.convert_tokens_to_ids
    config = Gemma3Config(
        vision_config=_siglip_vision_config(spec, patch),
        text_config={
            **_llama_config(spec, tokenizer),
            "model_type": "gemma3_text",
            "head_dim": head_dim,
            "query_pre_attn_scalar": head_dim,
            "sliding_window": spec.max_positions,
        },
        mm_tokens_per_image=image_tokens,
        boi_token_index=ids(named["boi_token"]),
        eoi_token_index=ids(named["eoi_token"]),
        image_token_index=ids(named["image_token"]),
    )
    model = Gemma3ForConditionalGeneration(config)
    # Gemma 3 starts its projection at zero (every image the same to the language model until
    # trained); an untrained tiny model needs images told apart, as the other families' do
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=config.initializer_range)
    return model, processor


def _build_vipllava(texts: list[str], spec: TinySpec) -> tuple[torch.nn.Module, Any]:
    """VipLLaVA (CLIP features of several layers -> projector -> Llama): no adapter of its own."""
    from transformers import VipLlavaConfig, VipLlavaForConditionalGeneration

    processor = _llava_processor(texts, spec)
    tokenizer = processor.tokenizer
    config = VipLlavaConfig(
        vision_config=_clip_vision_config(spec),
        text_config=_llama_config(spec, tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(spec.image_size // spec.patch_size) ** 2,
        vision_feature_layer=[-2, -1],
    )
    return VipLlavaForConditionalGeneration(config), processor


# InternVL's ChatML with its image-context token (the processor adds <img> ... </img> around it).
INTERNVL_CHAT_TEMPLATE = CHATML_IMAGE_CHAT_TEMPLATE.replace("<image>", "<IMG_CONTEXT>")


def _build_internvl(texts: list[str], spec: TinySpec) -> tuple[torch.nn.Module, Any]:
    """InternVL (InternViT -> pixel-shuffle projector -> Qwen2): no adapter of its own."""
    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
    )

    from editors.adapters.processors import image_only

    named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
             "video_token": "<video>"}
    tokenizer = build_tokenizer(texts, ["<|im_start|>", "<|im_end|>"], spec.vocab_size, INTERNVL_CHAT_TEMPLATE,
                                named_tokens=named)
    patch = spec.patch_size // 2
    image_tokens = (spec.image_size // patch) ** 2 // 4  # pixel shuffle at downsample ratio 0.5
    processor = image_only(InternVLProcessor)(
        image_processor=GotOcr2ImageProcessorPil(size={"height": spec.image_size, "width": spec.image_size},
                                                 crop_to_patches=False, max_patches=1),
        tokenizer=tokenizer,
        image_seq_length=image_tokens,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    config = InternVLConfig(
        vision_config={**_vision_tower_config(spec, patch), "image_size": [spec.image_size] * 2,
                       "patch_size": [patch] * 2},
        text_config=_qwen2_config(spec, tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids(named["context_image_token"]),
        image_seq_length=image_tokens,
        downsample_ratio=0.5,
    )
    return InternVLForConditionalGeneration(config), processor


#: arch name (as on the command line) -> builder of (untrained model, processor)
BUILDERS: dict[str, Callable[[list[str], TinySpec], tuple[torch.nn.Module, Any]]] = {
    "llava": _build_llava,
    "blip2": _build_blip2,
    "minigpt4": lambda texts, spec: _build_blip2(texts, spec, language_model="llama"),
    "qwen2-vl": lambda texts, spec: _build_qwen_vl(texts, spec, "2"),
    "qwen2.5-vl": lambda texts, spec: _build_qwen_vl(texts, spec, "2.5"),
    "idefics3": _build_idefics3,
    "llava-next": _build_llava_next,
    "llava-onevision": _build_llava_onevision,
    "qwen3-vl": _build_qwen3_vl,
    "gemma3": _build_gemma3,
    # families served by the generic adapter (editors.adapters.generic)
    "vipllava": _build_vipllava,
    "internvl": _build_internvl,
}


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_tiny_model(
    arch: str,
    corpus_texts: Iterable[str],
    out_dir: str | Path,
    spec: TinySpec | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Build an untrained ``arch`` model whose tokenizer is trained on ``corpus_texts``; save it.

    The weights are created on ``device`` in ``dtype`` (a 7B-sized spec never exists in float32 on
    the CPU).
    """
    if arch not in BUILDERS:
        raise ValueError(f"unknown tiny architecture {arch!r}; known: {', '.join(sorted(BUILDERS))}")
    torch.manual_seed(seed)
    with torch.device(device), _default_dtype(dtype):
        model, processor = BUILDERS[arch](list(corpus_texts), spec or TinySpec())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    logger.info("built tiny %s (%.2fM parameters) in %s", arch, model.num_parameters() / 1e6, out)
    return out
