"""Knowledge Editor (De Cao et al., 2021): a hypernetwork conditioned on the edit's meaning.

The condition ``"{pred} >> {alt} || {src}"`` is read by a small bi-LSTM over the base model's own
(frozen) input embeddings of its tokens. From its mean-pooled state the hypernetwork predicts, per
edited weight (default: the MLP output projection of the last decoder layer), a rank-1 gate
``alpha = a_out a_in^T`` on the (normalised) edit gradient, a rank-1 shift ``beta = b_out b_in^T``
and a step size ``eta``: ``W <- W - lr_W * sigmoid(eta) * (alpha * grad + beta)``, ``lr_W`` learned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from editors.adapters.base import ModelAdapter, Query
from editors.cases import EditCase
from editors.methods.trained import WeightUpdateConfig, WeightUpdateMethod
from editors.training import edit_condition


@dataclass
class KEConfig(WeightUpdateConfig):
    """Last LM layer's MLP, bi-LSTM condition encoder; same training objective as MEND."""

    layers: tuple[int, ...] = (-1,)
    hidden_size: int = 128
    #: one edited layer has less room than MEND's three: a lighter locality term lets edits land
    locality_weight: float = 3.0


class KnowledgeEditorNetwork(nn.Module):
    def __init__(self, shapes: dict[str, torch.Size], embedding_size: int, hidden_size: int, edit_lr: float) -> None:
        super().__init__()
        self.names = list(shapes)
        self.shapes = [tuple(shape) for shape in shapes.values()]
        self.encoder = nn.LSTM(embedding_size, hidden_size, batch_first=True, bidirectional=True)
        self.heads = nn.ModuleList(
            nn.Linear(2 * hidden_size, 2 * (rows + columns) + 1) for rows, columns in self.shapes
        )
        for head in self.heads:
            # start as a plain gradient step: alpha = 1, beta = 0, sigmoid(eta) = 1/2
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.log_lrs = nn.Parameter(torch.full((len(shapes),), math.log(edit_lr)))

    def forward(
        self, condition: torch.Tensor, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        state = self.encoder(condition)[0].mean(dim=1).squeeze(0)
        updates = {}
        for index, (name, (rows, columns)) in enumerate(zip(self.names, self.shapes, strict=True)):
            a_out, a_in, b_out, b_in, eta = self.heads[index](state).split([rows, columns, rows, columns, 1])
            u, delta = factors[name]
            gradient = delta.T @ u
            gradient = gradient / gradient.pow(2).mean().sqrt().clamp_min(1e-12)
            alpha = torch.outer(1 + a_out, 1 + a_in)
            beta = torch.outer(b_out, b_in)
            updates[name] = self.log_lrs[index].exp() * 2 * torch.sigmoid(eta) * (alpha * gradient + beta)
        return updates


class KE(WeightUpdateMethod):
    name = "ke"
    config_class = KEConfig
    config: KEConfig

    def build_network(self, adapter: ModelAdapter) -> nn.Module:
        shapes = {name: weight.shape for name, weight in self.weights.items()}
        embedding_size = adapter.input_embeddings().embedding_dim
        return KnowledgeEditorNetwork(shapes, embedding_size, self.config.hidden_size, self.config.edit_lr)

    def condition_embeddings(self, adapter: ModelAdapter, case: EditCase) -> torch.Tensor:
        """The condition's tokens, as the adapter encodes a text-only query, embedded by the model."""
        batch = adapter.encode([Query(edit_condition(case), case.alt)]).to(adapter.device)
        tokens = batch.inputs["input_ids"][:, : batch.valid_positions[0].stop + 1]
        with torch.no_grad():
            return adapter.input_embeddings()(tokens).float()

    def weight_updates(
        self, adapter: ModelAdapter, case: EditCase, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        return self.network(self.condition_embeddings(adapter, case), factors)
