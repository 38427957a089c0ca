"""Step 7: portability — questions answered by following the KG from the new entity e2.

A k-hop question composes relation phrases around "the <type> in the image", e.g. 2 hops:
"In which country is the club the person in the image plays for located?". Only chains whose
answer differs from what the same relations give from e1 are kept: those are the ones an edit
must carry over.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .mmkg import KnowledgeGraph
from .questions import contains_answer, image_subject, relation_noun, relation_question
from .report import Report


@dataclass(frozen=True)
class Chain:
    hops: int
    relations: tuple[str, ...]
    question: str
    answer: str
    answer_entity: str


@dataclass(frozen=True)
class OneHopEdit:
    edit_question: str
    edit_answer: str
    question: str
    answer: str


def follow(kg: KnowledgeGraph, start: str, relations: tuple[str, ...]) -> str | None:
    """The entity reached from ``start`` along ``relations``, or None where a fact is missing."""
    current = start
    for relation in relations:
        following = kg.functional.get((current, relation))
        if following is None:
            return None
        current = following
    return current


def chain_question(relations: tuple[str, ...], subject: str) -> str:
    """The question asking for the end of ``relations`` followed from ``subject``."""
    for relation in relations[:-1]:
        subject = relation_noun(relation, subject)
    return relation_question(relations[-1], subject)


def _paths(
    kg: KnowledgeGraph, start: str, max_hops: int, avoid: str | None, report: Report | None
) -> Iterator[tuple[tuple[str, ...], str]]:
    """Yield (relations, target) for every acyclic path of 1..``max_hops`` facts from ``start``.

    Paths are not continued through ``avoid`` or through an entity already on them (a cycle).
    """
    frontier: list[tuple[tuple[str, ...], tuple[str, ...]]] = [((), (start,))]
    for _ in range(max_hops):
        extended = []
        for relations, visited in frontier:
            for relation in sorted(kg.relations_of(visited[-1])):
                target = kg.functional[(visited[-1], relation)]
                path = relations + (relation,)
                if target in visited or target == avoid:
                    if report is not None:
                        report.skip(
                            "portability",
                            "chain returns to an entity already on it (cycle) or to e1",
                            f"{start} {path}",
                        )
                    continue
                extended.append((path, visited + (target,)))
                yield path, target
        frontier = extended


def portability_chains(
    kg: KnowledgeGraph, e1: str, e2: str, max_hops: int, rng: np.random.Generator, report: Report
) -> dict[int, Chain]:
    """At most one chain per hop count 1..``max_hops`` from ``e2``, chosen at random among the valid."""
    step = "portability"
    subject = image_subject(kg.entities[e2].type)
    candidates: dict[int, list[Chain]] = {}
    for path, target in _paths(kg, e2, max_hops, e1, report):
        if follow(kg, e1, path) == target:
            report.skip(step, "e1 reaches the same answer (the edit would not matter)", f"{e1}/{e2} {path}")
            continue
        question = chain_question(path, subject)
        answer = kg.entities[target].name
        if contains_answer(question, answer):
            report.skip(step, "question contains its answer", question)
            continue
        candidates.setdefault(len(path), []).append(Chain(len(path), path, question, answer, target))
    chosen: dict[int, Chain] = {}
    for hops, found in sorted(candidates.items()):
        # Prefer extending the shorter chain already chosen, so the k-hop questions of a case build
        # on each other as in the release.
        previous = chosen.get(hops - 1)
        extending = [chain for chain in found if previous and chain.relations[:-1] == previous.relations]
        options = extending or found
        chosen[hops] = options[int(rng.integers(len(options)))]
    return chosen


def image_fact_questions(kg: KnowledgeGraph, entity: str, max_hops: int = 4) -> list[Chain]:
    """Every acyclic 1..``max_hops`` chain from ``entity`` as a question about "the <type> in the image".

    These are the pre-edit world's answers to portability-style questions about any entity (e1
    included): what a model should know before it is edited.
    """
    subject = image_subject(kg.entities[entity].type)
    chains = []
    for path, target in _paths(kg, entity, max_hops, None, None):
        question, answer = chain_question(path, subject), kg.entities[target].name
        if not contains_answer(question, answer):
            chains.append(Chain(len(path), path, question, answer, target))
    return chains


def onehop_edit(
    kg: KnowledgeGraph, e2: str, by_type: dict[str, list[str]], rng: np.random.Generator, tries: int = 30
) -> OneHopEdit | None:
    """Edit one fact of e2 (r1: o -> o'), then ask a question that goes through it (r2 of o').

    The answer ``r2(o')`` must differ from ``r2(o)``, so it follows from the one-hop edit only.
    """
    subject = image_subject(kg.entities[e2].type)
    relations = sorted(kg.relations_of(e2))
    for first in (relations[i] for i in rng.permutation(len(relations))):
        old_object = kg.functional[(e2, first)]
        peers = by_type.get(kg.entities[old_object].type, [])
        for new_object in (peers[i] for i in rng.permutation(len(peers))[:tries]):
            if new_object in (old_object, e2):
                continue
            for second in sorted(kg.relations_of(new_object)):
                answer = kg.functional[(new_object, second)]
                if answer in (e2, new_object) or answer == kg.functional.get((old_object, second)):
                    continue
                edit_question = relation_question(first, subject)
                question = relation_question(second, relation_noun(first, subject))
                edit_answer, answer_name = kg.entities[new_object].name, kg.entities[answer].name
                if contains_answer(edit_question, edit_answer) or contains_answer(question, answer_name):
                    continue
                return OneHopEdit(edit_question, edit_answer, question, answer_name)
    return None
