"""Models spread by a ``device_map`` (accelerate): here the CPU and the disk, on a tiny LLaVA."""

from __future__ import annotations

import pytest
import torch

from editors.adapters import load_adapter, parse_max_memory
from editors.defaults import SHIPPED_DEFAULT_MODEL
from editors.engine import Engine, EngineOptions
from editors.methods import make_method


def spread(adapter) -> dict[str, str]:
    """The two lowest decoder layers offloaded to the disk, everything else on the CPU."""
    names = {module: name for name, module in adapter.model.named_modules()}
    layers = names[adapter.decoder_layers()]
    placement = {f"{layers}.{i}": "disk" if i < 2 else "cpu" for i in range(len(adapter.decoder_layers()))}
    path = layers  # every module beside the path from the model to the layers: on the CPU
    while path:
        parent = path.rpartition(".")[0]
        for child, _ in adapter.model.get_submodule(parent).named_children():
            name = f"{parent}.{child}" if parent else child
            if name != path:
                placement[name] = "cpu"
        path = parent
    return placement


def predictions(adapter, method_name, cases, options=None):
    engine = Engine(adapter, make_method(method_name, options or {}), EngineOptions(generate=False))
    return [result.rows for result in engine.run((case.case_id, case) for case in cases)]


def test_an_edit_on_a_model_partly_on_the_disk_changes_the_answer_and_restores_bit_for_bit(test_cases):
    cases = [test_cases[0], test_cases[1]]
    plain = load_adapter(SHIPPED_DEFAULT_MODEL)
    mapped = load_adapter(SHIPPED_DEFAULT_MODEL, device_map=spread(plain))
    assert any(p.device.type == "meta" for p in mapped.decoder_layers()[0].parameters())  # really offloaded
    assert mapped.device == torch.device("cpu")
    before = {name: p.detach().clone() for name, p in mapped.model.named_parameters() if p.device.type != "meta"}
    rows = predictions(mapped, "ft-llm", cases)
    assert rows == predictions(plain, "ft-llm", cases)
    reliability = next(row for row in rows[0] if row["metric"] == "reliability")
    assert reliability["pre"] != reliability["post"]  # the edit changed the answer
    after = dict(mapped.model.named_parameters())
    assert all(torch.equal(value, after[name]) for name, value in before.items())


def test_editing_an_offloaded_weight_is_refused_in_one_line(test_cases):
    plain = load_adapter(SHIPPED_DEFAULT_MODEL)
    mapped = load_adapter(SHIPPED_DEFAULT_MODEL, device_map=spread(plain))
    method = make_method("ft-llm", {"layer": 0})
    with pytest.raises(ValueError, match="offloaded to the disk"):
        method.apply(mapped, test_cases[0])


def test_device_map_auto_within_max_memory_gives_the_same_predictions(test_cases, train_cases):
    plain = load_adapter(SHIPPED_DEFAULT_MODEL)
    weights = sum(p.numel() * p.element_size() for p in plain.model.parameters())
    mapped = load_adapter(SHIPPED_DEFAULT_MODEL, device_map="auto", max_memory=parse_max_memory(f"cpu={weights // 2}"))
    assert "disk" in set(mapped.model.hf_device_map.values())
    results = []
    for adapter in (plain, mapped):
        method = make_method("ike", {})
        method.prepare(adapter, train_cases)
        engine = Engine(adapter, method, EngineOptions(generate=True))
        results.append([r.rows for r in engine.run((case.case_id, case) for case in [test_cases[0]])])
    assert results[0] == results[1]


def test_a_bad_max_memory_is_a_one_line_error():
    assert parse_max_memory("0=20GiB,cpu=60GiB") == {0: "20GiB", "cpu": "60GiB"}
    with pytest.raises(ValueError, match="DEVICE=SIZE"):
        parse_max_memory("lots")
