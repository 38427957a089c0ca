"""FT-LLM: fine-tune the MLP of the language model's last decoder layer on the edit query."""

from __future__ import annotations

from dataclasses import dataclass

from editors.adapters.base import ModelAdapter
from editors.cases import EditCase
from editors.forward import FullForward, TopLayers
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
class FTLLMConfig(MethodConfig):
    """Reference settings (VLKEB's FT): at most 10 Adam steps at lr 1e-4 on the last layer's MLP.

    The reference lr is for LLaVA-1.5-7B, whose MLP's widest input is 11008 features. An Adam step
    moves every weight by about lr, so its effect on the output grows with the input width: the lr
    applied is ``lr * reference_width / width`` (None: ``lr`` as is), the reference's on a 7B
    model and proportionally larger on a narrow one. Training stops once the edit's mean answer
    NLL is below ``stop_loss`` (the reference stops at 0.01; 0.5 already makes the new answer the
    top token and changes far less, see the README).
    """

    layer: int = -1
    steps: int = 10
    lr: float = 1e-4
    reference_width: int | None = 11008
    stop_loss: float = 0.5
    #: run the frozen layers below ``layer`` once per edit instead of once per step (same result)
    cache_frozen_layers: bool = True


class FTLLM(EditMethod):
    name = "ft-llm"
    config_class = FTLLMConfig
    config: FTLLMConfig

    def first_edited_layer(self, adapter: ModelAdapter) -> int | None:
        return self.config.layer

    def apply(self, adapter: ModelAdapter, case: EditCase) -> AppliedEdit:
        module = adapter.mlp(self.config.layer)
        params = list(module.parameters())
        snapshot = WeightSnapshot(params)
        batch = adapter.encode([case.edit_query]).to(adapter.device)
        # Layers below the edited one are frozen: their output is computed once, not per step.
        if self.config.cache_frozen_layers:
            model = TopLayers(adapter, batch, self.config.layer)
            del model.initial_logits
        else:
            model = FullForward(adapter, batch)
        lr = self.config.lr
        if self.config.reference_width:
            lr *= self.config.reference_width / input_width(module)
        fine_tune(params, lambda: answer_nll(model.logits(), batch), self.config.steps, lr, self.config.stop_loss)
        return AppliedEdit(adapter, snapshot)
