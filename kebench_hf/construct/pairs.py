"""Step 2: pairs of images of one entity that are similar but not identical.

The first image of a pair is the edit image, the second the I-Generality image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .embed import ImageIndex
from .report import Report


@dataclass(frozen=True)
class ImagePair:
    edit: Path
    generality: Path
    similarity: float


def image_pairs(
    index: ImageIndex, pairs_per_entity: int, near_duplicate: float, min_similarity: float, report: Report
) -> dict[str, list[ImagePair]]:
    """Up to ``pairs_per_entity`` disjoint pairs per entity, most similar first.

    A pair qualifies when ``min_similarity <= cosine < near_duplicate``: below the lower bound the
    two images may not show the same thing; at the upper bound they are the same picture.
    """
    step = "image_pairs"
    pairs: dict[str, list[ImagePair]] = {}
    for owner, rows in sorted(index.rows_by_owner().items()):
        if len(rows) < 2:
            report.skip(step, "entity has fewer than two distinct images", owner)
            continue
        similarity = index.vectors[rows] @ index.vectors[rows].T
        upper = np.triu_indices(len(rows), k=1)
        candidates = [
            (float(similarity[a, b]), a, b)
            for a, b in zip(*upper, strict=True)
            if min_similarity <= similarity[a, b] < near_duplicate
        ]
        # Most similar first; ties broken by position so the result does not depend on sort stability.
        candidates.sort(key=lambda item: (-item[0], item[1], item[2]))
        used: set[int] = set()
        chosen = []
        for score, a, b in candidates:
            if a in used or b in used:
                continue
            used.update((a, b))
            chosen.append(ImagePair(index.paths[rows[a]], index.paths[rows[b]], round(score, 6)))
            if len(chosen) == pairs_per_entity:
                break
        if not chosen:
            report.skip(step, "no image pair within the similarity band", owner)
            continue
        pairs[owner] = chosen
    report.count(step, "entities_with_pairs", len(pairs))
    report.count(step, "pairs", sum(len(found) for found in pairs.values()))
    report.count(step, "similarity_band", [min_similarity, near_duplicate])
    return pairs
