"""Steps 3 and 8: the entity split, and edit pairs (e1, e2) by maximum-weight bipartite matching."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from .mmkg import KnowledgeGraph
from .report import Report

#: a weight no real pair reaches: linear_sum_assignment needs finite costs
_FORBIDDEN = -1e6


@dataclass(frozen=True)
class EntitySplit:
    train: list[str]
    test: list[str]
    #: never edited (neither e1 nor e2 of any case): I-Locality and T-Locality come from them
    untouched: list[str]


def split_entities(
    kg: KnowledgeGraph, candidates: list[str], test_fraction: float, untouched_fraction: float, seed: int
) -> EntitySplit:
    """Split edit candidates per type into train / test / untouched, disjoint by entity."""
    rng = np.random.default_rng([seed, 8])
    train, test, untouched = [], [], []
    by_type: dict[str, list[str]] = {}
    for entity_id in sorted(candidates):
        by_type.setdefault(kg.entities[entity_id].type, []).append(entity_id)
    for entity_type in sorted(by_type):
        members = [by_type[entity_type][i] for i in rng.permutation(len(by_type[entity_type]))]
        n_untouched = int(round(len(members) * untouched_fraction))
        n_test = int(round((len(members) - n_untouched) * test_fraction))
        untouched += members[:n_untouched]
        test += members[n_untouched : n_untouched + n_test]
        train += members[n_untouched + n_test :]
    return EntitySplit(sorted(train), sorted(test), sorted(untouched))


@dataclass(frozen=True)
class EditPair:
    e1: str  # the entity in the image (old answer)
    e2: str  # the new answer
    round: int  # which of e1's image pairs the case uses
    shared_relations: int


def match_entities(
    kg: KnowledgeGraph, entities: list[str], rounds: int, seed: int, report: Report, step: str = "matching"
) -> list[EditPair]:
    """Within each type, ``rounds`` maximum-weight matchings of ``entities`` onto themselves.

    The weight of (e1, e2) is the number of relations both have (so questions about e2's facts
    also make sense for e1), plus a seeded jitter that breaks ties between equally good matchings.
    Self-pairs, pairs with the same name, pairs already used in an earlier round and pairs sharing
    no relation are never chosen.
    """
    rng = np.random.default_rng([seed, 3])
    by_type: dict[str, list[str]] = {}
    for entity_id in sorted(entities):
        by_type.setdefault(kg.entities[entity_id].type, []).append(entity_id)
    pairs: list[EditPair] = []
    for entity_type in sorted(by_type):
        members = by_type[entity_type]
        if len(members) < 2:
            for member in members:
                report.skip(step, "only entity of its type in its split", member)
            continue
        vocabulary = sorted(set().union(*(kg.relations_of(member) for member in members)))
        has_relation = np.array(
            [[relation in kg.relations_of(member) for relation in vocabulary] for member in members],
            dtype=np.float64,
        ).reshape(len(members), len(vocabulary))
        shared = has_relation @ has_relation.T
        # The jitter of a whole matching stays below 1, so it only breaks ties between matchings.
        weights = shared + rng.random(shared.shape) / (2 * len(members))
        names = np.array([kg.entities[member].name for member in members])
        # Same name covers the entity itself: alt must differ from pred.
        forbidden = (shared == 0) | (names[:, None] == names[None, :])
        for round_index in range(rounds):
            rows, cols = linear_sum_assignment(np.where(forbidden, _FORBIDDEN, weights), maximize=True)
            for row, col in zip(rows, cols, strict=True):
                if forbidden[row, col]:
                    report.skip(
                        step, "no partner sharing a relation left", f"{members[row]} (round {round_index})"
                    )
                    continue
                pairs.append(EditPair(members[row], members[col], round_index, int(shared[row, col])))
                forbidden[row, col] = True
    report.count(step, "pairs", len(pairs))
    return pairs
