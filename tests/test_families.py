"""Every editing method end to end (``kebench run``, one case) on every model family, at tiny scale.

The models are untrained and the editors trained for a couple of steps: the point is that each
method's edit, readout and restore go through each family's adapter without a failed case.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from editors import run as runs
from editors.methods import method_names
from editors.run_dir import RunSettings
from editors.tiny import BUILDERS

#: a few steps of everything; IKE with 4 demonstrations (32 overflow a tiny model's 2,048 positions)
QUICK_EDITOR = {"max_steps": 2, "val_every": 1, "val_cases": 1}
METHOD_OPTIONS = {"ft-llm": {"steps": 2}, "ft-vision": {"steps": 2}, "ike": {"k": 4},
                  "ke": QUICK_EDITOR, "serac": QUICK_EDITOR, "mend": QUICK_EDITOR}


def run_every_method(model: Path, data: Path, out: Path, trust_remote_code: bool = False) -> dict[str, str]:
    """Each method on one case of ``data`` with ``model``; ``{method: model family}`` of the runs."""
    families = {}
    for method in method_names():
        scores = runs.run(RunSettings(method=method, out=out / method, model=str(model), data=str(data), limit=1,
                                      bootstrap=0, generate=False, method_options=METHOD_OPTIONS.get(method, {}),
                                      trust_remote_code=trust_remote_code))
        info = json.loads((out / method / "run.json").read_text())
        assert info["failed_cases"] == 0, (model.name, method, info["failed_case_ids"])
        token = scores["token"]["scores"]
        assert all(token[name] is not None for name in ("reliability", "t_locality", "i_locality")), (model, method)
        families[method] = info["model_family"]
    return families


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_every_method_runs_on_every_family(arch: str, tiny_models: dict[str, Path], tiny_world: Path,
                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEBENCH_CACHE", str(tmp_path / "cache"))  # the trained editors
    families = run_every_method(tiny_models[arch], tiny_world, tmp_path)
    assert set(families) == set(method_names())
