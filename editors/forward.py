"""Batched forward passes and what the engine reads from them.

Two savings live here, both exact (same logits as a plain forward):

* a batch whose rows start with the same tokens (the queries of one case under one in-context
  prompt) runs that shared prefix once and reuses its KV cache for every row;
* :class:`TopLayers` runs one full forward, keeps the inputs of the decoder layers from a given
  layer up, and afterwards re-runs only those layers + the head (an optimisation step of a method
  that edits the top of the language model never pays for the frozen layers below).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from editors.adapters.base import EncodedBatch, ModelAdapter, Query
from editors.losses import token_accuracy

#: forward inputs with one value per token (sliced when a prefix comes from the KV cache)
_PER_TOKEN_INPUTS = ("input_ids", "token_type_ids", "mm_token_type_ids", "position_ids")


@dataclass
class Readout:
    """What scoring needs from one query's logits (kept on the CPU, small).

    ``answer_argmax[j]`` is the top-1 token at the position predicting answer token ``j``;
    ``topk`` is ``(n_positions, k)`` top-k token ids over the compared positions (``k = 0``:
    not kept).
    """

    answer_argmax: list[int]
    target_ids: list[int]
    topk: torch.Tensor
    #: ``[start, end)`` of the answer-predicting positions, counted from the first valid position
    answer_span: tuple[int, int]

    @property
    def answer_accuracy(self) -> float:
        return token_accuracy(self.answer_argmax, self.target_ids)


def shared_prefix_length(adapter: ModelAdapter, batch: EncodedBatch) -> int:
    """How many leading positions all rows share and no readout needs (0: run everything): up to
    the first valid position, where every choice of :func:`compared_positions` starts at the earliest."""
    ids = batch.inputs["input_ids"]
    if ids.shape[0] < 2 or not adapter.supports_prefix_cache:
        return 0
    length = min(valid.start for valid in batch.valid_positions)
    # image tokens share ids, not content: a batch may bound its shareable prefix (see the adapters)
    length = min(length, batch.extra.get("shared_prefix_limit", length))
    if length == 0:
        return 0
    differs = (ids[:, :length] != ids[:1, :length]).any(dim=0).nonzero()
    return int(differs[0]) if len(differs) else length


def prefix_then_rows(
    adapter: ModelAdapter, batch: EncodedBatch, prefix: int, keep_prefix_logits: bool = False
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Run the first ``prefix`` positions, which all rows share, once; then every row's rest over
    their KV cache. ``(the prefix's logits (1, prefix, vocab) or None, the rest's logits)``; with
    gradients when enabled (pretraining's in-context batches)."""
    inputs = batch.inputs
    rows = inputs["input_ids"].shape[0]
    head = adapter.model(
        input_ids=inputs["input_ids"][:1, :prefix],
        attention_mask=inputs["attention_mask"][:1, :prefix],
        use_cache=True,
        logits_to_keep=0 if keep_prefix_logits else 1,  # 1: only its KV cache is used
    )
    cache = head.cache
    cache.batch_repeat_interleave(rows)
    rest: dict[str, Any] = {
        key: value[:, prefix:] if key in _PER_TOKEN_INPUTS else value for key, value in inputs.items()
    }
    return head.logits if keep_prefix_logits else None, adapter.model(**rest, cache=cache, use_cache=True).logits


def full_logits(adapter: ModelAdapter, batch: EncodedBatch, weights: Mapping[str, torch.Tensor] | None = None
                ) -> torch.Tensor:
    """``(rows, positions, vocab)``: the logits of every position of ``batch``, in one plain forward;
    ``weights`` (``{parameter name: tensor}``) replace some of the model's functionally, nothing changed
    in place (the trained editors' differentiable edits)."""
    if not weights:
        return adapter.model(**batch.inputs, use_cache=False).logits
    inputs = {**batch.inputs, "use_cache": False}
    return torch.func.functional_call(adapter.model, dict(weights), args=(), kwargs=inputs).logits


def model_logits(adapter: ModelAdapter, batch: EncodedBatch) -> tuple[torch.Tensor, int]:
    """``(logits, offset)``: logits of positions ``offset..`` of every row of ``batch``, a prefix all
    rows share run once (:func:`full_logits`' values, at a fraction of the cost)."""
    prefix = shared_prefix_length(adapter, batch)
    if prefix == 0:
        return full_logits(adapter, batch), 0
    return prefix_then_rows(adapter, batch, prefix)[1], prefix


