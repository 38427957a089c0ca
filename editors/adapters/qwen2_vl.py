"""Qwen2-VL and Qwen2.5-VL (``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VLForConditionalGeneration``).

ChatML prompts; the answer follows ``<|im_start|>assistant\\n`` directly (no space). Position ids
are M-RoPE, computed from the whole sequence (image grid included), so a shared context prefix
cannot be run once and reused: ``supports_prefix_cache = False``. FT-vision trains the last
block of the vision transformer, as in the paper's Qwen-VL setup.

The real processor class also holds a video processor, which needs torchvision; where that does
not import, the processor is loaded as :class:`ImageOnlyQwen2VLProcessor` (same text and image
processing, no video).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, ProcessorMixin, Qwen2VLProcessor
from transformers.utils import is_torchvision_available

from editors.adapters.chat import ChatTemplateAdapter


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """:class:`Qwen2VLProcessor` without the video processor (so without torchvision)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None,
                 **kwargs: Any) -> None:
        self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
        self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> Any:
        """Saved as the real ``Qwen2VLProcessor``, so that ``AutoProcessor`` loads it where it can."""
        result = super().save_pretrained(save_directory, **kwargs)
        config_path = Path(save_directory) / "processor_config.json"
        config = json.loads(config_path.read_text())
        config["processor_class"] = Qwen2VLProcessor.__name__
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        return result


class Qwen2VLAdapter(ChatTemplateAdapter):
    family = "qwen2-vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")
    supports_prefix_cache = False
    answer_prefix = ""

    @classmethod
    def load_processor(cls, source: str, trust_remote_code: bool = False) -> Any:
        if is_torchvision_available():
            return AutoProcessor.from_pretrained(source)
        chat_template = None
        template_path = Path(source) / "chat_template.jinja"
        if template_path.exists():
            chat_template = template_path.read_text()
        tokenizer = AutoTokenizer.from_pretrained(source)
        return ImageOnlyQwen2VLProcessor(
            AutoImageProcessor.from_pretrained(source), tokenizer, chat_template=chat_template or tokenizer.chat_template
        )

    def image_tokens(self) -> int:
        """Dynamic resolution: a 448 x 448 image (the patch grid, merged ``spatial_merge_size``^2 to one)."""
        vision = self.model.config.vision_config
        return (448 // vision.patch_size) ** 2 // vision.spatial_merge_size**2

    def vision_side_module(self) -> nn.Module:
        return self.model.model.visual.blocks[-1]

    def image_placeholder(self) -> str:
        return f"<|vision_start|>{self.processor.image_token}<|vision_end|>"

    def reference_row(self, text: str, image_ids: list[int] | None) -> list[int]:
        """Qwen-VL's ``tok(f"Picture 1: <img>{path}</img>\\n{text}")`` (``coco_caption.py``), with this
        family's vision start/end tokens for ``<img>``/``</img>``; text only: ``tok(text)``. The whole
        string goes through the tokenizer, so its special tokens (a BOS, where it adds one) are where
        the reference's are; the image's tokens (start, pads, end) then replace the two markers."""
        if image_ids is None:
            return self.tokenizer(text)["input_ids"]
        start, end = "<|vision_start|>", "<|vision_end|>"
        ids = self.tokenizer(f"Picture 1: {start}{end}\n{text}")["input_ids"]
        at = ids.index(self.tokenizer.convert_tokens_to_ids(start))
        return ids[:at] + image_ids + ids[at + 2 :]

    def reference_mlp_parameters(self, layer: int) -> list[nn.Parameter]:
        """Qwen-VL's reference FT trains the whole MLP (``w1``, ``w2``, ``c_proj``): here gate, up, down."""
        mlp = self.mlp(layer)
        return [mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight]

    def reference_vision_parameters(self) -> list[nn.Parameter]:
        """Qwen-VL's reference FT-vision trains the last vision block's MLP (weights and biases)."""
        return list(self.vision_side_module().mlp.parameters())
