"""LoRA: a low-rank adapter (``peft``) on the MLPs of the top decoder layers, trained on the edit.

``peft.LoraModel`` wraps every ``nn.Linear`` of ``adapter.mlp(i)`` for ``i`` in ``layers`` in place;
the base weights are never written. The adapter is trained on the edit query like FT (answer NLL,
Adam, stop below ``stop_loss``). Restoring the first edit *unloads* the adapter (``unload()``, not
``merge``): peft puts the original ``nn.Linear`` objects back, so the model is the same modules with
the same tensors as before.

Sequential edits keep training the one adapter (EasyEdit's sequential LoRA does the same): a
second adapter stacked beside the first would start from zero and leave the first one's update in
place, so the two would sum at every query; training the one adapter lets each edit adjust what the
earlier ones wrote. Each later edit snapshots the adapter's weights and restores them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from editors.adapters.base import ModelAdapter
from editors.cases import EditCase
from editors.forward import TopLayers
from editors.losses import answer_nll_token_mean
from editors.methods.base import (
    OPTIMIZERS,
    AppliedEdit,
    EditMethod,
    MethodConfig,
    WeightSnapshot,
    fine_tune,
)

ADAPTER_NAME = "kebench_edit"


@dataclass
class LoRAConfig(MethodConfig):
    """Rank 8, alpha 32, dropout 0.1 (EasyEdit ``hparams/LoRA/*.yaml``); lr 5e-3 (EasyEdit's plain-LoRA
    setting, ``llama-7b.yaml``); at most 70 Adam steps (ibid.), stopping below answer NLL ``stop_loss``
    as FT does; on every linear of the MLPs of ``layers``."""

    rank: int = 8
    alpha: float = 32.0
    dropout: float = 0.1
    steps: int = 70
    lr: float = 5e-3
    stop_loss: float | None = 0.5
    optimizer: str = "adamw"
    layers: tuple[int, ...] = (-1,)

    def __post_init__(self) -> None:
        if self.rank < 1 or self.steps < 0 or self.lr <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"lora: rank >= 1, steps >= 0, lr > 0 and 0 <= dropout < 1, got {self}")
        if not self.layers:
            raise ValueError("lora: layers must name at least one decoder layer")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")


class LoRA(EditMethod):
    name = "lora"
    config_class = LoRAConfig
    config: LoRAConfig

    def __init__(self, config: LoRAConfig | None = None) -> None:
        super().__init__(config)
        #: the injected adapter while edits are applied (None: the model is as loaded)
        self.tuner = None

    def first_edited_layer(self, adapter: ModelAdapter) -> int | None:
        count = len(adapter.decoder_layers())
        return min(layer % count for layer in self.config.layers)

    def target_modules(self, adapter: ModelAdapter) -> list[str]:
        """The full names of the linear layers inside the MLPs of ``layers``."""
        names = {id(module): name for name, module in adapter.model.named_modules()}
        targets = [
            names[id(module)]
            for layer in self.config.layers
            for module in adapter.mlp(layer).modules()
            if isinstance(module, nn.Linear)
        ]
        if not targets:
            raise ValueError(f"lora: the MLPs of layers {self.config.layers} have no nn.Linear")
        return targets

    def inject(self, adapter: ModelAdapter) -> None:
        from peft import LoraConfig, LoraModel

        config = LoraConfig(r=self.config.rank, lora_alpha=self.config.alpha, lora_dropout=self.config.dropout,
                            target_modules=self.target_modules(adapter), bias="none")
        self.tuner = LoraModel(adapter.model, config, ADAPTER_NAME)
        adapter.model.requires_grad_(False)  # peft marks its weights trainable; fine_tune enables them per edit

    def unload(self, adapter: ModelAdapter) -> None:
        """Puts the original linear layers back and drops what peft attached to the model."""
        self.tuner.unload()
        if hasattr(adapter.model, "peft_config"):
            del adapter.model.peft_config
        self.tuner = None

    def lora_parameters(self) -> list[nn.Parameter]:
        return [param for name, param in self.tuner.model.named_parameters() if ADAPTER_NAME in name]

    def lora_layers(self) -> list[nn.Module]:
        from peft.tuners.lora import LoraLayer

        return [module for module in self.tuner.model.modules() if isinstance(module, LoraLayer)]

    def apply(self, adapter: ModelAdapter, case: EditCase) -> AppliedEdit:
        if self.tuner is not None and self.tuner.model is not adapter.model:
            self.tuner = None  # injected into another model (a copy): this one starts afresh
        fresh = self.tuner is None
        if fresh:
            self.inject(adapter)
        params = self.lora_parameters()
        edit = LoRAEdit(self, adapter, None if fresh else WeightSnapshot(params))
        try:
            batch = adapter.encode([case.edit_query]).to(adapter.device)
            model = TopLayers(adapter, batch, self.first_edited_layer(adapter))
            del model.initial_logits
            layers = self.lora_layers()
            for layer in layers:
                layer.train()  # the adapter's dropout acts while it trains, as in EasyEdit
            try:
                fine_tune(params, lambda: answer_nll_token_mean(model.logits(), batch), self.config.steps, self.config.lr,
                          self.config.stop_loss, self.config.optimizer)
            finally:
                for layer in layers:
                    layer.eval()
        except BaseException:
            edit.restore()
            raise
        return edit


class LoRAEdit(AppliedEdit):
    """The model with the adapter as this edit left it; restoring the first edit unloads the adapter,
    a later one puts the adapter's weights back as they were before it."""

    def __init__(self, method: LoRA, adapter: ModelAdapter, snapshot: WeightSnapshot | None) -> None:
        super().__init__(adapter, snapshot)
        self.method = method

    @torch.no_grad()
    def restore(self) -> None:
        if self.snapshot is None:
            self.method.unload(self.adapter)
        else:
            self.snapshot.restore()
