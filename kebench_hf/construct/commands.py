"""``kebench construct``: the construction pipeline on a knowledge graph in MMKG's layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .pipeline import ConstructConfig, construct


def _run(args: argparse.Namespace) -> int:
    embedder = questions = None
    if args.clip:
        from .embed import ClipEmbedder

        embedder = ClipEmbedder(args.clip)
    if args.question_model:
        from .questions import LanguageModelQuestions

        questions = LanguageModelQuestions(args.question_model)
    config = ConstructConfig(
        seed=args.seed,
        cases_per_entity=args.cases_per_entity,
        test_fraction=args.test_fraction,
        untouched_fraction=args.untouched_fraction,
        near_duplicate=args.near_duplicate,
        min_pair_similarity=args.min_pair_similarity,
        train_cases=args.train_cases,
        test_cases=args.test_cases,
        multihop_cases=args.multihop_cases,
        onehop_cases=args.onehop_cases,
    )
    release = construct(Path(args.kg_dir), Path(args.out_dir), config, embedder, questions)
    counts = json.loads((release / "report.json").read_text())["output"]
    print(f"KEBench data: {release} (report: {release / 'report.json'})")
    for file_name, count in counts.items():
        print(f"  {file_name}: {count}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    defaults = ConstructConfig()
    parser = subparsers.add_parser(
        "construct",
        help="build KEBench data (release layout) from a KG in MMKG's layout",
        description="KG_DIR holds triples.tsv (head, relation, tail), names.tsv (id, name, type) and "
        "images/<entity id>/<source>_<n>.jpg. OUT_DIR receives train.json, eval.json, "
        "eval_multihop.json, eval_edit_onehop.json, mmkb_images/ and report.json.",
    )
    parser.add_argument("kg_dir", metavar="KG_DIR")
    parser.add_argument("out_dir", metavar="OUT_DIR")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="same seed, same bytes")
    parser.add_argument(
        "--cases-per-entity", type=int, default=defaults.cases_per_entity,
        help="edit cases per edited entity, each with its own image pair and new answer",
    )  # fmt: skip
    parser.add_argument(
        "--test-fraction", type=float, default=defaults.test_fraction, help="share of edited entities in test"
    )
    parser.add_argument(
        "--untouched-fraction", type=float, default=defaults.untouched_fraction,
        help="share of entities kept out of every edit (I-/T-Locality come from them)",
    )  # fmt: skip
    parser.add_argument(
        "--near-duplicate", type=float, default=defaults.near_duplicate,
        help="cosine similarity from which two images of an entity are the same picture",
    )  # fmt: skip
    parser.add_argument(
        "--min-pair-similarity", type=float, default=defaults.min_pair_similarity,
        help="lowest cosine similarity of an (edit image, I-Generality image) pair",
    )  # fmt: skip
    parser.add_argument("--train-cases", type=int, help="exact number of train cases wanted")
    parser.add_argument("--test-cases", type=int, help="exact number of test cases wanted")
    parser.add_argument("--multihop-cases", type=int, help="eval_multihop.json records wanted (1-hop count)")
    parser.add_argument("--onehop-cases", type=int, help="eval_edit_onehop.json records wanted")
    parser.add_argument("--clip", metavar="PATH", help="embed images with a local CLIP-family model")
    parser.add_argument(
        "--question-model", metavar="PATH", help="write questions with a local text-generation model"
    )
    parser.set_defaults(func=_run)
