"""The method registry: specs that agree with their classes, and a method from outside the repository
(a module written here, registered by a call or by an installed package's entry point) run through
``kebench run`` without any file of ours changing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import editors.methods
from editors.methods import (
    METHODS,
    MethodSpec,
    get_method,
    method_names,
    register_method,
    trained_method_names,
)
from kebench_hf.cli import main

TOY_MODULE = "kebench_toy_method"
TOY = f'''
"""A toy method: its edit is remembered, the model left alone (it answers as the unedited model)."""

from dataclasses import dataclass

from editors.methods import MethodSpec
from editors.methods.base import AppliedEdit, EditMethod, MethodConfig


@dataclass
class ToyConfig(MethodConfig):
    marker: str = "toy"


class Toy(EditMethod):
    name = "toy"
    config_class = ToyConfig
    supports_sequential = False

    def apply(self, adapter, case):
        self.edited = getattr(self, "edited", []) + [case.case_id]
        return AppliedEdit(adapter)

    def run_info(self):
        return {{"edited": self.edited}}


SPEC = MethodSpec("toy", "{TOY_MODULE}:Toy", "{TOY_MODULE}:ToyConfig", "a toy that edits nothing", sequential=False)
'''


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry for the test (and the entry points read again), so nothing it
    registers outlives it."""
    monkeypatch.setattr(editors.methods, "METHODS", dict(METHODS))
    monkeypatch.setattr(editors.methods, "_discovered", False)
    yield editors.methods.METHODS
    sys.modules.pop(TOY_MODULE, None)


@pytest.fixture
def toy_module(tmp_path: Path, monkeypatch) -> Path:
    """The toy method's module in a folder on ``sys.path``: a method that lives outside the repository."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / f"{TOY_MODULE}.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(folder))
    return folder


@pytest.fixture(scope="module")
def untrained_llava(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny LLaVA (the toy edits nothing, so nothing needs learning)."""
    from editors.cases import CaseSequence, load_split
    from editors.tiny import build_tiny_model

    texts = [value for record in CaseSequence(load_split(tiny_world, "edit", "train")).texts()
             for key, value in record.items() if key != "case_id"]
    return build_tiny_model("llava", texts, tmp_path_factory.mktemp("untrained-llava") / "llava")


def test_every_spec_agrees_with_its_class():
    for name in method_names():
        cls = get_method(name)
        assert (cls.name, cls.requires_training, cls.supports_sequential) == (
            name, METHODS[name].trained, METHODS[name].sequential)
        assert cls.config_class is METHODS[name].config_class()


def test_a_spec_that_contradicts_its_class_is_refused(registry):
    register_method(MethodSpec("ft-llm-trained", "editors.methods.ft_llm:FTLLM", "editors.methods.ft_llm:FTLLMConfig",
                               "says it is trained", trained=True))
    with pytest.raises(ValueError, match=r"'ft-llm-trained'.*name 'ft-llm-trained' != class 'ft-llm'.*trained True"):
        get_method("ft-llm-trained")
    with pytest.raises(ValueError, match="taken by editors.methods.ft_llm:FTLLM"):
        register_method(MethodSpec("ft-llm", "elsewhere:Other", "elsewhere:OtherConfig", "another"))


def test_a_method_from_outside_runs_through_kebench_run(registry, toy_module, untrained_llava, tiny_world, tmp_path,
                                                        capsys):
    import importlib

    register_method(importlib.import_module(TOY_MODULE).SPEC)
    assert main(["methods"]) == 0
    assert "toy        no       no          a toy that edits nothing" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["run", "--method", "toy", "--model", str(untrained_llava), "--data", str(tiny_world), "--limit", "2",
                 "--out", str(out), "--no-generate", "--set", "marker=mine"]) == 0
    assert "| toy |" in capsys.readouterr().out
    info = json.loads((out / "run.json").read_text())
    assert info["method"] == "toy" and info["hyperparameters"] == {"marker": "mine"} and info["cases"] == 2
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert info["method_info"]["edited"] == [line["case_id"] for line in lines]
    rows = [row for line in lines for row in line["rows"]]
    assert rows and all(row["pre"] == row["post"] for row in rows), "the toy changes nothing"
    assert main(["run", "--method", "toy", "--sequential", "2", "--out", str(tmp_path / "seq")]) == 1
    assert "does not support --sequential" in capsys.readouterr().err


def test_an_installed_package_adds_a_method_by_entry_point(registry, toy_module, capsys):
    info = toy_module / "kebench_toy-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kebench-toy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[kebench.methods]\ntoy = {TOY_MODULE}:SPEC\n")
    assert "toy" in method_names()
    assert get_method("toy").__module__ == TOY_MODULE
    (info / "entry_points.txt").write_text(f"[kebench.methods]\nplaything = {TOY_MODULE}:SPEC\n")
    editors.methods._discovered = False
    with pytest.raises(ValueError, match="entry point plaything"):
        method_names()


def test_train_editor_takes_the_trained_methods_of_the_registry(tmp_path, capsys):
    assert main(["train-editor", "--method", "ft-llm", "--out", str(tmp_path / "editor")]) == 1
    assert capsys.readouterr().err == ("kebench: error: method 'ft-llm' has nothing to train; trained methods: "
                                       f"{', '.join(trained_method_names())}\n")
    assert set(trained_method_names()) == {"ke", "serac", "mend"}


def test_reading_the_registry_imports_no_torch():
    probe = ("import sys, editors.methods as registry\n"
             "specs = [registry.method_spec(name) for name in registry.method_names()]\n"
             "assert specs and registry.trained_method_names()\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'datasets')))\n")
    completed = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parents[1],
                               capture_output=True, text=True, check=True, timeout=120)
    assert completed.stdout.strip() == "[]"
