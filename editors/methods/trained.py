"""The part of KE, SERAC and MEND that is about being *trained*: where the editor comes from.

:meth:`TrainedMethod.prepare` loads the editor given with ``--editor DIR`` (refusing one made for
another base model or a damaged file), else reuses the editor cached for this (base model, train
split, config) under :func:`kebench_hf.paths.cache_dir`, else trains it there once.
:class:`WeightUpdateMethod` adds what MEND and KE share: a network maps the edit's gradient to new
values of a few weights of the language model, trained on the generality and locality queries of
the train cases.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from editors.adapters.base import ModelAdapter
from editors.cases import CaseSequence, EditCase
from editors.forward import full_logits
from editors.losses import answer_accuracy, answer_nll_row_mean, locality_kl
from editors.methods.base import AppliedEdit, EditMethod, WeightSnapshot
from editors.training import (
    EDITOR_CONFIG,
    EditorFileError,
    MetaTrainingConfig,
    base_model_identity,
    check_base_model,
    edit_row,
    edited_weights,
    gradient_factors,
    in_scope_rows,
    meta_train,
    out_of_scope_rows,
    read_editor,
    save_editor,
    trained_queries,
)
from kebench_hf.paths import cache_dir

logger = logging.getLogger(__name__)


class TrainedMethod(EditMethod):
    """An editing method whose editor is trained on the train split, saved and reloaded."""

    requires_training = True
    config: MetaTrainingConfig

    def __init__(self, config: MetaTrainingConfig | None = None) -> None:
        super().__init__(config)
        self.editor_dir: Path | None = None
        self.report: dict[str, Any] = {}

    # -- what a method provides ----------------------------------------------------------------
    @abstractmethod
    def build(self, adapter: ModelAdapter) -> None:
        """Create the (untrained) editor for ``adapter``'s model from ``self.config``."""

    @abstractmethod
    def identity_weights(self, adapter: ModelAdapter) -> dict[str, torch.Tensor]:
        """The base model weights the editor depends on (they bind a saved editor to its model)."""

    @abstractmethod
    def fit(self, adapter: ModelAdapter, cases: list[EditCase], checkpoint_dir: Path) -> dict[str, Any]:
        """Train the built editor; returns a report for editor.json / run.json."""

    @abstractmethod
    def editor_tensors(self) -> dict[str, torch.Tensor]:
        """Everything learned, as named tensors."""

    @abstractmethod
    def load_editor_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`editor_tensors` (raises on missing/unexpected names or shapes)."""

    # -- where the editor comes from ---------------------------------------------------------------
    def prepare(self, adapter: ModelAdapter, train: CaseSequence, editor_dir: Path | None = None) -> None:
        if editor_dir is not None:
            self.load(adapter, Path(editor_dir))
            return
        cached = self.cache_path(adapter, train)
        if (cached / EDITOR_CONFIG).is_file():
            logger.info("%s: using the cached editor %s", self.name, cached)
            self.load(adapter, cached)
            return
        self.train(adapter, train, cached)

    def cache_path(self, adapter: ModelAdapter, train: CaseSequence) -> Path:
        """Cache directory keyed by base model identity, train split texts and config."""
        self.build(adapter)
        key = hashlib.sha256()
        key.update(json.dumps(base_model_identity(adapter, self.identity_weights(adapter)), sort_keys=True).encode())
        key.update(json.dumps(train.texts(), sort_keys=True).encode())
        key.update(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        return cache_dir() / "editors" / f"{self.name}-{key.hexdigest()[:16]}"

    def train(self, adapter: ModelAdapter, train: CaseSequence, out_dir: Path) -> dict[str, Any]:
        """Train on ``train`` and save the editor to ``out_dir`` (resuming a checkpoint found there)."""
        out_dir = Path(out_dir)
        torch.manual_seed(self.config.seed)
        self.build(adapter)
        cases = list(train)
        if not cases:
            raise ValueError(f"{self.name}: the train split is empty; nothing to train the editor on")
        checkpoint_dir = out_dir / "checkpoint"
        self.report = self.fit(adapter, cases, checkpoint_dir)
        identity = base_model_identity(adapter, self.identity_weights(adapter))
        save_editor(out_dir, self.name, self.config, self.editor_tensors(), identity, self.report)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        self.editor_dir = out_dir
        return self.report

    def load(self, adapter: ModelAdapter, editor_dir: Path) -> None:
        """Load a saved editor for ``adapter``'s model; refuses a foreign or damaged one."""
        description, tensors = read_editor(editor_dir, self.name)
        try:
            self.config = self.config_class.from_dict(description["config"])
        except (TypeError, ValueError) as error:
            raise EditorFileError(f"editor {editor_dir}: bad config in {EDITOR_CONFIG} ({error})") from None
        self.build(adapter)
        check_base_model(editor_dir, description["base_model"], base_model_identity(adapter, self.identity_weights(adapter)))
        try:
            self.load_editor_tensors(tensors)
        except (KeyError, RuntimeError, ValueError) as error:
            raise EditorFileError(f"editor {editor_dir}: tensors do not fit the {self.name} editor ({error})") from None
        self.report = description.get("report", {})
        self.editor_dir = Path(editor_dir)

    def run_info(self) -> dict[str, Any]:
        return {"editor_dir": str(self.editor_dir) if self.editor_dir else None, "training": self.report}


