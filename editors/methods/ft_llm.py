"""FT-LLM: fine-tune the MLP of the language model's last decoder layer on the edit query."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from editors.adapters.base import EncodedBatch, ModelAdapter
from editors.forward import FullForward, TopLayers
from editors.methods.base import FineTuneConfig, FineTuneMethod


@dataclass
class FTLLMConfig(FineTuneConfig):
    """FT on the last layer's MLP; the reference width is LLaVA-1.5-7B's widest MLP input (11008)."""

    reference_width: int | None = 11008
    layer: int = -1
    #: run the frozen layers below ``layer`` once per edit instead of once per step (same result)
    cache_frozen_layers: bool = True


class FTLLM(FineTuneMethod):
    name = "ft-llm"
    config_class = FTLLMConfig
    config: FTLLMConfig

    def first_edited_layer(self, adapter: ModelAdapter) -> int | None:
        return self.config.layer

    def trained_module(self, adapter: ModelAdapter) -> nn.Module:
        return adapter.mlp(self.config.layer)

    def reference_parameters(self, adapter: ModelAdapter) -> list[nn.Parameter]:
        return adapter.reference_mlp_parameters(self.config.layer)

    def edit_forward(self, adapter: ModelAdapter, batch: EncodedBatch) -> FullForward | TopLayers:
        if not self.config.cache_frozen_layers:
            return FullForward(adapter, batch)
        # Layers below the edited one are frozen: their output is computed once, not per step.
        model = TopLayers(adapter, batch, self.config.layer)
        del model.initial_logits
        return model
