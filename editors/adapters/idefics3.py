"""Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration``: SigLIP -> pixel-shuffle connector -> Llama).

The processor takes images nested per prompt (an empty list for a text-only query). FT-vision
trains the connector (pixel shuffle + projection into the language model), the counterpart of
LLaVA's projector.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from editors.adapters.base import Query
from editors.adapters.chat import ChatTemplateAdapter


class Idefics3Adapter(ChatTemplateAdapter):
    family = "idefics3"
    model_types = ("idefics3", "smolvlm")

    def processor_images(self, queries: list[Query]) -> Any:
        if all(query.image is None for query in queries):
            return None
        return [[query.image.convert("RGB")] if query.image is not None else [] for query in queries]

    def language_model(self) -> nn.Module:
        return self.model.model.text_model

    def vision_side_module(self) -> nn.Module:
        return self.model.model.connector
