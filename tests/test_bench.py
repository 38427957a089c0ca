"""``kebench bench`` shapes and the GPU check script (run here on the CPU, same code path)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from editors.bench import LLAVA_1_5_7B, bench_methods, shape_model
from editors.methods import METHODS, method_names
from editors.tiny import BUILDERS
from kebench_hf.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
#: ``llava-hf/llava-1.5-7b-hf``'s parameter count (Vicuna-7B with 32064 tokens, CLIP ViT-L/14-336, projector)
LLAVA_1_5_7B_PARAMETERS = 7_063_427_072


def test_the_7b_shape_has_every_dimension_of_llava_1_5_7b():
    with torch.device("meta"):  # shapes only: no memory
        model, processor = BUILDERS["llava"](["a corpus for the tokenizer"] * 4, LLAVA_1_5_7B)
    assert sum(parameter.numel() for parameter in model.parameters()) == LLAVA_1_5_7B_PARAMETERS
    text, vision = model.config.text_config, model.config.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.num_attention_heads,
            text.vocab_size) == (4096, 11008, 32, 32, 32064)
    assert (vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers, vision.num_attention_heads,
            vision.image_size, vision.patch_size) == (1024, 4096, 24, 16, 336, 14)
    inputs = processor(images=[Image.new("RGB", (32, 32))], text=["USER: <image>\nq ASSISTANT:"], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_index).sum()) == 576


def test_a_shape_is_built_once_in_the_asked_dtype(tiny_world, tmp_path, monkeypatch):
    from transformers import AutoModelForImageTextToText

    monkeypatch.setenv("KEBENCH_CACHE", str(tmp_path))
    path = shape_model("deep-narrow", tiny_world, dtype=torch.bfloat16)
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}
    assert model.config.text_config.num_hidden_layers == 32
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert shape_model("deep-narrow", tiny_world) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob("models/*.partial"))
    with pytest.raises(ValueError, match="unknown shape 'llava-70b'; known: tiny, deep-narrow, llava-7b"):
        shape_model("llava-70b", tiny_world)


def test_an_unknown_bench_shape_is_a_one_line_error(capsys):
    assert main(["bench", "--shape", "huge"]) == 1
    assert capsys.readouterr().err == "kebench: error: unknown shape 'huge'; known: tiny, deep-narrow, llava-7b\n"


def test_the_bench_times_the_registered_methods_that_need_no_training(capsys):
    assert bench_methods() == [name for name in method_names() if not METHODS[name].trained]
    assert {"ft-llm", "ike"} <= set(bench_methods()) and "mend" not in bench_methods()
    assert main(["bench", "--method", "mend"]) == 1
    assert capsys.readouterr().err == f"kebench: error: method 'mend' is trained; kebench bench times {', '.join(bench_methods())}\n"
    assert main(["bench", "--method", "nonesuch"]) == 1
    assert "unknown editing method 'nonesuch'" in capsys.readouterr().err


def test_the_gpu_check_script_runs_every_step(tiny_world, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "KEBENCH_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--out", str(out), "--device", "cpu", "--shape", "deep-narrow",
         "--limit", "2", "--bench-limit", "1", "--data", str(tiny_world), "--max-memory", "cpu=3MiB"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "FAILED" not in report
    assert report.count("\n## ") == 5
    assert "process 1 on cpu" in report and "device map: ['cpu', 'disk']" in report
    assert f"| deep-narrow | {platform.machine()} | bfloat16 | 2 |" in report
    assert "| deep-narrow | ike | 2 |" in report
    info = json.loads((out / "deep-narrow-ft-llm-run.json").read_text())
    assert (info["dtype"], info["cases"], info["failed_cases"]) == ("bfloat16", 2, 0)
    assert info["seconds_per_edit"] > 0 and info["peak_memory_mib"] > 0
    scores = json.loads((out / "deep-narrow-ft-llm-scores.json").read_text())
    assert set(scores) == {"token", "generate"}
