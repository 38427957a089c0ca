"""Steps 5 and 6: I-Locality (a look-alike image of an unedited entity) and T-Locality (text only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .embed import ImageIndex
from .mmkg import KnowledgeGraph
from .questions import QuestionGenerator, contains_answer, relation_question
from .report import Report


@dataclass(frozen=True)
class ImageLocality:
    image: Path
    entity: str
    question: str
    answer: str
    similarity: float


def image_locality(
    edit_images: list[Path],
    index: ImageIndex,
    untouched: set[str],
    kg: KnowledgeGraph,
    questions: QuestionGenerator,
    variants: list[int],
) -> list[ImageLocality]:
    """For each edit image, the most similar image of an entity that no edit touches."""
    pool = [row for row, owner in enumerate(index.owners) if owner in untouched]
    if not pool:
        raise ValueError("no image of an unedited entity is left for I-Locality; lower the edit share")
    row_of = {path: row for row, path in enumerate(index.paths)}
    similarity = index.vectors[[row_of[path] for path in edit_images]] @ index.vectors[pool].T
    best = similarity.argmax(axis=1)
    found = []
    for case, (column, variant) in enumerate(zip(best, variants, strict=True)):
        row = pool[int(column)]
        entity = kg.entities[index.owners[row]]
        question, _ = questions.entity_questions(entity.type, variant)
        found.append(
            ImageLocality(
                index.paths[row], entity.id, question, entity.name, round(float(similarity[case, column]), 6)
            )
        )
    return found


def text_locality_pool(kg: KnowledgeGraph, untouched: set[str], report: Report) -> list[tuple[str, str, str]]:
    """Text-only (question, answer, answer entity) facts whose subject no edit touches.

    The question names its subject, so it needs no image and is unrelated to every edit.
    """
    step = "text_locality"
    pool = []
    for (head, relation), tail in sorted(kg.functional.items()):
        if head not in untouched:
            continue
        question = relation_question(relation, kg.entities[head].name)
        answer = kg.entities[tail].name
        if contains_answer(question, answer):
            report.skip(step, "question contains its answer", question)
            continue
        pool.append((question, answer, tail))
    if not pool:
        raise ValueError("no fact about an unedited entity is left for T-Locality")
    report.count(step, "pool_size", len(pool))
    return pool


def assign_text_locality(
    pool: list[tuple[str, str, str]], case_entities: list[set[str]], rng: np.random.Generator
) -> list[tuple[str, str]]:
    """One pool fact per case, cycling through a seeded shuffle, never answered by the case's e1/e2."""
    order = [pool[i] for i in rng.permutation(len(pool))]
    chosen = []
    position = 0
    for entities in case_entities:
        for _ in range(len(order)):
            question, answer, answer_entity = order[position % len(order)]
            position += 1
            if answer_entity not in entities:
                chosen.append((question, answer))
                break
        else:
            raise ValueError(f"every T-Locality fact is answered by one of {sorted(entities)}")
    return chosen
