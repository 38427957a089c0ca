"""Leaderboard submissions: validation, re-scoring, results rows, .eval_results (no hub, no browser)."""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from huggingface_hub import parse_eval_result_entries
from huggingface_hub.hf_api import RepoFile

from kebench_hf.leaderboard.results import (
    RESULTS_FILE,
    RESULTS_SCHEMA,
    eval_results_yaml,
    leaderboard_rows,
    ranked_groups,
    read_results,
    result_rows,
    results_card,
    results_parquet,
)
from kebench_hf.leaderboard.service import score_submission, submission_files
from kebench_hf.leaderboard.submission import Limits, SubmissionError, validate_run_dir
from kebench_hf.leaderboard.synthetic import synthetic_run
from metric.kebench import DISPLAY_NAMES, METRICS, score_predictions

#: the edit config has no edit-one-hop cases: that score is None, never 0
PERFECT = {**dict.fromkeys(METRICS, 100.0), "edit_onehop": None}
ZERO = {**dict.fromkeys(METRICS, 0.0), "edit_onehop": None}

HOPS = {"eval-00000": [1, 2]}
FOLDER = "submissions/org--tiny-llava/ft_llm/20260101T000000Z"


@pytest.fixture(scope="module")
def perfect_run(tmp_path_factory, leaderboard_reference) -> Path:
    return synthetic_run(
        tmp_path_factory.mktemp("runs") / "perfect", leaderboard_reference, HOPS, model="org/tiny-llava",
        method="ft_llm", skill=1.0,
    )


@pytest.fixture
def run_copy(tmp_path, perfect_run) -> Path:
    return Path(shutil.copytree(perfect_run, tmp_path / "run"))


def test_a_perfect_run_scores_100_everywhere_in_both_protocols(perfect_run, leaderboard_reference):
    submission = validate_run_dir(perfect_run, leaderboard_reference)
    assert submission.protocols == ("token", "generate")
    scores = score_submission(submission)
    for protocol in ("token", "generate"):
        assert scores[protocol]["scores"] == PERFECT
        assert (scores[protocol]["preset"], scores[protocol]["average"]) == ("kebench", "case")
        assert scores[protocol]["counts"]["reliability"] == 2
        assert scores[protocol]["counts"]["portability"] == 1
    assert scores["token"]["portability_by_hop"] == {"1": 100.0, "2": 100.0}


def test_a_run_that_misses_everything_scores_0_not_its_self_reported_numbers(tmp_path, leaderboard_reference):
    run = synthetic_run(tmp_path / "zero", leaderboard_reference, HOPS, model="m/x", method="ike", skill=0.0)
    (run / "scores.json").write_text(json.dumps({"scores": dict.fromkeys(METRICS, 99.0)}))
    scores = score_submission(validate_run_dir(run, leaderboard_reference))
    # skill 0: every post-edit token misses its target and every locality position changed
    assert scores["token"]["scores"] == ZERO
    assert scores["generate"]["scores"] == ZERO


def test_a_run_without_generations_is_ranked_in_the_token_protocol_only(tmp_path, leaderboard_reference):
    run = synthetic_run(tmp_path / "tok", leaderboard_reference, HOPS, model="m/x", method="ike", generate=False)
    assert validate_run_dir(run, leaderboard_reference).protocols == ("token",)


def test_results_rows_round_trip_in_a_stable_order(perfect_run, leaderboard_reference):
    submission = validate_run_dir(perfect_run, leaderboard_reference)
    rows = result_rows(submission, FOLDER, score_submission(submission), "2026-01-01T00:00:00Z", "http://hub/pr/1")
    assert [row["protocol"] for row in rows] == ["token", "generate"]
    token = rows[0]
    assert token["model"] == "org/tiny-llava" and token["model_family"] == "llava" and token["method"] == "ft_llm"
    assert (token["preset"], token["average"], token["edit_onehop"]) == ("kebench", "case", None)
    assert token["reliability"] == 100.0 and token["reliability_ci_low"] == 100.0
    assert token["portability_by_hop"] == [{"hop": 1, "score": 100.0}, {"hop": 2, "score": 100.0}]
    assert token["cases"] == 2 and token["seconds_per_edit"] == 0.5
    assert token["dataset_fingerprint"] == leaderboard_reference.fingerprint
    data = results_parquet(rows)
    assert results_parquet(rows[::-1]) == data
    path = perfect_run.parent / "results.parquet"
    path.write_bytes(data)
    assert read_results(path) == rows


