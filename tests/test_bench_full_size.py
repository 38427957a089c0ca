"""benchmarks/bench_full_size.py's figures for runs that were stopped and resumed: wall time summed over
sessions without counting one session's cases twice, CPU seconds per edit without start-up, and the
cases an unfinished run has written (no model is run)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "bench_full_size.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_full_size", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_seconds_per_edit_is_the_slope_after_the_first_case(bench):
    sessions = [
        # start-up (no case yet) excluded: 20 CPU s over cases 10 -> 30
        {"samples": [[0, 0, 50.0], [30, 10, 60.0], [60, 30, 80.0]]},
        # a resumed session: 10 CPU s over cases 30 -> 40
        {"samples": [[100, 30, 40.0], [130, 40, 50.0]]},
        {"samples": [[200, 40, 5.0]]},  # one sample: no slope
    ]
    assert bench.cpu_seconds_per_edit(sessions) == pytest.approx(30 / 30)
    assert bench.cpu_seconds_per_edit([{}]) is None


def test_a_stopped_session_ends_at_its_last_sample_once_another_has_started(bench, tmp_path):
    (tmp_path / "predictions.jsonl").write_text("{}\n")  # written now, by the later session
    stopped = {"started": 100.0, "samples": [[130.0, 1, 0.0], [160.0, 2, 0.0]]}
    assert bench.session_wall(stopped, tmp_path, next_started=170.0) == 60.0
    assert bench.session_wall({"started": 100.0}, tmp_path, next_started=170.0) == 70.0
    assert bench.session_wall({"started": 100.0, "ended": 150.0}, tmp_path, None) == 50.0


def test_an_unfinished_run_reports_the_cases_written(bench, tmp_path):
    out = tmp_path / "full-ft-llm-2-all"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "predictions-0.jsonl").write_text(
        json.dumps({"case_id": "a", "error": None, "seconds": 1.0}) + "\n"
        + json.dumps({"case_id": "c", "error": "bad image", "seconds": 9.0}) + "\n")
    (out / "shards" / "predictions-1.jsonl").write_text(json.dumps({"case_id": "b", "error": None, "seconds": 3.0})
                                                        + "\n" + '{"case_id": "d", "err')  # a torn last line
    sessions = [{"started": 0.0, "peaks": {"11": 500.0, "12": 520.0}, "samples": [[10.0, 1, 1.0], [20.0, 3, 5.0]]},
                {"started": 30.0, "peaks": {"21": 510.0}}]
    out.with_name(out.name + ".sessions.json").write_text(json.dumps(sessions))
    figures = bench.measured(out)
    assert figures["cases"] == 3 and not figures["finished"]
    assert figures["seconds_per_edit"] == pytest.approx(2.0)  # the failed case's time not counted
    assert figures["cpu_per_edit"] == pytest.approx(2.0)
    assert figures["peaks"] == [510.0]  # the last session's (it edited the last cases)
    assert bench.lines(out) == 3  # a torn last line (no newline yet) is not a case written
