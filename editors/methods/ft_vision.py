"""FT-vision: fine-tune the vision-side module the adapter names (projector, Q-Former, ...)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from editors.adapters.base import EncodedBatch, ModelAdapter
from editors.forward import FullForward
from editors.methods.base import FineTuneConfig, FineTuneMethod


@dataclass
class FTVisionConfig(FineTuneConfig):
    """FT on the vision side; the reference width is LLaVA-1.5-7B's projector input (4096)."""

    reference_width: int | None = 4096


class FTVision(FineTuneMethod):
    name = "ft-vision"
    config_class = FTVisionConfig
    config: FTVisionConfig
    edits_through_image = True

    def trained_module(self, adapter: ModelAdapter) -> nn.Module:
        return adapter.vision_side_module()

    def reference_parameters(self, adapter: ModelAdapter) -> list[nn.Parameter]:
        return adapter.reference_vision_parameters()

    def edit_forward(self, adapter: ModelAdapter, batch: EncodedBatch) -> FullForward:
        # Everything above the vision side depends on it, so each step runs the whole model.
        return FullForward(adapter, batch)
