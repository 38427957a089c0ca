"""``kebench score`` on Parquet and JSON Lines files, and ``kebench push-metric`` to the local hub."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from kebench_hf.cli import main
from metric.kebench import PREDICTION_FEATURES, score_predictions, to_table
from tests.test_metric import case_rows


@pytest.fixture(scope="module")
def prediction_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The hand-computed rows of test_metric as the editors write them: Parquet and JSON Lines."""
    folder = tmp_path_factory.mktemp("predictions")
    parquet = folder / "predictions.parquet"
    datasets.Dataset.from_list(case_rows(), features=PREDICTION_FEATURES).to_parquet(parquet)
    jsonl = folder / "predictions.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in case_rows()), encoding="utf-8")
    return {"parquet": parquet, "jsonl": jsonl}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_score_json_equals_the_metric(capsys, prediction_files, kind):
    code, out, _ = run_cli(capsys, "score", str(prediction_files[kind]), "--json", "--bootstrap", "100", "--seed", "2")
    assert code == 0
    assert json.loads(out) == score_predictions(case_rows(), bootstrap=100, seed=2)


def test_score_both_protocols(capsys, prediction_files):
    code, out, _ = run_cli(capsys, "score", str(prediction_files["jsonl"]), "--protocol", "both", "--json")
    assert code == 0
    both = json.loads(out)
    assert both == {protocol: score_predictions(case_rows(), protocol=protocol) for protocol in ("token", "generate")}


def test_score_prints_a_table(capsys, prediction_files):
    code, out, _ = run_cli(capsys, "score", str(prediction_files["parquet"]), "--bootstrap", "0")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "14 rows" in out and "protocol: token  preset: kebench  average: case" in out
    # reliability (2/3 + 1) / 2 over 2 cases; portability per hop; answer-only locality
    assert lines["reliability"].split()[1:] == ["83.33", "2", "0"]
    assert lines["i_generality"].split()[1:] == ["0.00", "1", "0"]
    assert "portability 2-hop" in out and "25.00" in out
    assert "t_locality (answer only)" in out
    # edit-one-hop: c1 1/2, c2 0 over 2 cases
    assert lines["edit_onehop"].split()[1:] == ["25.00", "2", "0"]


def test_score_average_and_preset(capsys, prediction_files):
    code, out, _ = run_cli(
        capsys, "score", str(prediction_files["parquet"]), "--average", "token", "--preset", "vlkeb", "--json",
        "--bootstrap", "50",
    )
    assert code == 0
    result = json.loads(out)
    assert result == score_predictions(case_rows(), bootstrap=50, average="token", preset="vlkeb")
    # reliability 3 of 4 answer tokens (the case mean is 83.33)
    assert (result["average"], result["preset"], result["scores"]["reliability"]) == ("token", "vlkeb", 75.0)
    code, out, _ = run_cli(capsys, "score", str(prediction_files["parquet"]), "--average", "token", "--bootstrap", "0")
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert code == 0 and "average: token" in out and lines["reliability"].split()[1] == "75.00"
    for argv, message in (
        (["--average", "macro"], "unknown average 'macro'"),
        (["--preset", "easyedit"], "unknown preset 'easyedit'"),
        (["--protocol", "both", "--average", "token"], "average 'token'"),
    ):
        code, out, err = run_cli(capsys, "score", str(prediction_files["parquet"]), *argv)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_score_file_errors_are_one_line(capsys, tmp_path, prediction_files):
    rows = case_rows()
    rows[2]["pre"] = [[10, 1.5], [5, 11]]
    bad_ids = _write(tmp_path / "bad.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    broken = _write(tmp_path / "broken.jsonl", json.dumps(case_rows()[0]) + "\n{not json\n")
    no_column = tmp_path / "no_column.parquet"
    pq.write_table(to_table(case_rows()).drop_columns(["hop"]), no_column)
    cases = {
        _write(tmp_path / "predictions.csv", "case_id\n"): "unknown extension '.csv'",
        _write(tmp_path / "empty.parquet", ""): "is empty",
        _write(tmp_path / "blank.jsonl", "\n\n"): "predictions are empty",
        _write(tmp_path / "junk.parquet", "not parquet"): "not readable Parquet",
        tmp_path / "absent.jsonl": "not found",
        bad_ids: "row 2, column 'pre'",
        broken: "line 2 (row 1) is not JSON",
        no_column: "missing column(s) ['hop']",
    }
    for path, message in cases.items():
        code, out, err = run_cli(capsys, "score", str(path))
        assert code == 1, path
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert out == ""


def test_push_metric_then_load_it_from_the_hub(capsys, hub_server):
    import evaluate
    from huggingface_hub import HfApi

    repo_id = hub_server.new_repo_id("kebench-metric")
    code, out, _ = run_cli(capsys, "push-metric", "--repo", repo_id)
    assert code == 0 and f'evaluate.load("{repo_id}")' in out
    name = repo_id.split("/")[1]
    files = set(HfApi().list_repo_files(repo_id, repo_type="space"))
    assert {f"{name}.py", "README.md", "app.py", "requirements.txt"} <= files

    module = evaluate.load(repo_id, keep_in_memory=True)
    columns = {column: [row[column] for row in case_rows()] for column in PREDICTION_FEATURES}
    assert module.compute(**columns, bootstrap=100) == score_predictions(case_rows(), bootstrap=100)


def test_push_metric_rejects_a_bad_repo_id(capsys):
    code, _, err = run_cli(capsys, "push-metric", "--repo", "no-slash")
    assert code == 1 and "ORG/NAME" in err
