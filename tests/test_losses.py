"""The one definition of each answer measure (``editors.losses``) against hand-computed values, the
hub-id test, and the shipped default model's abilities as the measures read them."""

from __future__ import annotations

import math

import pytest
import torch

from editors.adapters.base import EncodedBatch
from editors.losses import answer_accuracies, answer_accuracy, answer_nll_row_mean, answer_nll_token_mean
from kebench_hf.hub import check_repo_id, is_hub_id

LOG3 = math.log(3)


def batch(offset: int = 0) -> tuple[torch.Tensor, EncodedBatch]:
    """Two rows over a vocabulary of 2: a one-token answer (token 0) at a tie, and a three-token
    answer (tokens 0, 1, 0) where every position gives token 0 a probability of 3/4; ``offset``
    positions lie before the logits."""
    logits = torch.zeros(2, 4, 2)
    logits[1, 1:4, 0] = LOG3
    encoded = EncodedBatch(inputs={}, target_ids=[[0], [0, 1, 0]],
                           answer_slices=[slice(offset + 3, offset + 4), slice(offset + 1, offset + 4)],
                           valid_positions=[slice(0, 4), slice(0, 4)])
    return logits, encoded


def test_the_two_answer_nlls_average_over_tokens_and_over_rows():
    logits, encoded = batch()
    tokens = [math.log(2), math.log(4 / 3), math.log(4), math.log(4 / 3)]  # -log p of each answer token
    assert answer_nll_token_mean(logits, encoded).item() == pytest.approx(sum(tokens) / 4)
    assert answer_nll_row_mean(logits, encoded, [0, 1]).item() == pytest.approx((tokens[0] + sum(tokens[1:]) / 3) / 2)
    assert answer_nll_row_mean(logits, encoded, [1]).item() == pytest.approx(sum(tokens[1:]) / 3)
    shifted_logits, shifted = batch(offset=5)
    assert answer_nll_token_mean(shifted_logits, shifted, offset=5).item() == pytest.approx(sum(tokens) / 4)


def test_answer_accuracy_is_the_mean_over_rows_of_their_token_accuracy():
    logits, encoded = batch()
    assert answer_accuracies(logits, encoded, [0, 1]) == [1.0, pytest.approx(2 / 3)]
    assert answer_accuracy(logits, encoded, [0, 1]) == pytest.approx(5 / 6)
    shifted_logits, shifted = batch(offset=5)
    assert answer_accuracies(shifted_logits, shifted, [1], offset=5) == [pytest.approx(2 / 3)]


@pytest.mark.parametrize(("text", "expected"), [
    ("owner/name", True), ("tiny/kebench", True), ("name", False), ("a/b/c", False), ("./x", False),
    ("/abs", False), ("../x", False), ("a b/c", False), ("x/", False),
])
def test_a_hub_id_is_org_slash_name(text, expected):
    assert is_hub_id(text) is expected
    if expected:
        assert check_repo_id(text) == text
    else:
        with pytest.raises(ValueError, match="bad repository id"):
            check_repo_id(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("kebench", True), ("owner/name", True), ("a/b/c", False), ("./x", False), ("a b", False), ("x/", False),
])
def test_a_dataset_id_may_be_a_bare_canonical_name(text, expected):
    assert is_hub_id(text, namespaced=False) is expected


def test_the_default_models_abilities_read_as_before():
    """``evaluate_pretraining`` on the shipped model's first 8 test cases gives the figures pinned
    when the measures got one definition (on the whole split: those of its pretrain.json)."""
    from editors.adapters import load_adapter
    from editors.defaults import SHIPPED_DEFAULT_MODEL
    from editors.pretrain import evaluate_pretraining, read_world
    from kebench_hf.world import default_world

    abilities = evaluate_pretraining(load_adapter(SHIPPED_DEFAULT_MODEL), read_world(default_world()), limit=8)
    assert abilities == {"reliability_old_answer": 0.9375, "i_generality_old_answer": 0.875,
                         "reliability_new_answer": 0.375, "t_locality_answer": 1.0, "i_locality_answer": 1.0,
                         "fact_alone_new_answer": 1.0, "in_context_new_answer": 1.0,
                         "in_context_locality_answer": 1.0}