def test_eval_results_file_is_what_huggingface_hub_parses(perfect_run, leaderboard_reference):
    submission = validate_run_dir(perfect_run, leaderboard_reference)
    rows = result_rows(submission, FOLDER, score_submission(submission), "2026-01-01T00:00:00Z", "http://hub/pr/1")
    entries = parse_eval_result_entries(yaml.safe_load(eval_results_yaml(rows, "org/kebench")))
    assert len(entries) == 12  # 6 metrics x 2 protocols
    assert {entry.task_id for entry in entries} == set(METRICS)
    assert all(entry.dataset_id == "org/kebench" and entry.value == 100.0 for entry in entries)
    assert {entry.notes for entry in entries} == {
        "method=ft_llm, preset=kebench, protocol=generate",
        "method=ft_llm, preset=kebench, protocol=token",
    }
    assert entries[0].source_url == "http://hub/pr/1"


def _run_with(tmp_path, reference, name: str, **run_fields) -> Path:
    """A synthetic KE run whose run.json says ``run_fields``."""
    run = synthetic_run(tmp_path / name, reference, HOPS, model=f"org/{name}", method="ke", skill=0.5, seed=len(name))
    path = run / "run.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **run_fields}))
    return run


def _rows_of(run: Path, reference, date: str = "2026-01-01T00:00:00Z") -> list[dict]:
    submission = validate_run_dir(run, reference)
    return result_rows(submission, f"submissions/{run.name}/ke/x", score_submission(submission), date, "http://pr")


def test_preset_and_average_come_from_run_json_and_old_runs_are_kebench_by_case(tmp_path, leaderboard_reference):
    old = synthetic_run(tmp_path / "old", leaderboard_reference, HOPS, model="org/old", method="ke", skill=0.5)
    path = old / "run.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "preset"}))
    assert {(row["preset"], row["average"]) for row in _rows_of(old, leaderboard_reference)} == {("kebench", "case")}

    micro = _run_with(tmp_path, leaderboard_reference, "micro", preset="vlkeb", average="token")
    rows = {row["protocol"]: row for row in _rows_of(micro, leaderboard_reference)}
    assert (rows["token"]["preset"], rows["token"]["average"]) == ("vlkeb", "token")
    # generations are judged whole: that row averages over cases and says so
    assert (rows["generate"]["preset"], rows["generate"]["average"]) == ("vlkeb", "case")
    predictions = pq.read_table(micro / "predictions.parquet")
    assert rows["token"]["portability"] == pytest.approx(
        score_predictions(predictions, average="token")["scores"]["portability"]
    )
    for field, value in (("preset", "easyedit"), ("average", "macro")):
        broken = _run_with(tmp_path, leaderboard_reference, f"bad-{field}", **{field: value})
        with pytest.raises(SubmissionError, match=rf"run.json: field '{field}' must be one of"):
            validate_run_dir(broken, leaderboard_reference)


