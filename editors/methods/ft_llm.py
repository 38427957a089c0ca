"""FT-LLM: fine-tune the MLP of the language model's last decoder layer on the edit query."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from editors.adapters.base import ModelAdapter
from editors.cases import EditCase
from editors.forward import FullForward, TopLayers
from editors.methods.base import AppliedEdit, EditMethod, MethodConfig, WeightSnapshot, answer_nll, trainable


@dataclass
class FTLLMConfig(MethodConfig):
    """Reference settings (VLKEB's FT): 10 Adam steps at lr 1e-4 on the last layer's MLP."""

    layer: int = -1
    steps: int = 10
    lr: float = 1e-4
    #: run the frozen layers below ``layer`` once per edit instead of once per step (same result)
    cache_frozen_layers: bool = True


class FTLLM(EditMethod):
    name = "ft-llm"
    config_class = FTLLMConfig
    config: FTLLMConfig

    def first_edited_layer(self, adapter: ModelAdapter) -> int | None:
        return self.config.layer

    def apply(self, adapter: ModelAdapter, case: EditCase) -> AppliedEdit:
        params = list(adapter.mlp(self.config.layer).parameters())
        snapshot = WeightSnapshot(params)
        batch = adapter.encode([case.edit_query]).to(adapter.device)
        # Layers below the edited one are frozen: their output is computed once, not per step.
        top = TopLayers(adapter, batch, self.config.layer) if self.config.cache_frozen_layers else FullForward(adapter, batch)
        with trainable(params):
            optimizer = torch.optim.Adam(params, lr=self.config.lr)
            for _ in range(self.config.steps):
                loss = answer_nll(top.logits(), batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return AppliedEdit(adapter, snapshot)