def compared_positions(batch: EncodedBatch, row: int, positions: str = "all_but_last") -> slice:
    """The positions of ``row`` whose top-k the token-protocol locality compares, by the query
    spec's named choice (:data:`editors.presets.POSITIONS`): ``all_but_last`` the valid positions,
    ``all`` those and the row's last one (the reference's trainer path takes the top-k of every
    logits position), ``answer`` the positions predicting the answer (the reference's IKE)."""
    valid, answer = batch.valid_positions[row], batch.answer_slices[row]
    if positions == "all_but_last":
        return valid
    if positions == "all":
        return slice(valid.start, valid.stop + 1)
    if positions == "answer":
        return answer
    raise ValueError(f"unknown locality positions {positions!r}")


def readouts(logits: torch.Tensor, offset: int, batch: EncodedBatch, topk: list[int],
             positions: list[str] | None = None) -> list[Readout]:
    """Per-row :class:`Readout` from ``logits`` (positions from ``offset``); ``positions[row]``
    names the positions row ``row``'s top-k is kept over (None: ``all_but_last`` for every row)."""
    result = []
    for row, (answer, targets, k) in enumerate(zip(batch.answer_slices, batch.target_ids, topk, strict=True)):
        compared = compared_positions(batch, row, positions[row] if positions else "all_but_last")
        argmax = logits[row, answer.start - offset : answer.stop - offset].argmax(dim=-1).tolist()
        if k:
            top = logits[row, compared.start - offset : compared.stop - offset].float().topk(k, dim=-1).indices.cpu()
        else:
            top = torch.empty(0, 0, dtype=torch.long)
        result.append(Readout(argmax, list(targets), top, (answer.start - compared.start, answer.stop - compared.start)))
    return result


@torch.no_grad()
def score_queries(adapter: ModelAdapter, queries: list[Query], topk: list[int],
                  positions: list[str] | None = None) -> list[Readout]:
    """Teacher-forced readouts of ``queries`` in one batched forward (``positions``: see :func:`readouts`)."""
    batch = adapter.encode(queries).to(adapter.device)
    logits, offset = model_logits(adapter, batch)
    return readouts(logits, offset, batch, topk, positions)


class TopLayers:
    """The top of the language model, re-runnable from inputs captured in one full forward.

    ``TopLayers(adapter, batch, first_layer)`` runs the model once (no gradients) and records
    the positional and keyword inputs of ``decoder_layers()[first_layer:]``; :meth:`logits` then
    recomputes those layers from the recorded input of the first one, followed by the head, with
    gradients flowing into whatever parameters of those layers are trainable.

    Valid for as long as nothing below ``first_layer`` changes: the engine also uses it to score a
    case after an edit confined to the top layers, from the inputs captured in its pre-edit pass.
    ``initial_logits`` holds the capturing forward's logits (the model as it was then).
    """

    def __init__(self, adapter: ModelAdapter, batch: EncodedBatch, first_layer: int) -> None:
        self.adapter = adapter
        layers = adapter.decoder_layers()
        self.first = first_layer % len(layers)
        self.layers = list(layers)[self.first :]
        self.calls: list[tuple[tuple, dict]] = []
        hooks = [
            layer.register_forward_pre_hook(self._record, with_kwargs=True) for layer in self.layers
        ]
        try:
            with torch.no_grad():
                self.initial_logits = full_logits(adapter, batch)
        finally:
            for hook in hooks:
                hook.remove()
        if len(self.calls) != len(self.layers):
            raise RuntimeError(f"expected {len(self.layers)} top decoder layer calls, saw {len(self.calls)}")

    def _record(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.calls.append((args, kwargs))

    def logits(self) -> torch.Tensor:
        args, kwargs = self.calls[0]
        hidden = args[0] if args else kwargs["hidden_states"]
        for layer, (args, kwargs) in zip(self.layers, self.calls, strict=True):
            if args:
                output = layer(hidden, *args[1:], **kwargs)
            else:
                output = layer(**{**kwargs, "hidden_states": hidden})
            hidden = output[0] if isinstance(output, tuple) else output
        return self.adapter.head(hidden)


class FullForward:
    """The whole model on ``batch``, every call: what :class:`TopLayers` saves, for comparison."""

    def __init__(self, adapter: ModelAdapter, batch: EncodedBatch) -> None:
        self.adapter = adapter
        self.batch = batch

    def logits(self) -> torch.Tensor:
        return full_logits(self.adapter, self.batch)