def test_rows_of_different_presets_or_protocols_are_never_ranked_together(tmp_path, leaderboard_reference):
    kebench = _run_with(tmp_path, leaderboard_reference, "ours")
    vlkeb = _run_with(tmp_path, leaderboard_reference, "reference", preset="vlkeb")
    perfect_vlkeb = synthetic_run(
        tmp_path / "perfect-vlkeb", leaderboard_reference, HOPS, model="org/perfect", method="ft_llm", skill=1.0,
        preset="vlkeb",
    )
    rows = [*_rows_of(kebench, leaderboard_reference), *_rows_of(vlkeb, leaderboard_reference),
            *_rows_of(perfect_vlkeb, leaderboard_reference)]
    groups = ranked_groups(rows)
    assert list(groups) == [("kebench", "generate"), ("kebench", "token"), ("vlkeb", "generate"), ("vlkeb", "token")]
    for (preset, protocol), members in groups.items():
        assert {(row["preset"], row["protocol"]) for row in members} == {(preset, protocol)}
    assert [row["model"] for row in groups[("kebench", "token")]] == ["org/ours"]
    assert [row["model"] for row in groups[("vlkeb", "token")]][0] == "org/perfect"  # best first
    card = results_card(rows)
    sections = card.split("### ")[1:]
    assert [section.splitlines()[0] for section in sections] == [
        f"preset `{preset}`, protocol `{protocol}`" for preset, protocol in groups
    ]
    # the kebench tables hold no vlkeb model, and every table titles the scores as the metric does
    for section in sections:
        if section.startswith("preset `kebench`"):
            assert "org/ours" in section and "org/perfect" not in section and "org/reference" not in section
    assert all(DISPLAY_NAMES["edit_onehop"] in section for section in sections)


def test_the_app_shows_one_preset_and_protocol_at_a_time(tmp_path, leaderboard_reference):
    from kebench_hf.leaderboard.app import display_table, load_results, select

    kebench = _run_with(tmp_path, leaderboard_reference, "ours")
    vlkeb = _run_with(tmp_path, leaderboard_reference, "reference", preset="vlkeb")
    results = tmp_path / "results"
    (results / RESULTS_FILE).parent.mkdir(parents=True)
    rows = [*_rows_of(kebench, leaderboard_reference), *_rows_of(vlkeb, leaderboard_reference)]
    (results / RESULTS_FILE).write_bytes(results_parquet(rows))
    frame = load_results(str(results))
    assert frame.attrs["scores"] == DISPLAY_NAMES  # from the results file: the app imports no metric
    every = {"families": ["llava"], "methods": ["ke"], "search": ""}
    for preset, model in (("kebench", "org/ours"), ("vlkeb", "org/reference")):
        for protocol in ("token", "generate"):
            chosen = select(frame, preset, protocol, **every)
            assert list(chosen["model"]) == [model]
            table = display_table(chosen, frame.attrs["scores"])
            assert list(table["Preset"]) == [preset] and list(table["Protocol"]) == [protocol]
            assert [header for header in table.columns if header in DISPLAY_NAMES.values()] == list(
                DISPLAY_NAMES.values()
            )


def test_results_written_before_preset_and_edit_onehop_existed_still_read(tmp_path, perfect_run, leaderboard_reference):
    rows = _rows_of(perfect_run, leaderboard_reference)
    new_columns = {"preset", "average", *(f"edit_onehop{suffix}" for suffix in ("", "_ci_low", "_ci_high"))}
    old = pa.Table.from_pylist(rows, schema=RESULTS_SCHEMA).drop_columns(sorted(new_columns))
    path = tmp_path / "old.parquet"
    pq.write_table(old, path)
    assert read_results(path) == [{**row, "preset": "kebench", "average": "case"} for row in rows]


def test_edit_onehop_rows_are_refused_on_the_edit_config(run_copy, leaderboard_reference):
    extra = pq.read_table(run_copy / "predictions.parquet").slice(0, 1)
    extra = _set_column(extra, "metric", pa.array(["edit_onehop"]))
    _rewrite_predictions(run_copy, lambda table: pa.concat_tables([table, extra]))
    with pytest.raises(SubmissionError, match=r"1 'edit_onehop' row case id\(s\) are not in the test split"):
        validate_run_dir(run_copy, leaderboard_reference)


