"""How well a batch's logits give its answers: one definition of each measure the methods and the
pretraining use.

``logits[row, p]`` predicts token ``p + 1``; ``batch.answer_slices[row]`` are the positions
predicting the row's answer tokens ``batch.target_ids[row]``; logits that start at position
``offset`` (a shared prefix run once, see :mod:`editors.forward`) are indexed accordingly.

Two answer NLLs, because two averages are wanted: over the batch's answer *tokens* (a long answer
weighs more: FT's edit loss) and over its *rows* (every query weighs the same: the trained
editors' losses).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from editors.adapters.base import EncodedBatch


def answer_logits(logits: torch.Tensor, batch: EncodedBatch, row: int, offset: int = 0) -> torch.Tensor:
    """``(answer tokens, vocab)``: the logits of ``row`` at the positions predicting its answer."""
    span = batch.answer_slices[row]
    return logits[row, span.start - offset : span.stop - offset]


def answer_nll_token_mean(logits: torch.Tensor, batch: EncodedBatch, offset: int = 0) -> torch.Tensor:
    """Negative log-likelihood of every answer token of the batch, averaged over those tokens."""
    losses = []
    for row, targets in enumerate(batch.target_ids):
        target = torch.tensor(targets, device=logits.device)
        losses.append(F.cross_entropy(answer_logits(logits, batch, row, offset).float(), target, reduction="sum"))
    return torch.stack(losses).sum() / sum(len(t) for t in batch.target_ids)


def answer_nll_row_mean(logits: torch.Tensor, batch: EncodedBatch, rows: Sequence[int]) -> torch.Tensor:
    """Mean over ``rows`` of the mean negative log-likelihood of each row's answer tokens."""
    losses = []
    for row in rows:
        target = torch.tensor(batch.target_ids[row], device=logits.device)
        losses.append(F.cross_entropy(answer_logits(logits, batch, row).float(), target))
    return torch.stack(losses).mean()


def token_accuracy(predicted: Sequence[int], targets: Sequence[int]) -> float:
    """The fraction of answer tokens predicted (teacher forced: each from the true tokens before it)."""
    return sum(p == t for p, t in zip(predicted, targets, strict=True)) / len(targets)


def answer_accuracies(logits: torch.Tensor, batch: EncodedBatch, rows: Sequence[int], offset: int = 0) -> list[float]:
    """:func:`token_accuracy` of the top-1 tokens of each of ``rows``."""
    return [token_accuracy(answer_logits(logits, batch, row, offset).argmax(-1).tolist(), batch.target_ids[row])
            for row in rows]


def answer_accuracy(logits: torch.Tensor, batch: EncodedBatch, rows: Sequence[int]) -> float:
    """Mean over ``rows`` of their answers' :func:`token_accuracy` (a validation signal, not the metric)."""
    scores = answer_accuracies(logits, batch, rows)
    return sum(scores) / len(scores)


def locality_kl(
    pre_logits: torch.Tensor, post_logits: torch.Tensor, batch: EncodedBatch, rows: Sequence[int]
) -> torch.Tensor:
    """Mean over ``rows`` of KL(pre || post) averaged over all the row's predicting positions."""
    losses = []
    for row in rows:
        positions = batch.valid_positions[row]
        pre = F.log_softmax(pre_logits[row, positions].float(), dim=-1)
        post = F.log_softmax(post_logits[row, positions].float(), dim=-1)
        losses.append(F.kl_div(post, pre, log_target=True, reduction="batchmean"))
    return torch.stack(losses).mean()
