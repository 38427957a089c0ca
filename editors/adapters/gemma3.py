"""Gemma 3 (``Gemma3ForConditionalGeneration``: SigLIP -> pooling projector -> Gemma 3 text model).

Turn prompts (``<start_of_turn>user\\n...<end_of_turn>\\n<start_of_turn>model\\n``, the answer right
after); images nested per prompt. Image tokens attend to each other both ways, which the model reads
from ``token_type_ids``, rebuilt for the assembled rows; the model reads them from the start of the
sequence, so a row cannot continue over a shared context's KV cache (``supports_prefix_cache =
False``). FT-vision trains the last SigLIP layer, as the paper's Qwen-VL setup trains the last
vision block: Gemma 3's projector is a bare matrix (no linear layer to scale FT's learning rate by).
"""

from __future__ import annotations

import torch
from torch import nn

from editors.adapters.chat import ChatTemplateAdapter


class Gemma3Adapter(ChatTemplateAdapter):
    family = "gemma3"
    model_types = ("gemma3",)
    answer_prefix = ""
    images_per_prompt = True
    supports_prefix_cache = False

    def per_token_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = super().per_token_inputs(input_ids, attention_mask)
        inputs["token_type_ids"] = inputs.pop("mm_token_type_ids").long()
        return inputs

    def vision_side_module(self) -> nn.Module:
        return self.model.model.vision_tower.encoder.layers[-1]