# -- edit-one-hop runs fill the edit rows' column ----------------------------------------------------
def _onehop_rows(tmp_path, reference, name: str, date: str, skill: float = 1.0, **run_fields) -> list[dict]:
    """Results rows of a synthetic edit-one-hop run of org/tiny-llava + ft_llm (the perfect run's)."""
    run = synthetic_run(tmp_path / name, reference.onehop, {}, model="org/tiny-llava", method="ft_llm", skill=skill,
                        seed=len(name))
    path = run / "run.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **run_fields}))
    submission = validate_run_dir(run, reference)
    return result_rows(submission, f"submissions/onehop/ft_llm/{name}", score_submission(submission), date, "http://pr")


def test_an_edit_onehop_run_is_scored_on_edit_onehop_only(tmp_path, leaderboard_reference):
    assert leaderboard_reference.onehop is not None and leaderboard_reference.onehop.config == "edit_onehop"
    rows = _onehop_rows(tmp_path, leaderboard_reference, "onehop", "2026-01-02T00:00:00Z")
    assert [row["protocol"] for row in rows] == ["token", "generate"]
    for row in rows:
        assert row["config"] == "edit_onehop" and row["edit_onehop"] == 100.0
        assert all(row[name] is None for name in METRICS)
        assert row["cases"] == len(leaderboard_reference.onehop.case_ids["edit_onehop"])


def test_an_edit_onehop_run_fills_the_column_of_the_same_models_edit_rows(tmp_path, perfect_run, leaderboard_reference):
    edit_rows = _rows_of(perfect_run, leaderboard_reference)  # org/tiny-llava + ft_llm, kebench preset
    other = _rows_of(_run_with(tmp_path, leaderboard_reference, "other"), leaderboard_reference)
    older = _onehop_rows(tmp_path, leaderboard_reference, "older", "2026-01-02T00:00:00Z", skill=0.0)
    newer = _onehop_rows(tmp_path, leaderboard_reference, "newer", "2026-01-03T00:00:00Z")
    vlkeb = _onehop_rows(tmp_path, leaderboard_reference, "vlkeb", "2026-01-04T00:00:00Z", skill=0.0, preset="vlkeb")
    path = tmp_path / "results.parquet"
    path.write_bytes(results_parquet([*edit_rows, *other, *older, *newer, *vlkeb]))
    stored = read_results(path)
    filled = [row for row in stored if row["config"] == "edit" and row["model"] == "org/tiny-llava"]
    assert {row["protocol"] for row in filled} == {"token", "generate"}
    for row in filled:  # the newest run of the same model, method, preset and protocol; not the vlkeb one
        assert (row["edit_onehop"], row["edit_onehop_submission"]) == (100.0, "submissions/onehop/ft_llm/newer")
        assert row["reliability"] == 100.0  # its own scores untouched
    assert all(row["edit_onehop"] is None and row["edit_onehop_submission"] is None
               for row in stored if row["model"] == "org/other")
    # the rankings show the edit rows, the filled column included
    groups = ranked_groups(leaderboard_rows(stored))
    assert {row["config"] for members in groups.values() for row in members} == {"edit"}
    ours = next(row for row in groups[("kebench", "token")] if row["model"] == "org/tiny-llava")
    assert ours["edit_onehop"] == 100.0
    entries = parse_eval_result_entries(yaml.safe_load(eval_results_yaml(
        [row for row in stored if row["model"] == "org/tiny-llava"], "org/kebench")))
    assert len(entries) == 14  # 6 metrics + edit-one-hop, x 2 protocols, from the edit rows only
    # rewriting the stored rows gives the same bytes (filling is a function of the rows)
    assert results_parquet(stored) == path.read_bytes()


