"""Reading and checking a knowledge graph in MMKG's layout.

::

    triples.tsv                     head<TAB>relation<TAB>tail, one fact per line
    names.tsv                       entity id<TAB>name<TAB>type, one entity per line
    images/<entity id>/<source>_<n>.jpg
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .report import Report

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Entity:
    id: str
    name: str
    type: str


@dataclass
class KnowledgeGraph:
    entities: dict[str, Entity]
    triples: list[tuple[str, str, str]]
    #: entity id -> its image paths, sorted; entities without images are absent
    images: dict[str, list[Path]] = field(default_factory=dict)
    #: (head, relation) -> tail, for relations with exactly one tail per head
    functional: dict[tuple[str, str], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.functional:
            self.functional = functional_facts(self.triples)
        self._relations: dict[str, set[str]] = defaultdict(set)
        for head, relation in self.functional:
            self._relations[head].add(relation)

    def relations_of(self, head: str) -> set[str]:
        """The relations with a unique answer for ``head``."""
        return self._relations.get(head, set())

    def by_type(self) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = defaultdict(list)
        for entity_id in sorted(self.entities):
            grouped[self.entities[entity_id].type].append(entity_id)
        return dict(grouped)


def functional_facts(triples: list[tuple[str, str, str]]) -> dict[tuple[str, str], str]:
    """(head, relation) -> tail for the pairs that have exactly one tail: unambiguous answers."""
    tails: dict[tuple[str, str], set[str]] = defaultdict(set)
    for head, relation, tail in triples:
        tails[(head, relation)].add(tail)
    return {key: next(iter(found)) for key, found in sorted(tails.items()) if len(found) == 1}


def _read_tsv(path: Path, columns: int) -> list[tuple[str, ...]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (an MMKG directory needs triples.tsv, names.tsv, images/)")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        cells = tuple(cell.strip() for cell in line.split("\t"))
        if len(cells) != columns:
            raise ValueError(f"{path}:{number}: expected {columns} tab-separated fields, found {len(cells)}")
        rows.append(cells)
    if not rows:
        raise ValueError(f"{path}: empty file")
    return rows


def read_mmkg(kg_dir: Path, report: Report) -> KnowledgeGraph:
    """Read ``kg_dir``; unusable facts and images are skipped and counted in ``report``.

    A malformed line, an entity without a name or type, or a duplicate entity id is an error:
    it means the input is not what its producer meant, and guessing would hide that.
    """
    kg_dir = Path(kg_dir)
    step = "read"
    entities: dict[str, Entity] = {}
    for number, (entity_id, name, entity_type) in enumerate(_read_tsv(kg_dir / "names.tsv", 3), start=1):
        where = f"{kg_dir / 'names.tsv'}:{number}: entity {entity_id!r}"
        if not entity_id:
            raise ValueError(f"{kg_dir / 'names.tsv'}:{number}: empty entity id")
        if not name:
            raise ValueError(f"{where}: missing name")
        if not entity_type:
            raise ValueError(f"{where}: missing type")
        if entity_id in entities:
            raise ValueError(f"{where}: duplicate entity id")
        entities[entity_id] = Entity(entity_id, name, entity_type)

    triples = []
    for number, (head, relation, tail) in enumerate(_read_tsv(kg_dir / "triples.tsv", 3), start=1):
        dangling = [entity for entity in (head, tail) if entity not in entities]
        if dangling:
            report.skip(
                step, "triple names an entity missing from names.tsv", f"triples.tsv:{number}: {dangling[0]}"
            )
            continue
        if not relation:
            raise ValueError(f"{kg_dir / 'triples.tsv'}:{number}: empty relation")
        if head == tail:
            report.skip(step, "self-loop triple", f"triples.tsv:{number}: {head} {relation} {tail}")
            continue
        triples.append((head, relation, tail))

    images_root = kg_dir / "images"
    if not images_root.is_dir():
        raise FileNotFoundError(f"{images_root}: missing images directory")
    images: dict[str, list[Path]] = {}
    for entity_dir in sorted(images_root.iterdir()):
        if entity_dir.name not in entities:
            report.skip(step, "image directory of an entity missing from names.tsv", entity_dir.name)
            continue
        files = sorted(p for p in entity_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            images[entity_dir.name] = files
    for entity_id in sorted(entities):
        if entity_id not in images:
            report.skip(
                step, "entity has no images (answer only, never an edit or I-Locality image)", entity_id
            )

    kg = KnowledgeGraph(entities, triples, images)
    ambiguous = {(h, r) for h, r, _ in triples} - set(kg.functional)
    for head, relation in sorted(ambiguous):
        report.skip(step, "relation with several tails (no unique answer)", f"{head} {relation}")
    report.count(step, "entities", len(entities))
    report.count(step, "entities_with_images", len(images))
    report.count(step, "triples", len(triples))
    report.count(step, "images", sum(len(files) for files in images.values()))
    return kg
