"""FT-vision: fine-tune the vision-side module the adapter names (projector, Q-Former, ...)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from editors.adapters.base import ModelAdapter
from editors.cases import EditCase
from editors.forward import FullForward
from editors.methods.base import AppliedEdit, EditMethod, MethodConfig, WeightSnapshot, answer_nll, trainable


@dataclass
class FTVisionConfig(MethodConfig):
    """Reference settings (VLKEB's FT): 10 Adam steps at lr 1e-4."""

    steps: int = 10
    lr: float = 1e-4


class FTVision(EditMethod):
    name = "ft-vision"
    config_class = FTVisionConfig
    config: FTVisionConfig

    def apply(self, adapter: ModelAdapter, case: EditCase) -> AppliedEdit:
        params = list(adapter.vision_side_module().parameters())
        snapshot = WeightSnapshot(params)
        batch = adapter.encode([case.edit_query]).to(adapter.device)
        # Everything above the vision side depends on it, so each step runs the whole model.
        model = FullForward(adapter, batch)
        with trainable(params):
            optimizer = torch.optim.Adam(params, lr=self.config.lr)
            for _ in range(self.config.steps):
                loss = answer_nll(model.logits(), batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return AppliedEdit(adapter, snapshot)
