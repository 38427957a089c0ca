"""A model family from outside the repository: an adapter plugin found through its package's entry
point (``kebench.adapters``, real ``importlib.metadata`` discovery), and a model that runs its own
repository's code only with ``--trust-remote-code``."""

from __future__ import annotations

import json
import shutil
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from editors.adapters import PLUGIN_GROUP, adapter_class, load_adapter, plugin_adapters
from kebench_hf.cli import main

PLUGIN = Path(__file__).parent / "fixtures" / "adapter-plugin"


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The plugin package as ``pip install`` leaves it, in a site directory on ``sys.path``."""
    site = tmp_path / "site"
    shutil.copytree(PLUGIN / "site", site)
    monkeypatch.syspath_prepend(str(site))
    return site


@pytest.fixture
def remote_code_model(tiny_models: dict[str, Path], tmp_path: Path) -> Path:
    """A tiny LLaVA whose config names classes in the model directory's own code (``auto_map``)."""
    model = tmp_path / "remote-llava"
    shutil.copytree(tiny_models["llava"], model)
    for code in (PLUGIN / "remote-code").glob("*.py"):
        shutil.copy(code, model / code.name)
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="remote_llava", auto_map={
        "AutoConfig": "configuration_remote_llava.RemoteLlavaConfig",
        "AutoModelForImageTextToText": "modeling_remote_llava.RemoteLlavaForConditionalGeneration",
    })
    (model / "config.json").write_text(json.dumps(config))
    return model


def test_plugin_is_found_through_its_entry_point(installed_plugin: Path) -> None:
    assert "remote-llava" in [entry.name for entry in entry_points(group=PLUGIN_GROUP)]
    adapter = adapter_class("remote_llava")
    assert adapter.__module__ == "kebench_demo_plugin" and adapter.family == "remote-llava"
    assert set(plugin_adapters()) == {"remote-llava"}


def test_without_the_plugin_the_family_is_refused_with_the_ways_in() -> None:
    with pytest.raises(ValueError, match=r"no model adapter for model_type 'remote_llava'.*kebench.adapters"):
        adapter_class("remote_llava")


def test_remote_code_runs_only_when_trusted(installed_plugin: Path, remote_code_model: Path, tiny_world: Path,
                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    command = ["run", "--method", "ft-llm", "--model", str(remote_code_model), "--data", str(tiny_world),
               "--limit", "1", "--no-generate", "--set", "steps=3"]
    assert main([*command, "--out", str(tmp_path / "untrusted")]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after datasets' progress bars, when it builds the split
    assert error.startswith("kebench: error: model ") and "runs code from its own repository; pass --trust-remote-code" in error
    with pytest.raises(ValueError, match="--trust-remote-code"):
        load_adapter(remote_code_model)

    out = tmp_path / "trusted"
    assert main([*command, "--trust-remote-code", "--out", str(out)]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["trust_remote_code"] is True and info["failed_cases"] == 0
    assert info["model_family"] == "remote-llava"
    assert info["model_adapter"] == "kebench_demo_plugin:RemoteLlavaAdapter"
    assert info["model_class"] == "RemoteLlavaForConditionalGeneration"
    scores = json.loads((out / "scores.json").read_text())["token"]["scores"]
    assert scores["reliability"] is not None and scores["t_locality"] is not None
