"""``build_world``: generate a multimodal KG in MMKG's layout, then run the construction pipeline on it."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..construct.pipeline import ConstructConfig, construct
from .kg import IMAGED_TYPES, World, generate_world
from .render import jpeg_bytes, render_view

logger = logging.getLogger(__name__)

_SOURCES = ("google", "bing", "yahoo")


@dataclass(frozen=True)
class Scale:
    #: imaged entities per type
    entities: dict[str, int]
    languages: int
    images_per_entity: int
    #: share of entities that also get a duplicate picture (exact copy or re-encoding)
    duplicate_rate: float
    construct: ConstructConfig


SCALES: dict[str, Scale] = {
    "tiny": Scale(
        entities={"country": 4, "city": 8, "river": 4, "club": 8, "person": 24},
        languages=3,
        images_per_entity=4,
        duplicate_rate=0.2,
        construct=ConstructConfig(cases_per_entity=1),
    ),
    "default": Scale(
        entities={"country": 10, "city": 40, "river": 12, "club": 24, "person": 80},
        languages=6,
        images_per_entity=8,
        duplicate_rate=0.1,
        construct=ConstructConfig(cases_per_entity=3, test_fraction=0.28, train_cases=300, test_cases=100),
    ),
    # Long enough for VLKEB's sequential protocol at 1,000 edits (1,010 test cases, each scored after
    # 10 further edits) and small enough for the tiny models to learn every fact of it.
    "lifelong": Scale(
        entities={"country": 20, "city": 120, "river": 30, "club": 80, "person": 250},
        languages=8,
        images_per_entity=6,
        duplicate_rate=0.1,
        construct=ConstructConfig(cases_per_entity=3, test_fraction=0.82, train_cases=200, test_cases=1010),
    ),
    # The paper's proportions: 8,174 cases, ~18k images, the release's multi-hop and one-hop counts.
    "full": Scale(
        entities={"country": 185, "city": 1950, "river": 480, "club": 770, "person": 6000},
        languages=40,
        images_per_entity=2,
        duplicate_rate=0.05,
        construct=ConstructConfig(
            untouched_fraction=0.05, train_cases=5000, test_cases=3174, multihop_cases=1278, onehop_cases=1278
        ),
    ),
}


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def write_kg(world: World, kg_dir: Path, scale: Scale, seed: int) -> None:
    """Write ``world`` in MMKG's layout. Images already on disk are kept: an interrupted run resumes."""
    images_root = kg_dir / "images"
    images_root.mkdir(parents=True, exist_ok=True)
    imaged = [(index, entity) for index, entity in enumerate(world.entities) if entity.identity is not None]
    for index, entity in tqdm(imaged, desc="rendering entities", unit="entity", disable=None):
        entity_dir = images_root / entity.id
        entity_dir.mkdir(exist_ok=True)
        rng = np.random.default_rng([seed, 7, index])
        duplicate = rng.random() < scale.duplicate_rate
        names = [f"{_SOURCES[n % 3]}_{n // 3 + 1}.jpg" for n in range(scale.images_per_entity + duplicate)]
        if all((entity_dir / name).exists() for name in names):
            continue
        pictures = [render_view(entity.identity, rng) for _ in range(scale.images_per_entity)]
        views = [jpeg_bytes(picture) for picture in pictures]
        if duplicate:
            # MMKG gathers pictures from several search engines: the same picture comes back twice,
            # byte for byte or re-encoded.
            views.append(views[0] if rng.random() < 0.5 else jpeg_bytes(pictures[0], quality=70))
        for name, data in zip(names, views, strict=True):
            _write_atomic(entity_dir / name, data)
    names_lines = "".join(f"{e.id}\t{e.name}\t{e.type}\n" for e in world.entities)
    triples_lines = "".join(f"{h}\t{r}\t{t}\n" for h, r, t in world.triples)
    _write_atomic(kg_dir / "names.tsv", names_lines.encode())
    _write_atomic(kg_dir / "triples.tsv", triples_lines.encode())


def build_world(out_dir: str | Path, seed: int = 0, scale: str = "default") -> Path:
    """Generate ``out_dir/kg/`` (MMKG layout) and ``out_dir/kebench/`` (release layout).

    Returns the ``kebench/`` directory. ``kg/`` keeps every fact of the pre-edit world
    (``names.tsv``, ``triples.tsv``): what a model must know before it is edited.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown world scale {scale!r}; expected one of {sorted(SCALES)}")
    settings = SCALES[scale]
    out_dir = Path(out_dir)
    kg_dir = out_dir / "kg"
    stamp = {"seed": seed, "scale": scale}
    stamp_path = kg_dir / "world.json"
    if kg_dir.exists() and (not stamp_path.exists() or json.loads(stamp_path.read_text()) != stamp):
        shutil.rmtree(kg_dir)  # made for another seed or scale, or by an older run that never stamped it
    kg_dir.mkdir(parents=True, exist_ok=True)
    stamp_path.write_text(json.dumps(stamp) + "\n")
    world = generate_world({t: settings.entities[t] for t in IMAGED_TYPES}, settings.languages, seed)
    logger.info(
        "world %s (seed %d): %d entities, %d facts", scale, seed, len(world.entities), len(world.triples)
    )
    write_kg(world, kg_dir, settings, seed)
    config = ConstructConfig(**{**settings.construct.__dict__, "seed": seed})
    return construct(kg_dir, out_dir / "kebench", config)
