"""GRACE (Hartvigsen et al., NeurIPS 2023): a key-value codebook at one layer, with deferral radii.

A forward hook on the output projection of ``adapter.mlp(layer)`` reads each token's input to it (the
*query*) and looks up the nearest *key* in the codebook: when the query lies within that key's
deferral radius, the projection's output at that token is replaced by the key's *value*; every other
token's output is left exactly as it was. No weight of the model is changed.

An edit adds keys from the edit query's hidden states: the last prompt token's (the paper's key),
and, so that an answer of several tokens can be made, the positions predicting the answer's further
tokens (each labelled with the token it predicts). For each new key, as in the paper: no key of the
codebook within its radius plus ``epsilon`` -> a new entry of radius ``epsilon``; the nearest key
has the same label -> that key's radius grows to cover the new one (no new entry); a different
label -> a new entry, and both radii become half their distance, so the two never overlap. The new
entries' values are then trained (Adam at ``lr``, at most ``steps`` steps) to make the target
likely. Distances are relative, ``|query - key| / |key|``, so one ``epsilon`` fits every model width.

Sequential by nature: the codebook grows with the edits. Restoring an edit truncates the codebook to
its size before the edit and puts the radii back; restoring the first removes the hook.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from editors.adapters.base import ModelAdapter
from editors.cases import EditCase
from editors.forward import TopLayers
from editors.losses import answer_nll_token_mean
from editors.methods.base import AppliedEdit, EditMethod, MethodConfig, fine_tune
from editors.training import mlp_output_projection


@dataclass
class GRACEConfig(MethodConfig):
    """EasyEdit ``hparams/GRACE/llavaov-7b.yaml``: edit lr 1.0 with Adam, cold (random) value init,
    coverage expansion; ``epsilon`` is relative here (see the module doc); ``layer`` counts from the
    top (EasyEdit: layer 18 of 28). At most 100 steps, the paper's and EasyEdit's text-model files'
    ``n_iter`` (``llama-7B.yaml``), not the multimodal files' 20: values stop at ``stop_loss``, and 20
    left a third of the answer tokens of names the model never saw unmade (docs/methods.md)."""

    layer: int = -2
    epsilon: float = 0.05
    steps: int = 100
    lr: float = 1.0
    stop_loss: float | None = 0.01

    def __post_init__(self) -> None:
        if self.epsilon <= 0 or self.steps < 0 or self.lr <= 0:
            raise ValueError(f"grace: epsilon > 0, steps >= 0 and lr > 0, got {self}")


class Codebook:
    """Keys (float32), values, radii and labels, and the hook that reads them."""

    def __init__(self, linear: nn.Linear) -> None:
        self.linear = linear
        device = linear.weight.device
        self.keys = torch.empty(0, linear.in_features, device=device)
        self.values = torch.empty(0, linear.out_features, device=device)
        self.radii = torch.empty(0, device=device)
        self.labels: list[int] = []
        #: values being trained by the current edit, appended after ``values``
        self.training: torch.Tensor | None = None
        self.hook = linear.register_forward_hook(self.replace)

    def __len__(self) -> int:
        return len(self.keys)

    def all_values(self) -> torch.Tensor:
        return self.values if self.training is None else torch.cat([self.values, self.training])

    def distances(self, queries: torch.Tensor) -> torch.Tensor:
        """``(len(queries), len(self))`` relative distances ``|q - k| / |k|``."""
        return torch.cdist(queries.float(), self.keys) / self.keys.norm(dim=-1).clamp_min(1e-6)

    def replace(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not len(self):
            return output
        queries = args[0].reshape(-1, args[0].shape[-1])
        nearest = self.distances(queries).min(dim=-1)
        inside = nearest.values <= self.radii[nearest.indices]
        if not inside.any():
            return output
        flat = output.reshape(-1, output.shape[-1])
        replaced = torch.where(inside[:, None], self.all_values()[nearest.indices].to(flat.dtype), flat)
        return replaced.view_as(output)

    def remove(self) -> None:
        self.hook.remove()


class GRACE(EditMethod):
    name = "grace"
    config_class = GRACEConfig
    config: GRACEConfig

    def __init__(self, config: GRACEConfig | None = None) -> None:
        super().__init__(config)
        self.codebook: Codebook | None = None

    def first_edited_layer(self, adapter: ModelAdapter) -> int | None:
        return self.config.layer

    def apply(self, adapter: ModelAdapter, case: EditCase) -> AppliedEdit:
        linear = mlp_output_projection(adapter.mlp(self.config.layer))
        if self.codebook is not None and self.codebook.linear is not linear:
            self.codebook.remove()  # the codebook of another model (a copy): this one starts afresh
            self.codebook = None
        if self.codebook is None:
            self.codebook = Codebook(linear)
        codebook = self.codebook
        edit = CodebookEdit(self, adapter, len(codebook), codebook.radii.clone())
        try:
            batch = adapter.encode([case.edit_query]).to(adapter.device)
            model = TopLayers(adapter, batch, self.config.layer)
            del model.initial_logits
            queries = self.edit_queries(linear, model, batch.answer_slices[0])
            new = self.add_keys(queries, batch.target_ids[0])
            if new:
                codebook.training = torch.rand(new, linear.out_features, device=codebook.keys.device)
                fine_tune([codebook.training], lambda: answer_nll_token_mean(model.logits(), batch), self.config.steps,
                          self.config.lr, self.config.stop_loss)
                codebook.values = torch.cat([codebook.values, codebook.training.detach()])
        except BaseException:
            codebook.training = None
            edit.restore()
            raise
        finally:
            codebook.training = None
        return edit

    @staticmethod
    def edit_queries(linear: nn.Linear, model: TopLayers, positions: slice) -> torch.Tensor:
        """The inputs of ``linear`` at ``positions`` of the edit query (one forward, the model as it is)."""
        seen: list[torch.Tensor] = []
        hook = linear.register_forward_hook(lambda module, args, output: seen.append(args[0].detach()))
        try:
            with torch.no_grad():
                model.logits()
        finally:
            hook.remove()
        # one row; some families (OPT) flatten the tokens before their MLP: (1, T, D) and (T, D) alike
        return seen[0].reshape(-1, seen[0].shape[-1])[positions].float()

    def add_keys(self, queries: torch.Tensor, labels: list[int]) -> int:
        """The paper's codebook update for each query; returns how many new entries need values."""
        codebook, epsilon = self.codebook, self.config.epsilon
        added = 0
        for query, label in zip(queries, labels, strict=True):
            if len(codebook):
                distance, nearest = (value.item() for value in codebook.distances(query[None])[0].min(dim=0))
                if distance <= codebook.radii[nearest].item() + epsilon:
                    if codebook.labels[nearest] == label:
                        codebook.radii[nearest] = max(codebook.radii[nearest].item(), distance)
                        continue
                    codebook.radii[nearest] = distance / 2 - 1e-6
                    radius = distance / 2
                else:
                    radius = epsilon
            else:
                radius = epsilon
            codebook.keys = torch.cat([codebook.keys, query[None]])
            codebook.radii = torch.cat([codebook.radii, codebook.radii.new_tensor([radius])])
            codebook.labels.append(label)
            added += 1
        return added


class CodebookEdit(AppliedEdit):
    """The model with the codebook as this edit left it; restoring truncates it to its size before."""

    def __init__(self, method: GRACE, adapter: ModelAdapter, size: int, radii: torch.Tensor) -> None:
        super().__init__(adapter)
        self.method, self.size, self.radii = method, size, radii

    def restore(self) -> None:
        codebook = self.method.codebook
        if self.size == 0:
            codebook.remove()
            self.method.codebook = None
            return
        codebook.keys, codebook.values = codebook.keys[: self.size], codebook.values[: self.size]
        codebook.radii, codebook.labels = self.radii, codebook.labels[: self.size]
