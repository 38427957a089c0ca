"""``kebench world``: generate a multimodal KG and the KEBench data built from it."""

from __future__ import annotations

import argparse
import json

from .build import SCALES, build_world


def _run(args: argparse.Namespace) -> int:
    release = build_world(args.out_dir, seed=args.seed, scale=args.scale)
    counts = json.loads((release / "report.json").read_text())["output"]
    print(f"knowledge graph: {release.parent / 'kg'}")
    print(f"KEBench data:    {release}")
    for file_name, count in counts.items():
        print(f"  {file_name}: {count}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "world",
        help="generate a multimodal KG (OUT_DIR/kg) and build KEBench data from it (OUT_DIR/kebench)",
        description="Generate a synthetic multimodal knowledge graph in MMKG's layout and run the "
        "construction pipeline on it. The same seed and scale give byte-identical files.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", choices=sorted(SCALES), default="default")
    parser.set_defaults(func=_run)
