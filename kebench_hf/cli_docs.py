"""docs/cli.md, generated from the ``kebench`` parsers: ``python -m kebench_hf.cli_docs > docs/cli.md``.

``tests/test_docs.py`` fails when the file differs from what this prints, so a new command or flag
shows up in the reference as soon as the file is regenerated.
"""

from __future__ import annotations

import argparse

from kebench_hf.cli import build_parser

HEADER = """\
# Command line reference

Generated from the parsers by `python -m kebench_hf.cli_docs > docs/cli.md`; do not edit by hand
(`tests/test_docs.py` fails when this file is out of date). Every command also answers `--help`.
Bad input ends in one line, `kebench: error: ...`, and exit status 1.
"""


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _flag(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest.upper()}`"
    names = ", ".join(action.option_strings)
    if action.nargs == 0:
        return f"`{names}`"
    metavar = action.metavar or (f"{{{','.join(map(str, action.choices))}}}" if action.choices else action.dest.upper())
    return f"`{names} {metavar}`"


def _details(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    # argparse's own expansion of the help text (%(default)s, %%)
    parts = [parser._get_formatter()._expand_help(action) if action.help else ""]
    if action.choices and action.metavar is not None:
        parts.append(f"choices: {', '.join(map(str, action.choices))}")
    if action.required and action.option_strings:
        parts.append("required")
    if isinstance(action, argparse._AppendAction) and "repeatable" not in parts[0]:
        parts.append("repeatable")
    if action.nargs == 0 or action.default in (None, "", argparse.SUPPRESS) or "default" in parts[0]:
        return _cell("; ".join(part for part in parts if part))
    parts.append(f"default: `{action.default}`")
    return _cell("; ".join(part for part in parts if part))


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each sub-command, in ``--help`` order."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            found += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return found


def _command(prog: str, summary: str, parser: argparse.ArgumentParser, level: int = 2) -> list[str]:
    summary = _cell(summary)
    lines = [f"{'#' * level} `{prog}`", "", summary[:1].upper() + summary[1:] + ("." if summary else "")]
    if parser.description:
        lines += ["", _cell(parser.description)]
    options = [action for action in parser._actions
               if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)]
    if options:
        lines += ["", "| argument | meaning |", "|---|---|"]
        lines += [f"| {_flag(action)} | {_details(parser, action)} |" for action in options]
    lines.append("")
    for name, help_text, sub in _subparsers(parser):
        lines += _command(f"{prog} {name}", help_text, sub, level + 1)
    return lines


def cli_reference() -> str:
    """The Markdown of docs/cli.md: every command, sub-command and flag of ``kebench``."""
    parser = build_parser()
    commands = _subparsers(parser)
    lines = [HEADER, "| command | what it does |", "|---|---|"]
    lines += [f"| [`kebench {name}`](#kebench-{name}) | {_cell(help_text)} |" for name, help_text, _ in commands]
    lines += ["", "Global option, before the command: `-v, --verbose` logs at debug level (`kebench -v run ...`).", ""]
    for name, help_text, sub in commands:
        lines += _command(f"kebench {name}", help_text, sub)
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":
    print(cli_reference(), end="")