@dataclass
class WeightUpdateConfig(MetaTrainingConfig):
    """What MEND and KE share: which decoder layers' MLP output projections they edit, the initial
    per-layer edit learning rate (learned, with its own optimizer lr ``lr_lr``), the locality weight."""

    layers: tuple[int, ...] = (-1,)
    edit_lr: float = 1e-4
    lr_lr: float = 5e-2
    #: the reference weighs locality 10x the edit loss (MEND's cloc = 1, cedit = 0.1); on the tiny
    #: LLaVA 5x lands the edits on both generalities and still keeps T-Locality above 90
    locality_weight: float = 5.0

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)


class WeightUpdateMethod(TrainedMethod):
    """MEND and KE: a network turns the edit query's loss gradient into new values of some weights.

    Training loss (both): answer NLL of the edited model on the edit, T-Generality and I-Generality
    queries + ``locality_weight`` x KL(unedited || edited) over all positions of the text and image
    locality queries. Edits are cumulative under ``--sequential``: each is computed on the current
    (already edited) weights.
    """

    config: WeightUpdateConfig
    network: nn.Module
    weights: dict[str, nn.Parameter]

    @abstractmethod
    def weight_updates(
        self, adapter: ModelAdapter, case: EditCase, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """``{weight name: update}`` to subtract, from the edit gradient's factors (``u``, ``delta``)."""

    def build(self, adapter: ModelAdapter) -> None:
        self.weights = edited_weights(adapter, self.config.layers)
        self.network = self.build_network(adapter).to(adapter.device)

    @abstractmethod
    def build_network(self, adapter: ModelAdapter) -> nn.Module: ...

    def identity_weights(self, adapter: ModelAdapter) -> dict[str, torch.Tensor]:
        return dict(edited_weights(adapter, self.config.layers))

    def first_edited_layer(self, adapter: ModelAdapter) -> int | None:
        count = len(adapter.decoder_layers())
        return min(layer % count for layer in self.config.layers)

    def edited(self, adapter: ModelAdapter, case: EditCase, batch, rows=(0,)):
        """(new weights, unedited logits of ``batch``) for the edit on row 0 of ``batch``."""
        factors, unedited = gradient_factors(adapter, self.weights, batch, rows)
        updates = self.weight_updates(adapter, case, factors)
        return {name: weight - updates[name].to(weight.dtype) for name, weight in self.weights.items()}, unedited

    def training_loss(self, adapter: ModelAdapter, case: EditCase) -> torch.Tensor:
        batch = adapter.encode(trained_queries(case)).to(adapter.device)
        new_weights, unedited = self.edited(adapter, case, batch, (edit_row(),))
        edited = full_logits(adapter, batch, new_weights)
        return answer_nll_row_mean(edited, batch, in_scope_rows()) + self.config.locality_weight * locality_kl(
            unedited, edited, batch, out_of_scope_rows()
        )

    def validation_score(self, adapter: ModelAdapter, case: EditCase) -> float:
        """Edited answer accuracy on generality queries + top-1 agreement on locality queries."""
        batch = adapter.encode(trained_queries(case)).to(adapter.device)
        with torch.no_grad():
            new_weights, unedited = self.edited(adapter, case, batch, (edit_row(),))
            edited = full_logits(adapter, batch, new_weights)
        agreement = [
            (edited[row, batch.valid_positions[row]].argmax(-1) == unedited[row, batch.valid_positions[row]].argmax(-1))
            .float()
            .mean()
            .item()
            for row in out_of_scope_rows()
        ]
        return answer_accuracy(edited, batch, in_scope_rows()) + sum(agreement) / len(agreement)

    def fit(self, adapter: ModelAdapter, cases: list[EditCase], checkpoint_dir: Path) -> dict[str, Any]:
        return meta_train(
            self.network,
            lambda case: self.training_loss(adapter, case),
            lambda case: self.validation_score(adapter, case),
            cases,
            self.config,
            checkpoint_dir,
            description=f"training {self.name}",
            parameter_groups=self.parameter_groups(),
        )

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The per-layer edit learning rates (``network.log_lrs``) train at ``lr_lr``, the rest at ``lr``."""
        others = [p for p in self.network.parameters() if p is not self.network.log_lrs]
        return [
            {"params": others, "lr": self.config.lr},
            {"params": [self.network.log_lrs], "lr": self.config.lr_lr},
        ]

    def editor_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.network.state_dict())

    def load_editor_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        device = next(self.network.parameters()).device
        self.network.load_state_dict({k: v.to(device) for k, v in tensors.items()}, strict=True)

    def apply(self, adapter: ModelAdapter, case: EditCase) -> AppliedEdit:
        snapshot = WeightSnapshot(self.weights.values())
        batch = adapter.encode([case.edit_query]).to(adapter.device)
        with torch.no_grad():
            new_weights, _ = self.edited(adapter, case, batch)
            for name, weight in self.weights.items():
                weight.copy_(new_weights[name])
        return AppliedEdit(adapter, snapshot)
