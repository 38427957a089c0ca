"""``kebench run``: the run directory, one-line errors, and every model family end to end."""

from __future__ import annotations

import json
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
import torch

from editors import run as runs
from editors.queries import DEFAULT_CONFIG, case_queries
from editors.report import plot_scores
from editors.run_dir import RunSettings
from kebench_hf.cli import main
from metric.kebench import PREDICTION_SCHEMA, score_predictions


def test_run_writes_predictions_scores_and_run_info(tiny_llava, tiny_world, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--method", "ft-llm", "--model", str(tiny_llava), "--data", str(tiny_world), "--limit", "2",
            "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| ft-llm |" in printed and "method (generate)" in printed

    table = pq.read_table(out / "predictions.parquet")
    assert table.schema.equals(PREDICTION_SCHEMA)
    assert len(set(table.column("case_id").to_pylist())) == 2
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores) == {"token", "generate"}
    for protocol in ("token", "generate"):
        assert scores[protocol]["scores"] == score_predictions(table, protocol=protocol, bootstrap=0)["scores"]
    assert all(text for text in table.column("post_text").to_pylist()), "generations are recorded"

    info = json.loads((out / "run.json").read_text())
    assert info["model_family"] == "llava" and info["method"] == "ft-llm"
    assert info["hyperparameters"]["steps"] == 10 and info["split"] == "test" and info["cases"] == 2
    assert len(info["dataset_fingerprint"]) == 64 and info["failed_cases"] == 0
    assert info["seconds_per_edit"] > 0 and info["peak_memory_mib"] > 0
    assert {"torch", "transformers", "datasets"} <= set(info["versions"])
    assert info["abilities_measured_on_this_data"] is True  # tiny_llava was pretrained on tiny_world

    png = plot_scores({"ft-llm": scores}, tmp_path / "scores.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_same_command_writes_the_same_predictions_and_no_generate_scores_tokens_only(
    tiny_llava, tiny_world, tmp_path, capsys
):
    outs = [tmp_path / "first", tmp_path / "second"]
    for out in outs:
        assert main(["run", "--method", "ft-llm", "--model", str(tiny_llava), "--data", str(tiny_world),
                     "--limit", "2", "--no-generate", "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert "method (token)" in printed and "method (generate)" not in printed
    first, second = (pq.read_table(out / "predictions.parquet") for out in outs)
    assert first.equals(second)
    scores = [json.loads((out / "scores.json").read_text()) for out in outs]
    assert set(scores[0]) == {"token"} and scores[0] == scores[1]


def _error(argv: list[str], capsys) -> str:
    assert main(argv) == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith("kebench: error:") and "\n" not in message, message
    return message


def test_bad_input_is_a_one_line_error(tiny_llava, tiny_world, tmp_path, capsys):
    data = ["--data", str(tiny_world), "--model", str(tiny_llava)]
    assert "unknown editing method 'nope'" in _error(["run", "--method", "nope", *data, "--out", str(tmp_path / "a")], capsys)
    assert "no split 'validation'" in _error(
        ["run", "--method", "ft-llm", *data, "--split", "validation", "--out", str(tmp_path / "b")], capsys
    )
    assert "does not support --sequential" in _error(
        ["run", "--method", "ike", *data, "--sequential", "2", "--out", str(tmp_path / "c")], capsys
    )
    assert "--method is required" in _error(["run", "--limit", "3"], capsys)
    assert "--out RUN_DIR is required" in _error(["run", "--method", "ft-llm", *data], capsys)
    assert "expects NAME=VALUE" in _error(["run", "--method", "ft-llm", *data, "--out", "x", "--set", "lr"], capsys)
    assert "unknown device 'tpu'; e.g. cpu, cuda" in _error(
        ["run", "--method", "ft-llm", *data, "--device", "tpu", "--out", str(tmp_path / "e")], capsys
    )
    if not torch.cuda.is_available():
        for command in (["run", "--method", "ft-llm", *data, "--out", str(tmp_path / "f")],
                        ["train-editor", "--method", "ke", *data, "--out", str(tmp_path / "g")],
                        ["bench", "--shape", "deep-narrow"]):
            assert "device 'cuda': no CUDA device here" in _error([*command, "--device", "cuda"], capsys)
        assert not (tmp_path / "f").exists() and not (tmp_path / "g").exists()

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    message = _error(["run", "--method", "ft-llm", "--data", str(tiny_world), "--model", str(bert),
                      "--out", str(tmp_path / "d")], capsys)
    assert "no model adapter for model_type 'bert'" in message

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "predictions.jsonl").write_text("")
    assert "pass --resume" in _error(["run", "--method", "ft-llm", *data, "--out", str(taken)], capsys)


def test_every_model_family_runs_end_to_end(tiny_models, tiny_world, tmp_path):
    from editors.adapters import ADAPTERS

    families = set()
    for arch, model in tiny_models.items():
        scores = runs.run(RunSettings(method="ft-llm", out=tmp_path / arch, model=str(model), data=str(tiny_world),
                                      limit=1, bootstrap=0))
        info = json.loads((tmp_path / arch / "run.json").read_text())
        assert info["failed_cases"] == 0, arch
        families.add(info["model_family"])
        token = scores["token"]["scores"]
        assert all(token[name] is not None for name in ("reliability", "t_locality", "i_locality")), arch
        assert token["reliability"] > 0, f"{arch}: the edit must take hold on its own query"
    assert set(ADAPTERS) <= families, "every registered family ran"


def test_shared_context_prefix_is_exact_in_every_family(tiny_models, tiny_world):
    """Where a family allows it, the engine's KV-cached context gives the plain forward's logits."""
    import torch

    from editors.adapters import load_adapter
    from editors.cases import CaseSequence, load_split
    from editors.forward import model_logits

    case = CaseSequence(load_split(tiny_world, "edit", "test"))[0]
    queries = [replace(query, context="New Fact: a b\nPrompt:") for _, _, query in case_queries(case, DEFAULT_CONFIG)]
    for arch, model in tiny_models.items():
        adapter = load_adapter(model)
        batch = adapter.encode(queries)
        with torch.no_grad():
            logits, offset = model_logits(adapter, batch)
            plain = adapter.model(**batch.inputs).logits
        assert (offset > 0) == adapter.supports_prefix_cache, arch
        torch.testing.assert_close(logits, plain[:, offset:], rtol=1e-4, atol=1e-4, msg=arch)


@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_reduced_precision_runs(tiny_llava, tiny_world, tmp_path, dtype):
    """The dtype is threaded through loading, encoding and editing (as --device cuda --dtype bfloat16 needs)."""
    scores = runs.run(RunSettings(method="ft-llm", out=tmp_path / dtype, model=str(tiny_llava), data=str(tiny_world),
                                  limit=1, dtype=dtype, generate=False, bootstrap=0))
    assert scores["token"]["scores"]["reliability"] is not None
    assert json.loads((tmp_path / dtype / "run.json").read_text())["dtype"] == dtype
