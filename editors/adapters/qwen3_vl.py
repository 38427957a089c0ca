"""Qwen3-VL (``Qwen3VLForConditionalGeneration``: ViT with DeepStack mergers -> Qwen3 text model).

Qwen2-VL's ChatML prompts, vision tokens and interleaved M-RoPE positions (so no KV-prefix reuse);
FT-vision trains the last vision block, and the reference's FT parameters are Qwen2-VL's.
"""

from __future__ import annotations

from typing import Any

from editors.adapters.processors import load_processor
from editors.adapters.qwen2_vl import Qwen2VLAdapter


class Qwen3VLAdapter(Qwen2VLAdapter):
    family = "qwen3-vl"
    model_types = ("qwen3_vl",)

    @classmethod
    def load_processor(cls, source: str, trust_remote_code: bool = False) -> Any:
        return load_processor(source)
