"""MEND (Mitchell et al., 2022): a learned low-rank transform of the edit gradient.

For each edited weight ``W`` (default: the MLP output projection — ``down_proj``/``fc2``, found by
shape — of the last 3 decoder layers of the language model) the gradient of the edit loss is
``delta.T @ u``, one rank-1 term per token: ``u`` the layer's inputs, ``delta`` the loss gradient at
its output. A small network per weight maps each token's ``(u, delta)`` to ``(u', delta')`` and the
edit is ``W <- W - lr_W * delta'.T @ u'`` with a learned per-layer edit learning rate ``lr_W``
(initialised at the reference's 1e-4). The network starts as the identity (plain gradient step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from editors.adapters.base import ModelAdapter
from editors.cases import EditCase
from editors.methods.trained import WeightUpdateConfig, WeightUpdateMethod


@dataclass
class MENDConfig(WeightUpdateConfig):
    """Reference settings: last 3 MLPs, edit lr 1e-4 (learned per layer), NLL + KL-locality loss."""

    layers: tuple[int, ...] = (-3, -2, -1)
    rank: int = 128


def _unit_rms(tensor: torch.Tensor) -> torch.Tensor:
    return tensor / tensor.pow(2).mean().sqrt().clamp_min(1e-12)


class GradientTransform(nn.Module):
    """Maps the rank-1 factors of one weight's gradient, token by token; identity at initialisation."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.split = (in_features, out_features)
        self.down = nn.Linear(in_features + out_features, rank)
        self.up = nn.Linear(rank, in_features + out_features)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, u: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Gradients are tiny and their scale varies per edit; the learned lr sets the step size.
        factors = torch.cat([_unit_rms(u), _unit_rms(delta)], dim=-1)
        factors = factors + self.up(F.relu(self.down(factors)))
        u_new, delta_new = factors.split(self.split, dim=-1)
        return u_new, delta_new


class MENDNetwork(nn.Module):
    def __init__(self, shapes: dict[str, torch.Size], rank: int, edit_lr: float) -> None:
        super().__init__()
        self.names = list(shapes)
        self.transforms = nn.ModuleList(GradientTransform(shape[1], shape[0], rank) for shape in shapes.values())
        self.log_lrs = nn.Parameter(torch.full((len(shapes),), math.log(edit_lr)))

    def forward(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        updates = {}
        for index, name in enumerate(self.names):
            u, delta = self.transforms[index](*factors[name])
            updates[name] = self.log_lrs[index].exp() * delta.T @ u
        return updates


class MEND(WeightUpdateMethod):
    name = "mend"
    config_class = MENDConfig
    config: MENDConfig

    def build_network(self, adapter: ModelAdapter) -> nn.Module:
        shapes = {name: weight.shape for name, weight in self.weights.items()}
        return MENDNetwork(shapes, self.config.rank, self.config.edit_lr)

    def weight_updates(
        self, adapter: ModelAdapter, case: EditCase, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        return self.network(factors)
