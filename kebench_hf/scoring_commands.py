"""``kebench score`` and ``kebench push-metric``.

A handler imports the scoring stack (the metric, hence ``evaluate`` and ``torch``) when its command
runs; building these parsers imports nothing.
"""

from __future__ import annotations

import argparse
import json

BOTH_PROTOCOLS = "both"


def _score(args: argparse.Namespace) -> int:
    from kebench_hf.scoring import format_table, read_predictions
    from metric.kebench import AVERAGES, PRESETS, PROTOCOLS, score_predictions

    # The parser cannot list the choices without importing the metric; reject a bad one before
    # reading a possibly large file.
    for option, value, choices in (
        ("protocol", args.protocol, (*PROTOCOLS, BOTH_PROTOCOLS)),
        ("average", args.average, AVERAGES),
        ("preset", args.preset, PRESETS),
    ):
        if value not in choices:
            raise ValueError(f"unknown {option} {value!r}; expected one of {choices}")
    protocols = PROTOCOLS if args.protocol == BOTH_PROTOCOLS else (args.protocol,)
    table = read_predictions(args.predictions)
    results = {
        protocol: score_predictions(
            table, protocol=protocol, bootstrap=args.bootstrap, seed=args.seed, average=args.average, preset=args.preset
        )
        for protocol in protocols
    }
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[protocols[0]], indent=2))
    else:
        print(f"{args.predictions}: {table.num_rows} rows")
        print("\n\n".join(format_table(result) for result in results.values()))
    return 0


def _push_metric(args: argparse.Namespace) -> int:
    from kebench_hf.scoring import push_metric

    commit_url = push_metric(args.repo, private=args.private)
    print(f"metric published to Space {args.repo} ({commit_url})")
    print(f'load it with: evaluate.load("{args.repo}")')
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    score = subparsers.add_parser("score", help="score a predictions file (Parquet or JSON Lines)")
    score.add_argument("predictions", help="predictions file: .parquet, or .jsonl with one row per line")
    score.add_argument(
        "--protocol",
        default="token",
        help=f"the metric's scoring protocol, or {BOTH_PROTOCOLS!r} for each of them (default: token; an unknown "
        "name is answered with the list)",
    )
    score.add_argument(
        "--average",
        default="case",
        help="'case': mean over cases (default); 'token': micro mean over answer tokens, as the reference's KE "
        "evaluation (token protocol only)",
    )
    score.add_argument(
        "--preset",
        default="kebench",
        help="the preset the predictions were made under (kebench or vlkeb), recorded in the output (default: kebench)",
    )
    score.add_argument("--json", action="store_true", help="print the metric's output as JSON")
    score.add_argument(
        "--bootstrap", type=int, default=1000, help="resamples for the 95%% intervals (0: none)"
    )
    score.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    score.set_defaults(func=_score)

    push = subparsers.add_parser("push-metric", help="publish metric/ as an evaluate Space on the hub")
    push.add_argument("--repo", required=True, help="ORG/NAME of the Space")
    push.add_argument("--private", action="store_true")
    push.set_defaults(func=_push_metric)
