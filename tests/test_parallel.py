"""Data-parallel runs: ``kebench run --processes 2`` (accelerate's launcher, gloo on the CPU) against one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import torch

from editors.defaults import SHIPPED_DEFAULT_MODEL
from editors.run_dir import SHARDS, finished_cases
from kebench_hf.cli import main

LIMIT = 4
#: the killed run's cases: enough that the run is still going when its second process has finished one
KILLED_LIMIT = 16
#: the shipped tiny LLaVA (no pretraining to wait for: process start-up is this file's cost)
MODEL = SHIPPED_DEFAULT_MODEL


def arguments(model: Path, data: Path, out: Path, limit: int = LIMIT) -> list[str]:
    return ["run", "--method", "ft-llm", "--model", str(model), "--data", str(data), "--out", str(out),
            "--limit", str(limit), "--no-generate"]


def launched(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, "-m", "kebench_hf.cli", *args, "--processes", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def rows(out: Path) -> list[dict]:
    return pq.read_table(out / "predictions.parquet").to_pylist()


def run_in_one_process(out: Path, data: Path, limit: int = LIMIT) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each launched process
    try:
        assert main(arguments(MODEL, data, out, limit)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def one_process(tiny_world, tmp_path_factory) -> Path:
    return run_in_one_process(tmp_path_factory.mktemp("one") / "run", tiny_world)


def test_two_processes_give_the_one_process_predictions_row_for_row(one_process, tiny_world, tmp_path):
    out = tmp_path / "two"
    process = launched(arguments(MODEL, tiny_world, out))
    log = process.communicate(timeout=600)[0]
    assert process.returncode == 0, log
    assert rows(out) == rows(one_process)
    assert [r["case_id"] for r in finished_cases(out / "predictions.jsonl").values()] == \
        [r["case_id"] for r in finished_cases(one_process / "predictions.jsonl").values()]
    info = json.loads((out / "run.json").read_text())
    assert info["processes"] == 2 and [shard["process"] for shard in info["shards"]] == [0, 1]
    assert sum(shard["cases"] for shard in info["shards"]) == info["cases"] == LIMIT
    assert not (out / SHARDS).exists()  # the run directory is a one-process run's
    assert json.loads((out / "scores.json").read_text()) == json.loads((one_process / "scores.json").read_text())


def test_a_killed_process_resumes_with_nothing_lost_or_done_twice(tiny_world, tmp_path):
    out = tmp_path / "killed"
    process = launched(arguments(MODEL, tiny_world, out, KILLED_LIMIT))
    shard = out / SHARDS / "predictions-1.jsonl"
    deadline = time.monotonic() + 600
    while not (shard.exists() and shard.read_text().count("\n") >= 1):
        assert process.poll() is None and time.monotonic() < deadline, "the second process never finished a case"
        time.sleep(0.2)
    workers = [child for child in psutil.Process(process.pid).children(recursive=True)
               if child.environ().get("LOCAL_RANK") == "1"]
    assert len(workers) == 1
    workers[0].send_signal(signal.SIGKILL)
    process.communicate(timeout=600)
    assert process.returncode != 0
    before = {**finished_cases(out / SHARDS / "predictions-0.jsonl"), **finished_cases(shard)}
    assert 0 < len(before) < KILLED_LIMIT and not (out / "predictions.jsonl").exists()

    resumed = launched([*arguments(MODEL, tiny_world, out, KILLED_LIMIT), "--resume"])
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log
    lines = (out / "predictions.jsonl").read_text().splitlines()
    case_ids = [json.loads(line)["case_id"] for line in lines]
    assert len(case_ids) == len(set(case_ids)) == KILLED_LIMIT  # nothing lost, nothing twice
    after = finished_cases(out / "predictions.jsonl")
    assert all(after[case_id] == record for case_id, record in before.items())  # finished cases not redone
    assert rows(out) == rows(run_in_one_process(tmp_path / "one", tiny_world, KILLED_LIMIT))
