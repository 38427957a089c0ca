"""The README and docs/ say only what runs: their examples are executed here.

Conventions (docs/architecture.md, "Documentation"): in README.md and docs/*.md a ```python block
runs, the page's blocks in order in one fresh namespace; a ```console block runs each ``$ command``
line in a shell (a trailing ``\\`` continues it) and every other line of the block must appear in
that command's output; a ```python block whose first line is ``# file: NAME`` is written to NAME
instead. ```bash and ```text blocks are shown, not run (the page says why: the default model,
the full main job, a GPU). Pages run in a folder holding the examples' data, as the README's
"Examples" section builds it: ``tiny/`` (``kebench world tiny --scale tiny``), ``tiny-llava/`` (the
``tiny_llava`` fixture), ``metric/`` (this repository's), with HF_ENDPOINT on the local hub server.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kebench_hf.cli_docs import cli_reference

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: pages that hold no examples of their own
REFERENCE_ONLY = {"cli.md", "protocols.md"}
#: pages linked before they exist: docs/protocols.md comes from branch vlkeb (drop this once merged)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
FILE_MARK = re.compile(r"# file: (\S+)\n")
#: seconds one example command may take (the slowest, a few edits on the tiny model, takes seconds)
COMMAND_TIMEOUT = 300


def blocks(page: Path) -> list[tuple[str, str, int]]:
    """(language, code, line) of each fenced block of ``page``."""
    text = page.read_text(encoding="utf-8")
    return [(match[1], match[2], text.count("\n", 0, match.start()) + 1) for match in FENCE.finditer(text)]


def console_steps(code: str) -> list[tuple[str, list[str]]]:
    """A console block's (command, expected output lines), in order."""
    steps: list[tuple[str, list[str]]] = []
    lines = iter(code.splitlines())
    for line in lines:
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\"):
                command = command[:-1] + next(lines).strip()
            steps.append((command, []))
        elif line.strip():
            if not steps:
                raise ValueError(f"console block starts with output, not a '$ ' command: {line!r}")
            steps[-1][1].append(line.strip())
    return steps


def run_command(command: str, env: dict[str, str]) -> tuple[int, str]:
    """Exit status and output (stdout + stderr) of a shell command; on a timeout, its whole process group
    is killed (killing the shell alone would leave the command running)."""
    process = subprocess.Popen(command, shell=True, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return -signal.SIGKILL, f"timed out after {COMMAND_TIMEOUT} s\n{output}"
    return process.returncode, output


@pytest.fixture
def workspace(tmp_path: Path, tiny_world: Path, tiny_llava: Path, hub_server, monkeypatch) -> dict[str, str]:
    """The examples' folder (the cwd) and the environment of their commands."""
    (tmp_path / "tiny").symlink_to(tiny_world.parent)
    (tmp_path / "tiny-llava").symlink_to(tiny_llava)
    (tmp_path / "metric").symlink_to(REPO / "metric")
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, **hub_server.env, "KEBENCH_CACHE": str(tmp_path / "cache"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    monkeypatch.setenv("KEBENCH_CACHE", env["KEBENCH_CACHE"])
    return env


def test_console_steps_read_commands_and_output():
    assert console_steps("$ kebench a \\\n    --b c\nline one\n\n$ kebench d\n") == [
        ("kebench a --b c", ["line one"]), ("kebench d", [])]
    with pytest.raises(ValueError, match="starts with output"):
        console_steps("output\n$ kebench a\n")


@pytest.mark.parametrize("page", [page for page in PAGES if page.name not in REFERENCE_ONLY],
                         ids=lambda page: str(page.relative_to(REPO)))
def test_examples_run(page: Path, workspace: dict[str, str]):
    ran = 0
    namespace: dict[str, object] = {"__name__": f"docs.{page.stem}"}
    for language, code, line in blocks(page):
        where = f"{page.relative_to(REPO)}:{line}"
        if language == "python" and (mark := FILE_MARK.match(code)):
            compile(code, where, "exec")
            Path(mark[1]).write_text(code[mark.end():], encoding="utf-8")
        elif language == "python":
            exec(compile(code, where, "exec"), namespace)  # noqa: S102 - the page's own example
        elif language == "console":
            for command, expected in console_steps(code):
                returncode, output = run_command(command, workspace)
                assert returncode == 0, f"{where}: {command!r} exited {returncode}:\n{output}"
                missing = [text for text in expected if text not in output]
                assert not missing, f"{where}: {command!r} did not print {missing}:\n{output}"
        else:
            assert language in ("bash", "text"), f"{where}: unknown block language {language!r}"
            continue
        ran += 1
    assert ran, f"{page.name} has no runnable example"


def test_cli_reference_is_up_to_date():
    assert (REPO / "docs" / "cli.md").read_text(encoding="utf-8") == cli_reference(), (
        "docs/cli.md is out of date: python -m kebench_hf.cli_docs > docs/cli.md")


def test_cli_reference_names_every_flag():
    """The generator walks every parser, sub-commands of sub-commands included."""
    from kebench_hf.cli import build_parser

    reference = cli_reference()
    parsers = [build_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                parsers += action.choices.values()
            if isinstance(action, argparse._HelpAction):
                continue  # -h/--help: every command has it, and the page says so once
            for flag in action.option_strings:
                assert f"`{flag}" in reference or f", {flag}" in reference, flag
    assert "### `kebench leaderboard update`" in reference


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of the headings of ``page``: lower case, punctuation dropped, spaces as ``-``."""
    headings = re.findall(r"^#+ (.*)$", FENCE.sub("", page.read_text(encoding="utf-8")), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_links_between_pages_resolve():
    """Every relative Markdown link of the README and docs/ names a file that exists, and a heading of it."""
    broken = []
    for page in [*PAGES, REPO / "benchmarks" / "RESULTS.md", REPO / "dataset_script" / "README.md"]:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            linked = (page.parent / target).resolve() if target else page
            if not linked.exists() or anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page.relative_to(REPO)} -> {target}#{anchor}")
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_headings_nest(page: Path):
    """One title, and no heading deeper than one level below the heading before it."""
    levels = [len(marks) for marks in re.findall(r"^(#+) ", FENCE.sub("", page.read_text(encoding="utf-8")), re.M)]
    assert levels.count(1) == 1 and levels[0] == 1, levels
    assert all(b <= a + 1 for a, b in zip(levels, levels[1:], strict=False)), levels


def test_readme_is_a_front_door():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert "<!--" not in text
    for task in ("(#main-job)", "(#score-your-own-predictions)", "(#run-a-method-on-your-own-model)",
                 "(docs/methods.md#adding-a-method)"):
        assert task in text, task
