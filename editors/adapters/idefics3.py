"""Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration``: SigLIP -> pixel-shuffle connector -> Llama).

The processor takes images nested per prompt (an empty list for a text-only query). FT-vision
trains the connector (pixel shuffle + projection into the language model), the counterpart of
LLaVA's projector.
"""

from __future__ import annotations

from torch import nn

from editors.adapters.chat import ChatTemplateAdapter


class Idefics3Adapter(ChatTemplateAdapter):
    family = "idefics3"
    model_types = ("idefics3", "smolvlm")
    images_per_prompt = True

    def language_model(self) -> nn.Module:
        return self.model.model.text_model

    def vision_side_module(self) -> nn.Module:
        return self.model.model.connector
