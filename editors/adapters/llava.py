"""LLaVA-1.5 (``LlavaForConditionalGeneration``: CLIP vision tower -> projector -> Llama)."""

from __future__ import annotations

from torch import nn

from editors.adapters.chat import ChatTemplateAdapter


class LlavaAdapter(ChatTemplateAdapter):
    family = "llava"
    model_types = ("llava",)

    def vision_side_module(self) -> nn.Module:
        return self.model.model.multi_modal_projector
