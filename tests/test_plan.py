"""``kebench plan``: the planner's peak against torch's measured allocations on the CPU, and its CLI."""

from __future__ import annotations

from dataclasses import replace

import pytest

from editors.adapters import load_adapter
from editors.bench import shape_model
from editors.cases import CaseSequence, load_split
from editors.engine import Engine, EngineOptions, case_queries
from editors.forward import shared_prefix_length
from editors.methods import make_method
from editors.methods.serac import SentenceEncoder, edit_context
from editors.plan import KNOWN_MODELS, Workload, measured_peak, meta_adapter, model_config, parse_memory, plan
from kebench_hf.cli import main
from kebench_hf.world import default_world

#: ``llava-hf/llava-1.5-7b-hf``'s parameter count (tests/test_bench.py checks the 7B shape against it)
LLAVA_1_5_7B_PARAMETERS = 7_063_427_072
CASES = 2


def measured_workload(adapter, method, cases) -> Workload:
    """The longest rows, in-context prompt (IKE) and edit fact in context (SERAC's counterfactual
    model) of ``cases`` under ``method``, as the engine encodes them."""
    options = EngineOptions(generate=False)
    rows = tokens = context = fact = 0
    for case in cases:
        queries = case_queries(case, options)[1]
        batch = adapter.encode(queries)
        rows, tokens = max(rows, len(queries)), max(tokens, batch.inputs["input_ids"].shape[1])
        if method.edits_prompt:
            rewritten = method.apply(adapter, case).rewrite(queries)
            context = max(context, shared_prefix_length(adapter, adapter.encode(rewritten)))
        in_context = [replace(query, context=edit_context(case)) for query in queries]
        fact = max(fact, shared_prefix_length(adapter, adapter.encode(in_context)))
    return Workload(rows=rows, query_tokens=tokens - adapter.image_tokens(), context_tokens=context, fact_tokens=fact)


def editing_method(name: str, adapter, train):
    """``name`` ready to edit, and a function run at the start of the measured block. FT-LLM and IKE
    are prepared before it. A trained editor's memory is its modules', whatever values training gave
    them, so MEND's, KE's and SERAC's are built (untrained) inside the block, where a loaded editor's
    tensors would be allocated; SERAC's sentence encoder before it (it runs on the CPU, the planner
    does not count it) and its threshold at 0: every query goes to the counterfactual model, as planned."""
    method = make_method(name, {"threshold": 0.0} if name == "serac" else {})
    if not method.requires_training:
        method.prepare(adapter, train)
        return method, lambda: None
    if name == "serac":
        method.encoder = SentenceEncoder()
    return method, lambda: method.build(adapter)


@pytest.mark.parametrize("shape", ["tiny", "deep-narrow"])
def test_the_plan_is_within_20_percent_of_the_measured_peak(shape):
    data = default_world()
    model = shape_model(shape, data)
    adapter = load_adapter(model)
    adapter.model.requires_grad_(False)
    cases = list(CaseSequence(load_split(data, "edit", "test").select(range(CASES))))
    train = CaseSequence(load_split(data, "edit", "train"))
    weights = sum(tensor.numel() * tensor.element_size() for tensor in adapter.model.state_dict().values())
    for method_name in ("ft-llm", "ike", "mend", "ke", "serac"):
        method, start = editing_method(method_name, adapter, train)
        workload = measured_workload(adapter, method, cases)
        engine = Engine(adapter, method, EngineOptions(generate=False))
        with measured_peak() as measured:
            start()
            results = list(engine.run((case.case_id, case) for case in cases))
        assert all(result.error is None for result in results)
        planned = plan(str(model), method_name, workload=workload)
        assert planned.weights == weights
        assert planned.working == pytest.approx(measured.peak, rel=0.2), (method_name, planned.phases, measured.peak)
        assert planned.peak == pytest.approx(weights + measured.peak, rel=0.2)


def test_the_offline_llava_shape_is_llava_1_5_7b():
    planned = plan("llava-1.5-7b", "none", dtype="bfloat16")
    assert planned.weights == 2 * LLAVA_1_5_7B_PARAMETERS
    assert planned.peak > planned.weights


def test_serac_plans_a_second_copy_of_the_model():
    serac, ike = plan("qwen2-vl-7b", "serac", "bfloat16"), plan("qwen2-vl-7b", "ike", "bfloat16")
    assert serac.phases["post-edit pass"]["counterfactual model"] == serac.weights
    assert serac.peak > ike.peak > ike.weights


def test_known_models_read_no_weights_and_have_their_families():
    assert {model_config(name).model_type for name in KNOWN_MODELS} == {"llava", "blip-2", "qwen2_vl"}
    # MiniGPT-4 is a BLIP-2 with a Llama: its own adapter, told apart by the config
    assert meta_adapter(model_config("minigpt4-7b")).family == "minigpt4"
    assert meta_adapter(model_config("blip2-opt-2.7b")).family == "blip2"


def test_memory_sizes_parse_and_a_bad_one_is_a_one_line_error(capsys):
    assert parse_memory("80GiB") == 80 * 2**30 and parse_memory("24GB") == 24 * 10**9
    assert main(["plan", "--model", "llava-1.5-7b", "--method", "ike", "--gpu-memory", "lots"]) == 1
    assert "lots" in capsys.readouterr().err


def test_kebench_plan_says_whether_it_fits(capsys):
    assert main(["plan", "--model", "llava-1.5-7b", "--method", "ike", "--dtype", "bfloat16",
                 "--gpu-memory", "80GiB"]) == 0
    assert "expected peak" in (out := capsys.readouterr().out) and "\nfits in 80.00 GiB" in out
    assert main(["plan", "--model", "llava-1.5-7b", "--method", "serac", "--dtype", "float32",
                 "--gpu-memory", "40GiB"]) == 0
    assert "does NOT fit" in capsys.readouterr().out
