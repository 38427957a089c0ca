"""FT-vision: fine-tune the vision-side module the adapter names (projector, Q-Former, ...)."""

from __future__ import annotations

from dataclasses import dataclass

from editors.adapters.base import ModelAdapter
from editors.cases import EditCase
from editors.forward import FullForward
from editors.methods.base import (
    AppliedEdit,
    EditMethod,
    MethodConfig,
    WeightSnapshot,
    answer_nll,
    fine_tune,
    input_width,
)


@dataclass
class FTVisionConfig(MethodConfig):
    """Reference settings (VLKEB's FT): at most 10 Adam steps at lr 1e-4.

    As for FT-LLM, the lr is scaled by ``reference_width / width`` of the trained module's widest
    input; the reference width is LLaVA-1.5-7B's projector (4096), and training stops below
    ``stop_loss``.
    """

    steps: int = 10
    lr: float = 1e-4
    reference_width: int | None = 4096
    stop_loss: float = 0.5


class FTVision(EditMethod):
    name = "ft-vision"
    config_class = FTVisionConfig
    config: FTVisionConfig

    def apply(self, adapter: ModelAdapter, case: EditCase) -> AppliedEdit:
        module = adapter.vision_side_module()
        params = list(module.parameters())
        snapshot = WeightSnapshot(params)
        batch = adapter.encode([case.edit_query]).to(adapter.device)
        # Everything above the vision side depends on it, so each step runs the whole model.
        model = FullForward(adapter, batch)
        lr = self.config.lr
        if self.config.reference_width:
            lr *= self.config.reference_width / input_width(module)
        fine_tune(params, lambda: answer_nll(model.logits(), batch), self.config.steps, lr, self.config.stop_loss)
        return AppliedEdit(adapter, snapshot)
