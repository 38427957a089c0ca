"""The ``kebench`` command line.

Each command group lives next to the code it drives and exposes ``add_commands(subparsers)``;
a command's handler is stored as ``func`` on its parser and receives the parsed namespace.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from kebench_hf.errors import HubError

#: modules that contribute sub-commands, in the order they appear in ``kebench --help``. Every invocation
#: imports them all, so they import nothing heavy (torch, datasets, huggingface_hub...) until a command runs.
COMMAND_MODULES: tuple[str, ...] = (
    "kebench_hf.world.commands",
    "kebench_hf.construct.commands",
    "kebench_hf.data_commands",
    "editors.commands",
    "editors.edit_commands",
    "kebench_hf.scoring_commands",
    "kebench_hf.leaderboard.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kebench", description="KEBench: knowledge editing of vision-language models, on the HF hub."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        logging.getLogger("httpx2").setLevel(logging.WARNING)  # huggingface_hub's client logs every request
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, HubError) as error:
        # Bad input and hub failures are reported in one line naming what is wrong; library
        # tracebacks are for bugs.
        print(f"kebench: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