def test_edit_onehop_runs_with_other_rows_or_without_a_reference_are_refused(tmp_path, leaderboard_reference):
    run = synthetic_run(tmp_path / "onehop", leaderboard_reference.onehop, {}, model="m/x", method="ike")
    with pytest.raises(SubmissionError, match=r"this run is on config 'edit_onehop'"):
        validate_run_dir(run, replace(leaderboard_reference, onehop=None))
    extra = pq.read_table(run / "predictions.parquet").slice(0, 1)
    _rewrite_predictions(run, lambda table: pa.concat_tables([table, _set_column(extra, "metric", pa.array(["reliability"]))]))
    with pytest.raises(SubmissionError, match=r"1 'reliability' row case id\(s\) are not in the test split"):
        validate_run_dir(run, leaderboard_reference)


def _rewrite_predictions(run: Path, change) -> None:
    path = run / "predictions.parquet"
    pq.write_table(change(pq.read_table(path)), path)


def _edit_run_json(run: Path, text_change) -> None:
    path = run / "run.json"
    path.write_text(text_change(path.read_text()))


def _set_column(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, values)


BROKEN_RUNS = {
    "truncated": (
        lambda run: (run / "predictions.parquet").write_bytes((run / "predictions.parquet").read_bytes()[:3000]),
        "predictions file predictions.parquet is not readable Parquet",
    ),
    "pickle": (
        lambda run: (run / "predictions.parquet").write_bytes(pickle.dumps({"case_id": ["eval-00000"]})),
        "predictions file predictions.parquet is not readable Parquet",
    ),
    "empty jsonl": (
        lambda run: ((run / "predictions.parquet").unlink(), (run / "predictions.jsonl").write_text("")),
        "predictions file predictions.jsonl is empty",
    ),
    "no predictions": (lambda run: (run / "predictions.parquet").unlink(), "holds no predictions file"),
    "nan in run.json": (
        lambda run: _edit_run_json(run, lambda text: text.replace('"seconds_per_edit": 0.5', '"seconds_per_edit": NaN')),
        "non-finite number NaN",
    ),
    "overflow in run.json": (
        lambda run: _edit_run_json(run, lambda text: text.replace('"seconds_per_edit": 0.5', '"seconds_per_edit": 1e999')),
        "non-finite number 1e999",
    ),
    "run.json not an object": (lambda run: _edit_run_json(run, lambda text: "[1, 2]"), "must hold a JSON object"),
    "no model family": (
        lambda run: _edit_run_json(run, lambda text: text.replace('"model_family": "llava"', '"model_family": 3')),
        "field 'model_family' must be a printable string",
    ),
    "other dataset version": (
        lambda run: _edit_run_json(run, lambda text: text.replace('"dataset_fingerprint": "', '"dataset_fingerprint": "0')),
        "run on dataset version",
    ),
    "other split": (
        lambda run: _edit_run_json(run, lambda text: text.replace('"config": "edit"', '"config": "multihop"')),
        "this run is on config 'multihop'",
    ),
    "wrong case id": (
        lambda run: _rewrite_predictions(
            run, lambda t: _set_column(t, "case_id", pc.replace_substring(t["case_id"], "eval-00001", "eval-09999"))
        ),
        "not in the test split, e.g. ['eval-09999']",
    ),
    "metric missing for a case": (
        lambda run: _rewrite_predictions(
            run,
            lambda t: t.filter(pc.invert(pc.and_(pc.equal(t["metric"], "i_locality"), pc.equal(t["case_id"], "eval-00001")))),
        ),
        "1 test case id(s) have no 'i_locality' rows, e.g. ['eval-00001']",
    ),
    "float token ids": (
        lambda run: _rewrite_predictions(
            run, lambda t: _set_column(t, "hop", pa.array([float("nan")] * t.num_rows, pa.float64()))
        ),
        "column 'hop'",
    ),
}


@pytest.mark.parametrize("breakage", list(BROKEN_RUNS))
def test_a_broken_run_is_rejected_with_its_reason(breakage, run_copy, leaderboard_reference):
    damage, reason = BROKEN_RUNS[breakage]
    damage(run_copy)
    with pytest.raises(SubmissionError) as error:
        validate_run_dir(run_copy, leaderboard_reference)
    assert reason in str(error.value)


