"""``kebench export`` and ``kebench push``: a release directory to a dataset repository on the hub.

Building these parsers reads only :mod:`kebench_hf.constants`; a handler imports its implementation
(``datasets``, ``huggingface_hub``) when its command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kebench_hf.constants import CONFIGS, DEFAULT_LICENSE, DEFAULT_SHARD_SIZE, REPO_TYPES


def _export(args: argparse.Namespace) -> int:
    from kebench_hf.export import export_release

    result = export_release(
        args.data_dir,
        args.out_dir,
        images_root=args.images_root,
        skip_invalid=args.skip_invalid,
        shard_size=args.shard_size,
        configs=args.configs,
        license=args.license,
        repo_id=args.repo_id,
    )
    for summary in result.splits:
        print(
            f"{summary.config}/{summary.split}: {summary.num_examples} cases from {summary.file} "
            f"in {len(summary.shards)} shard(s)"
        )
    if result.report.total:
        print(result.report.summary())
    print(f"wrote {result.out_dir} in {result.seconds:.1f} s")
    return 0


def _push(args: argparse.Namespace) -> int:
    from kebench_hf.hub import push_folder

    info = push_folder(
        args.out_dir,
        args.repo,
        repo_type=args.repo_type,
        create_pr=args.create_pr,
        private=args.private,
        revision=args.revision,
        message=args.message,
        space_sdk=args.space_sdk,
    )
    print(f"pushed {args.out_dir} to {info.repo_url} (commit {info.oid})")
    print(f"commit: {info.commit_url}")
    if info.pr_url:
        print(f"pull request: {info.pr_url} (revision {info.pr_revision})")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export",
        help="write a hub-ready Parquet dataset repository from a KEBench release directory",
        description="Write DATA_DIR (train.json, eval.json, eval_multihop.json, eval_edit_onehop.json, images) "
        "as Parquet shards with embedded images plus a dataset card into OUT_DIR. An interrupted "
        "export resumes when run again with the same arguments.",
    )
    export.add_argument(
        "data_dir", type=Path, metavar="DATA_DIR", help="directory in the KEBench release layout"
    )
    export.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="dataset repository to write")
    export.add_argument("--images-root", type=Path, help="images root (default: DATA_DIR/mmkb_images)")
    export.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip invalid records (counted and reported) instead of stopping at the first",
    )
    export.add_argument(
        "--shard-size",
        type=int,
        default=DEFAULT_SHARD_SIZE,
        help=f"release records per Parquet shard (default {DEFAULT_SHARD_SIZE})",
    )
    export.add_argument(
        "--config",
        dest="configs",
        action="append",
        choices=sorted(CONFIGS),
        help="export only this config (repeatable; default: every config present)",
    )
    export.add_argument(
        "--license",
        default=DEFAULT_LICENSE,
        help=f"license id for the card, matching the exported data's (default {DEFAULT_LICENSE})",
    )
    export.add_argument(
        "--repo-id", help="dataset name used in the card's examples (default: OUT_DIR's name)"
    )
    export.set_defaults(func=_export)

    push = subparsers.add_parser(
        "push",
        help="upload a folder (e.g. a `kebench export` output) to a hub repository",
        description="Upload OUT_DIR to a Hugging Face Hub repository in one commit. Uses HF_ENDPOINT and the "
        "token from HF_TOKEN or `hf auth login`.",
    )
    push.add_argument("out_dir", metavar="OUT_DIR", help="folder to upload")
    push.add_argument("--repo", required=True, metavar="ORG/NAME", help="target repository id")
    push.add_argument(
        "--repo-type", choices=REPO_TYPES, default="dataset", help="repository type (default: dataset)"
    )
    push.add_argument(
        "--create-pr", action="store_true", help="open a pull request instead of committing to main"
    )
    push.add_argument(
        "--private", action="store_true", help="create the repository as private if it does not exist"
    )
    push.add_argument(
        "--revision", metavar="BRANCH", help="branch to commit to (created from main if missing)"
    )
    push.add_argument("--message", metavar="M", help="commit message")
    push.add_argument(
        "--space-sdk", default="gradio", help="SDK of a Space created by this push (default: gradio)"
    )
    push.set_defaults(func=_push)
