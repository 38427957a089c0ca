"""The ``kebench`` command line itself: building its parser stays cheap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kebench_hf.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
#: libraries that take seconds to import; only the command that needs one may load it
HEAVY_LIBRARIES = ("torch", "transformers", "datasets", "evaluate", "huggingface_hub", "pyarrow", "gradio")


def test_building_the_parser_imports_no_heavy_library():
    # A fresh interpreter: this test process has imported all of them already.
    probe = (
        "import json, sys\n"
        "from kebench_hf.cli import build_parser\n"
        "build_parser()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    loaded = json.loads(completed.stdout)
    heavy = sorted(module for module in loaded if module.split(".")[0] in HEAVY_LIBRARIES)
    assert not heavy, f"building the parser imported {heavy[:10]}"


def test_score_rejects_an_unknown_protocol_in_one_line(capsys, tmp_path):
    # --protocol has no argparse choices (listing them would import the metric); the handler checks it
    # before reading the predictions file.
    assert main(["score", str(tmp_path / "predictions.jsonl"), "--protocol", "greedy"]) == 1
    error = capsys.readouterr().err
    assert (
        error == "kebench: error: unknown protocol 'greedy'; expected one of ('token', 'generate', 'both')\n"
    )
