"""The construction pipeline: an MMKG-layout directory in, a KEBench release-layout directory out.

Every step is a function of its own module; this one only wires them together and writes
``train.json``, ``eval.json``, ``eval_multihop.json``, ``eval_edit_onehop.json``, ``mmkb_images/``
and ``report.json``. Given the same input and seed every file but ``report.json`` is byte-identical.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .embed import ImageEmbedder, ImageIndex, PixelEmbedder, drop_duplicates, embed_images
from .locality import assign_text_locality, image_locality, text_locality_pool
from .matching import EditPair, match_entities, split_entities
from .mmkg import KnowledgeGraph, read_mmkg
from .pairs import ImagePair, image_pairs
from .portability import onehop_edit, portability_chains
from .questions import QuestionGenerator, TemplateQuestions, contains_answer
from .report import Report

logger = logging.getLogger(__name__)

IMAGES_DIR = "mmkb_images"
#: the release's multi-hop portability counts (1- to 4-hop); every scale keeps these ratios
RELEASE_HOP_COUNTS = (1278, 1238, 1193, 1110)


@dataclass(frozen=True)
class ConstructConfig:
    seed: int = 0
    #: edit cases per edited entity (each with its own image pair and its own e2)
    cases_per_entity: int = 1
    #: share of edit candidates (per type) whose cases go to the test split
    test_fraction: float = 0.388
    #: share of edit candidates kept out of every edit, for I-/T-Locality
    untouched_fraction: float = 0.12
    near_duplicate: float = 0.995
    min_pair_similarity: float = 0.5
    max_hops: int = 4
    #: exact case counts wanted (None: as many as the KG gives)
    train_cases: int | None = None
    test_cases: int | None = None
    #: 1-hop count of eval_multihop.json; the other hops follow RELEASE_HOP_COUNTS' ratios
    multihop_cases: int | None = None
    onehop_cases: int | None = None


@dataclass
class _Case:
    pair: EditPair
    images: ImagePair
    src: str
    rephrase: str
    variant: int


def _relative(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _take(items: list, wanted: int | None, what: str, report: Report) -> list:
    if wanted is None:
        return items
    if len(items) < wanted:
        report.count("targets", f"{what}_shortfall", wanted - len(items))
        logger.warning("%s: wanted %d, the knowledge graph gives %d", what, wanted, len(items))
    return items[:wanted]


def _edit_cases(
    kg: KnowledgeGraph,
    pairs: list[EditPair],
    image_pairs_of: dict[str, list[ImagePair]],
    questions: QuestionGenerator,
    rng: np.random.Generator,
    report: Report,
) -> list[_Case]:
    step = "questions"
    cases = []
    for pair in pairs:
        available = image_pairs_of[pair.e1]
        if pair.round >= len(available):
            report.skip(
                "cases", "e1 has no unused image pair for this round", f"{pair.e1} round {pair.round}"
            )
            continue
        variant = int(rng.integers(1 << 16))
        src, rephrase = questions.entity_questions(kg.entities[pair.e1].type, variant)
        pred, alt = kg.entities[pair.e1].name, kg.entities[pair.e2].name
        if src == rephrase:
            report.skip(step, "rephrase equals the question", src)
            continue
        if any(contains_answer(text, answer) for text in (src, rephrase) for answer in (pred, alt)):
            report.skip(step, "question contains the old or new answer", src)
            continue
        cases.append(_Case(pair, available[pair.round], src, rephrase, variant))
    return cases


def construct(
    kg_dir: Path,
    out_dir: Path,
    config: ConstructConfig | None = None,
    embedder: ImageEmbedder | None = None,
    questions: QuestionGenerator | None = None,
) -> Path:
    """Build a KEBench data directory at ``out_dir`` from the MMKG-layout ``kg_dir``; returns ``out_dir``."""
    config = config or ConstructConfig()
    embedder = embedder or PixelEmbedder()
    questions = questions or TemplateQuestions()
    kg_dir, out_dir = Path(kg_dir), Path(out_dir)
    report = Report()
    report.count("config", "settings", asdict(config))
    report.count("config", "question_generator", questions.name)

    kg = read_mmkg(kg_dir, report)
    index = drop_duplicates(embed_images(kg, embedder, report), config.near_duplicate, report)
    pairs_of = image_pairs(
        index, config.cases_per_entity, config.near_duplicate, config.min_pair_similarity, report
    )
    split = split_entities(kg, sorted(pairs_of), config.test_fraction, config.untouched_fraction, config.seed)
    report.count("split", "train_entities", len(split.train))
    report.count("split", "test_entities", len(split.test))
    report.count("split", "held_out_entities", len(split.untouched))

    rng = np.random.default_rng([config.seed, 4])
    splits: dict[str, list[_Case]] = {}
    for name, members in (("train", split.train), ("test", split.test)):
        matched = match_entities(
            kg, members, config.cases_per_entity, config.seed, report, step=f"matching_{name}"
        )
        cases = _edit_cases(kg, matched, pairs_of, questions, rng, report)
        splits[name] = [cases[i] for i in rng.permutation(len(cases))]
    splits["train"] = _take(splits["train"], config.train_cases, "train_cases", report)
    splits["test"] = _take(splits["test"], config.test_cases, "test_cases", report)

    touched = {
        entity for cases in splits.values() for case in cases for entity in (case.pair.e1, case.pair.e2)
    }
    untouched = set(index.owners) - touched
    report.count("locality", "untouched_entities_with_images", len(untouched))
    text_pool = text_locality_pool(kg, untouched, report)
    records = {
        name: _records_with_locality(name, cases, kg, index, untouched, text_pool, questions, rng, report)
        for name, cases in splits.items()
    }
    files = {
        "train.json": records["train"],
        **_test_files(kg, splits["test"], records["test"], config, report),
    }
    used_images = {
        record[field]
        for content in files.values()
        for record in content
        for field in ("image", "image_rephrase", "m_loc")
    }
    for file_name, content in files.items():
        report.count("output", file_name, len(content))
    report.count("output", "images", len(used_images))
    _write_release(out_dir, files, kg_dir / "images", used_images, report)
    return out_dir


def _records_with_locality(
    name: str,
    cases: list[_Case],
    kg: KnowledgeGraph,
    index: ImageIndex,
    untouched: set[str],
    text_pool: list[tuple[str, str, str]],
    questions: QuestionGenerator,
    rng: np.random.Generator,
    report: Report,
) -> list[dict]:
    """The release records of ``cases``, with their I-Locality and T-Locality queries."""
    image_loc = image_locality(
        [case.images.edit for case in cases],
        index,
        untouched,
        kg,
        questions,
        [case.variant for case in cases],
    )
    text_loc = assign_text_locality(text_pool, [{case.pair.e1, case.pair.e2} for case in cases], rng)
    if cases:
        similarity = {
            "pair": [c.images.similarity for c in cases],
            "image_locality": [m.similarity for m in image_loc],
        }
        for what, values in similarity.items():
            report.count("locality", f"{name}_mean_{what}_similarity", round(float(np.mean(values)), 4))
    return [
        {
            "src": case.src,
            "rephrase": case.rephrase,
            "pred": kg.entities[case.pair.e1].name,
            "alt": kg.entities[case.pair.e2].name,
            "image": _relative(case.images.edit),
            "image_rephrase": _relative(case.images.generality),
            "loc": loc,
            "loc_ans": loc_ans,
            "m_loc": _relative(m_loc.image),
            "m_loc_q": m_loc.question,
            "m_loc_a": m_loc.answer,
        }
        for case, m_loc, (loc, loc_ans) in zip(cases, image_loc, text_loc, strict=True)
    ]


def _test_files(
    kg: KnowledgeGraph, cases: list[_Case], records: list[dict], config: ConstructConfig, report: Report
) -> dict[str, list[dict]]:
    """``eval.json`` (1-hop portability where there is one), the multi-hop and the one-hop-edit files."""
    chains_rng = np.random.default_rng([config.seed, 5])
    chains = [
        portability_chains(kg, c.pair.e1, c.pair.e2, config.max_hops, chains_rng, report) for c in cases
    ]
    eval_records = []
    for record, found in zip(records, chains, strict=True):
        if 1 in found:
            one_hop = {
                "port_type": "1-hop",
                "Q&A": {"Question": found[1].question, "Answer": found[1].answer},
            }
            record = {**record, "port_new": [one_hop]}
        eval_records.append(record)
    report.count("portability", "eval_cases_with_1hop", sum(1 for found in chains if 1 in found))

    by_type = kg.by_type()
    onehop_rng = np.random.default_rng([config.seed, 6])
    onehop = []
    for record, case in zip(records, cases, strict=True):
        found = onehop_edit(kg, case.pair.e2, by_type, onehop_rng)
        if found is None:
            report.skip("edit_onehop", "no one-hop fact of e2 leads on to a changed answer", case.pair.e2)
            continue
        onehop.append({**record, "port_new": [{
            "port_edit_q": found.edit_question, "port_edit_a": found.edit_answer,
            "port_q": found.question, "port_a": found.answer,
        }]})  # fmt: skip
    return {
        "eval.json": eval_records,
        "eval_multihop.json": _multihop_records(records, chains, config.multihop_cases, report),
        "eval_edit_onehop.json": _take(onehop, config.onehop_cases, "onehop_cases", report),
    }


def _hop_quota(one_hop: int) -> dict[int, int]:
    return {
        hops: round(one_hop * count / RELEASE_HOP_COUNTS[0])
        for hops, count in enumerate(RELEASE_HOP_COUNTS, 1)
    }


def _multihop_records(
    test_records: list[dict], chains: list[dict], wanted_one_hop: int | None, report: Report
) -> list[dict]:
    """Test records with their k-hop items, k-hop counts exactly in the release's ratios.

    Records with the most hops are taken first; the number of records (= 1-hop items) is the
    largest, up to ``wanted_one_hop``, whose quota of every longer hop can be filled.
    """
    candidates = sorted(
        (index for index, found in enumerate(chains) if 1 in found), key=lambda index: -len(chains[index])
    )
    one_hop = len(candidates) if wanted_one_hop is None else min(wanted_one_hop, len(candidates))

    def fillable(count: int) -> bool:
        available = {
            hops: sum(1 for index in candidates[:count] if hops in chains[index])
            for hops in _hop_quota(count)
        }
        return all(available[hops] >= quota for hops, quota in _hop_quota(count).items())

    while one_hop and not fillable(one_hop):
        one_hop -= 1
    if wanted_one_hop is not None and one_hop < wanted_one_hop:
        report.count("targets", "multihop_cases_shortfall", wanted_one_hop - one_hop)
    quota = _hop_quota(one_hop)
    kept = dict.fromkeys(quota, 0)
    records = []
    for index in sorted(candidates[:one_hop]):
        items = []
        for hops, chain in sorted(chains[index].items()):
            if kept[hops] < quota[hops]:
                kept[hops] += 1
                items.append(
                    {"port_type": f"{hops}-hop", "Q&A": {"Question": chain.question, "Answer": chain.answer}}
                )
        records.append({**test_records[index], "port_new": items})
    for hops, count in kept.items():
        report.count("portability", f"multihop_{hops}hop", count)
    return records


def _write_release(
    out_dir: Path, files: dict[str, list[dict]], images_root: Path, images: set[str], report: Report
) -> None:
    """Write into a fresh sibling directory, then swap it in: no stale files from an earlier run."""
    partial = out_dir.with_name(out_dir.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    (partial / IMAGES_DIR).mkdir(parents=True)
    for relative in sorted(images):
        target = partial / IMAGES_DIR / relative
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(images_root / relative, target)
    for file_name, content in files.items():
        (partial / file_name).write_text(
            json.dumps(content, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    report.write(partial / "report.json")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.rename(out_dir)
