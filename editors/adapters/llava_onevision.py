"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``: SigLIP -> projector -> Qwen2).

LLaVA-NeXT's any-resolution tiles with a Qwen2 language model and ChatML prompts: the answer follows
``<|im_start|>assistant\\n`` directly (no space). FT-vision trains the projector, as for LLaVA.
"""

from __future__ import annotations

from editors.adapters.llava import LlavaAdapter


class LlavaOnevisionAdapter(LlavaAdapter):
    family = "llava-onevision"
    model_types = ("llava_onevision",)
    answer_prefix = ""