def test_an_oversized_file_is_rejected_before_it_is_read(run_copy, leaderboard_reference):
    with pytest.raises(SubmissionError, match=r"predictions.parquet is \d+ bytes, over the limit of 100"):
        validate_run_dir(run_copy, leaderboard_reference, Limits(predictions_bytes=100))


def _entry(path: str, size: int = 10, oid: str = "a" * 40) -> RepoFile:
    return RepoFile(path=path, size=size, oid=oid)


MAIN = {".gitattributes": "g" * 40, f"{FOLDER}/run.json": "r" * 40}
NEW = "submissions/org--m/ike/20260102T000000Z"
GOOD_PR = [_entry(path, oid=oid) for path, oid in MAIN.items()] + [
    _entry(f"{NEW}/run.json"), _entry(f"{NEW}/card.md"), _entry(f"{NEW}/predictions.parquet", 5000)
]


def test_a_pull_request_file_list_names_one_submission_folder():
    folder, files = submission_files(GOOD_PR, MAIN, set(MAIN), Limits())
    assert folder == NEW
    assert files == {"run.json": 10, "card.md": 10, "predictions.parquet": 5000}


HOSTILE_PRS = {
    "path traversal": ([_entry(f"{NEW}/../../../../etc/run.json")], "folder of plain names"),
    "dot-dot folder": ([_entry("submissions/../m/20260101/run.json")], "folder of plain names"),
    "pickle file": ([_entry(f"{NEW}/predictions.pkl")], "predictions.pkl' is not allowed"),
    "outside submissions": ([_entry("README.md")], "folder of plain names"),
    "two folders": ([_entry("submissions/a/b/c/run.json")], "one submission per pull request"),
    "oversized": ([_entry(f"{NEW}/card.md", size=10**6)], "over the limit of 32768"),
    "two prediction files": ([_entry(f"{NEW}/predictions.jsonl")], "exactly one of"),
}


@pytest.mark.parametrize("hostility", list(HOSTILE_PRS))
def test_a_hostile_pull_request_is_rejected_from_its_file_list(hostility):
    extra, reason = HOSTILE_PRS[hostility]
    pr = [entry for entry in GOOD_PR if not (hostility == "oversized" and entry.path.endswith("card.md"))] + extra
    with pytest.raises(SubmissionError) as error:
        submission_files(pr, MAIN, set(MAIN), Limits())
    assert reason in str(error.value)


def test_a_pull_request_opened_before_later_merges_is_judged_against_its_base():
    merged_since = {f"{FOLDER.replace('ft_llm', 'mend')}/run.json"}
    assert submission_files(GOOD_PR, MAIN, set(MAIN) | merged_since, Limits())[0] == NEW
    with pytest.raises(SubmissionError, match="changes an existing file"):
        submission_files(GOOD_PR, MAIN, set(MAIN) | {f"{NEW}/card.md"}, Limits())


def test_a_pull_request_may_not_touch_merged_submissions():
    changed = [_entry(path, oid="c" * 40) if path.endswith("run.json") and FOLDER in path else _entry(path, oid=oid)
               for path, oid in MAIN.items()]
    with pytest.raises(SubmissionError, match="changes an existing file"):
        submission_files(changed + GOOD_PR[2:], MAIN, set(MAIN), Limits())
    with pytest.raises(SubmissionError, match="only add files; it removes"):
        submission_files([entry for entry in GOOD_PR if entry.path != f"{FOLDER}/run.json"], MAIN, set(MAIN), Limits())
    with pytest.raises(SubmissionError, match="has no card.md"):
        submission_files([entry for entry in GOOD_PR if not entry.path.endswith("card.md")], MAIN, set(MAIN), Limits())
