"""``kebench run --streaming``: the split read with ``load_dataset(streaming=True)`` from a Parquet export."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from editors.cases import stream_split
from editors.defaults import SHIPPED_DEFAULT_MODEL
from kebench_hf.cli import main
from kebench_hf.export import export_release

LIMIT = 4


@pytest.fixture(scope="module")
def exported(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "kebench"
    export_release(tiny_world, out, configs=["edit"], shard_size=3)  # several shards: a stream crosses them
    return out


def run(data, out, *extra):
    assert main(["run", "--method", "ft-llm", "--model", str(SHIPPED_DEFAULT_MODEL), "--data", str(data),
                 "--out", str(out), "--limit", str(LIMIT), "--no-generate", *extra]) == 0
    return pq.read_table(out / "predictions.parquet").to_pylist()


def test_streaming_gives_the_predictions_of_the_loaded_split(exported, tmp_path):
    streamed = run(exported, tmp_path / "streamed", "--streaming")
    assert streamed == run(exported, tmp_path / "loaded")
    info = [json.loads((tmp_path / name / "run.json").read_text()) for name in ("streamed", "loaded")]
    assert info[0]["streaming"] and not info[1]["streaming"]
    assert info[0]["dataset_fingerprint"] == info[1]["dataset_fingerprint"]  # same cases, read either way


def test_the_stream_knows_its_size_and_decodes_no_image(exported, tiny_world):
    from editors.cases import load_split

    stream, total = stream_split(exported, "edit", "test")
    assert total == len(load_split(tiny_world, "edit", "test"))
    first = next(iter(stream))
    assert set(first["image"]) == {"bytes", "path"}  # undecoded: a case decodes its own images when built


def test_a_release_directory_cannot_be_streamed(tiny_world, tmp_path, capsys):
    assert main(["run", "--method", "none", "--data", str(tiny_world), "--out", str(tmp_path / "r"),
                 "--streaming"]) == 1
    assert "exported dataset" in capsys.readouterr().err
