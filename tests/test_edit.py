"""Editing a model for use: ``editors.edit`` and ``kebench edit``.

The weight-editing methods (FT-LLM, MEND) edit the tiny LLaVA of the tiny world; IKE and SERAC, which
need a model that reads a fact given in context, the shipped default model of the default world. An
edited model saved by ``kebench edit`` must answer the edited question with the new answer and an
unrelated one as before when reloaded (into a plain ``transformers.pipeline``, or with
``EditedModel.from_pretrained`` for IKE and SERAC); the base model's directory stays as it was;
``restore()`` is bit-exact; bad input writes nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import transformers
from PIL import Image

import editors
from editors.adapters import load_adapter
from editors.adapters.base import Query
from editors.defaults import SHIPPED_DEFAULT_MODEL
from editors.editing import EDITS_FILE, EditedModel
from editors.training import base_model_identity
from kebench_hf import load_kebench
from kebench_hf.cli import main
from kebench_hf.world import default_world

#: a barely trained MEND editor (test_trained_methods' settings, an edit lr that keeps locality)
MEND = {"max_steps": 6, "val_every": 3, "val_cases": 2, "edit_lr": 1e-2}
#: a briefly trained SERAC editor (enough on the default model to route the edited question, seconds)
SERAC = {"max_steps": 20, "val_every": 10, "val_cases": 2}


def tree_hash(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def records(tiny_world: Path) -> list[dict]:
    return json.loads((tiny_world / "eval.json").read_text())


def image_of(tiny_world: Path, relative: str) -> Path:
    return tiny_world / "mmkb_images" / relative


def ask(pipe, question: str, image: Image.Image | None = None) -> str:
    content = ([{"type": "image", "image": image}] if image is not None else []) + [{"type": "text", "text": question}]
    output = pipe(text=[{"role": "user", "content": content}], max_new_tokens=16, return_full_text=False)
    return output[0]["generated_text"].strip()


def check_saved_edit(out: Path, base: Path, tiny_world: Path, record: dict, method: str) -> None:
    """``out`` (kebench edit's directory) in a pipeline: the edit holds, an unrelated question keeps its answer."""
    image = Image.open(image_of(tiny_world, record["image"])).convert("RGB")
    edited, original = (transformers.pipeline("image-text-to-text", model=str(path)) for path in (out, base))
    assert ask(original, record["src"], image) == record["pred"], "the base model must know the old answer"
    assert ask(edited, record["src"], image) == record["alt"]
    assert ask(edited, record["loc"]) == ask(original, record["loc"])
    description = json.loads((out / EDITS_FILE).read_text())
    batch = description["edits"][0]
    assert batch["method"] == method and batch["in_weights"] and description["load_with"] == "transformers"
    assert batch["facts"][0]["answer"] == record["alt"] and batch["facts"][0]["answer_before"] == record["pred"]
    assert (out / batch["facts"][0]["image"]).is_file() and (out / "model.safetensors").is_file()
    adapter = load_adapter(base)
    assert description["base_model"]["weights_sha256"] == base_model_identity(
        adapter, dict(adapter.model.state_dict()))["weights_sha256"]
    assert {"torch", "transformers", "kebench_hf"} <= set(description["versions"])


def test_ft_llm_edit_through_kebench_edit_into_a_pipeline(tiny_llava, tiny_world, records, tmp_path, capsys):
    record, before = records[0], tree_hash(tiny_llava)
    out = tmp_path / "edited"
    assert main(["edit", "--method", "ft-llm", "--model", str(tiny_llava), "--image",
                 str(image_of(tiny_world, record["image"])), "--question", record["src"], "--answer", record["alt"],
                 "--out", str(out), "--set", "stop_loss=0.05"]) == 0
    printed = capsys.readouterr().out
    assert f"before: {record['pred']}" in printed and f"after:  {record['alt']}" in printed
    check_saved_edit(out, tiny_llava, tiny_world, record, "ft-llm")
    assert tree_hash(tiny_llava) == before, "the base model directory must not change"


@pytest.fixture(scope="module")
def mend_editor(tiny_llava, tiny_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("edit-mend") / "editor"
    options = [f"--set={key}={value}" for key, value in MEND.items()]
    assert main(["train-editor", "--method", "mend", "--model", str(tiny_llava), "--data", str(tiny_world),
                 "--out", str(out), *options]) == 0
    return out


def test_mend_edit_with_its_trained_editor_into_a_pipeline(tiny_llava, tiny_world, records, mend_editor, tmp_path):
    record, before = records[1], tree_hash(tiny_llava)
    facts = tmp_path / "facts.jsonl"
    (tmp_path / "pictures").mkdir()
    (tmp_path / "pictures" / "fact.jpg").write_bytes(image_of(tiny_world, record["image"]).read_bytes())
    facts.write_text(json.dumps({"image": "pictures/fact.jpg", "question": record["src"], "answer": record["alt"]}) + "\n")
    out = tmp_path / "edited"
    assert main(["edit", "--method", "mend", "--editor", str(mend_editor), "--model", str(tiny_llava),
                 "--edits", str(facts), "--out", str(out)]) == 0
    check_saved_edit(out, tiny_llava, tiny_world, record, "mend")
    assert json.loads((out / EDITS_FILE).read_text())["edits"][0]["facts"][0]["source"] == f"{facts} line 1"
    assert tree_hash(tiny_llava) == before


def test_weight_edits_apply_in_sequence_and_restore_bit_for_bit(tiny_llava, tiny_world, records):
    adapter = load_adapter(tiny_llava)
    model, processor = adapter.model, adapter.processor
    original = {name: value.clone() for name, value in model.state_dict().items()}
    flags = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    first = [(image_of(tiny_world, r["image"]), r["src"], r["alt"]) for r in records[:2]]
    edited = editors.edit(model, processor, first, method="ft-llm", stop_loss=0.05)
    assert edited is model and type(edited).__name__ == "LlavaForConditionalGeneration"
    after_first = {name: value.clone() for name, value in model.state_dict().items()}
    assert any(not torch.equal(value, original[name]) for name, value in after_first.items())
    editors.edit(model, processor, {"image": None, "question": records[2]["loc"], "answer": records[0]["alt"]},
                 method="ft-llm", stop_loss=0.05)
    assert [fact.answer for fact in model.kebench_edits] == [records[0]["alt"], records[1]["alt"], records[0]["alt"]]
    assert [fact.source for fact in model.kebench_edits] == ["fact 0", "fact 1", "fact 0"]
    assert {name: parameter.requires_grad for name, parameter in model.named_parameters()} == flags
    assert editors.restore(model) is model
    assert all(torch.equal(value, original[name]) for name, value in model.state_dict().items())
    assert not hasattr(model, "kebench_edits")


@pytest.fixture(scope="module")
def world() -> Path:
    """The default world: the shipped default model was pretrained on it (it reads facts given in context)."""
    return default_world()


@pytest.fixture(scope="module")
def world_records(world: Path) -> list[dict]:
    return json.loads((world / "eval.json").read_text())


@pytest.fixture(scope="module")
def serac_editor(world: Path, tmp_path_factory) -> Path:
    """SERAC trained on the default model for a few steps: its counterfactual model starts as the base
    model, which already answers under a fact in context, and the scope classifier learns enough to route."""
    out = tmp_path_factory.mktemp("edit-serac") / "editor"
    options = [f"--set={key}={value}" for key, value in SERAC.items()]
    assert main(["train-editor", "--method", "serac", "--model", str(SHIPPED_DEFAULT_MODEL), "--data", str(world),
                 "--out", str(out), *options]) == 0
    return out


def base_answers(model: Path, record: dict, image: Path) -> list[str]:
    """The unedited model's greedy answers to the edited question (on its image) and the unrelated one."""
    picture = Image.open(image).convert("RGB")
    return load_adapter(model).generate([Query(record["src"], "?", picture), Query(record["loc"], "?")], max_new_tokens=32)


def test_ike_wrapper_answers_with_the_new_fact_saves_and_loads_back(world, world_records, tmp_path):
    record = world_records[0]
    image = world / "mmkb_images" / record["image"]
    adapter = load_adapter(SHIPPED_DEFAULT_MODEL)
    original = {name: value.clone() for name, value in adapter.model.state_dict().items()}
    questions, images = [record["src"], record["loc"]], [image, None]
    before = base_answers(SHIPPED_DEFAULT_MODEL, record, image)
    assert before[0] == record["pred"], "the base model must know the old answer"
    # a few train cases to retrieve demonstrations from: indexing them takes a moment, not the whole split's
    train = load_kebench(world, split="train").select(range(24))
    edited = editors.edit(adapter.model, adapter.processor, (image, record["src"], record["alt"]), method="ike",
                          train=train, k=4)
    assert isinstance(edited, EditedModel) and [fact.answer for fact in edited.edits] == [record["alt"]]
    answers = edited.generate(questions, images=images)
    assert answers == [record["alt"], before[1]], "the edited question gets the new answer, the unrelated one the old"
    assert all(torch.equal(value, original[name]) for name, value in adapter.model.state_dict().items())
    edited.save_pretrained(tmp_path / "ike")
    assert (tmp_path / "ike" / "base" / "model.safetensors").is_file()
    assert len((tmp_path / "ike" / "train.jsonl").read_text().splitlines()) == 24
    assert not list((tmp_path / "ike").rglob("*.bin")) and not list((tmp_path / "ike").rglob("*.pkl"))
    again = EditedModel.from_pretrained(tmp_path / "ike")
    assert again.generate(questions, images=images) == answers
    assert [fact.question for fact in again.edits] == [record["src"]]
    assert edited.restore() is adapter.model and len(edited.edits) == 0
    assert edited.generate(questions, images=images) == before


def test_serac_edit_through_kebench_edit_loads_back_and_answers_through_its_wrapper(
        world, world_records, serac_editor, tmp_path, capsys):
    record = world_records[1]
    image = world / "mmkb_images" / record["image"]
    before, base_hash = base_answers(SHIPPED_DEFAULT_MODEL, record, image), tree_hash(SHIPPED_DEFAULT_MODEL)
    assert before[0] == record["pred"], "the base model must know the old answer"
    out = tmp_path / "edited"
    assert main(["edit", "--method", "serac", "--editor", str(serac_editor), "--model", str(SHIPPED_DEFAULT_MODEL),
                 "--image", str(image), "--question", record["src"], "--answer", record["alt"], "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"before: {record['pred']}" in printed and f"after:  {record['alt']}" in printed
    assert "EditedModel.from_pretrained" in printed
    description = json.loads((out / EDITS_FILE).read_text())
    assert description["load_with"] == "editors.EditedModel.from_pretrained"
    assert description["edits"][0]["method"] == "serac" and not description["edits"][0]["in_weights"]
    assert (out / "editor" / "editor.safetensors").is_file() and (out / "base" / "model.safetensors").is_file()
    assert not (out / "model.safetensors").exists(), "transformers alone must not load the unedited model as edited"

    edited = EditedModel.from_pretrained(out)
    assert edited.generate([record["src"], record["loc"]], images=[image, None]) == [record["alt"], before[1]]
    assert tree_hash(SHIPPED_DEFAULT_MODEL) == base_hash, "the base model directory must not change"
    base = edited.restore()
    shipped = load_adapter(SHIPPED_DEFAULT_MODEL).model.state_dict()
    assert all(torch.equal(value, shipped[name]) for name, value in base.state_dict().items())
    assert edited.generate(record["src"], images=image) == record["pred"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--question", "", "--answer", "Storstu"], "fact 0: field 'question' is missing"),
        (["--question", "What river does the image depict?"], "fact 0: field 'answer' is missing"),
        (["--image", "{broken}", "--question", "What river?", "--answer", "Storstu"],
         "fact 0: field 'image': image cannot be decoded"),
        (["--edits", "{jsonl}"], "line 2: field 'answer' is missing"),
        (["--edits", "{broken_jsonl}"], "broken.jsonl line 1: field 'image': image cannot be decoded"),
        (["--edits", "{jsonl}", "--question", "Q?"], "not both"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(arguments, message, tiny_llava, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    jsonl = tmp_path / "facts.jsonl"
    jsonl.write_text(json.dumps({"image": None, "question": "Q?", "answer": "A"}) + "\n"
                     + json.dumps({"image": None, "question": "Q?"}) + "\n")
    broken_jsonl = tmp_path / "broken.jsonl"
    broken_jsonl.write_text(json.dumps({"image": "broken.jpg", "question": "Q?", "answer": "A"}) + "\n")
    arguments = [a.format(broken=broken, jsonl=jsonl, broken_jsonl=broken_jsonl) for a in arguments]
    out = tmp_path / "out"
    assert main(["edit", "--method", "ft-llm", "--model", str(tiny_llava), *arguments, "--out", str(out)]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_an_editor_of_another_base_model_is_refused_and_nothing_written(tiny_llava, mend_editor, tmp_path, capsys):
    adapter = load_adapter(tiny_llava)
    with torch.no_grad():
        adapter.mlp(-1).down_proj.weight[0, 0] += 1e-3  # same architecture, another model
    other = tmp_path / "other"
    adapter.model.save_pretrained(other)
    adapter.processor.save_pretrained(other)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["edit", "--method", "mend", "--editor", str(mend_editor), "--model", str(other),
                 "--question", "Which river?", "--answer", "Storstu", "--out", str(out)]) == 1
    # above it only transformers' progress bar of loading the model
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kebench:")]
    assert len(errors) == 1 and f"editor {mend_editor} was trained on a different base model" in errors[0]
    assert not out.exists()
    with pytest.raises(ValueError, match="needs its trained editor"):
        editors.edit(adapter.model, adapter.processor, (None, "Which river?", "Storstu"), method="mend")


@pytest.mark.parametrize(
    ("fact", "message"),
    [
        ((None, "", "Storstu"), "fact 0: field 'question' is missing"),
        ({"image": None, "question": "What river?"}, "fact 0: field 'answer' is missing"),
        ([(None, "Q?", "A"), ("{broken}", "What river?", "Storstu")], "fact 1: field 'image': image cannot be decoded"),
    ],
)
def test_bad_facts_in_python_are_a_value_error_before_anything_is_edited(fact, message, llava, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    if isinstance(fact, list):
        fact = [tuple(str(broken) if value == "{broken}" else value for value in item) for item in fact]
    original = {name: value.clone() for name, value in llava.model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        editors.edit(llava.model, llava.processor, fact, method="ft-llm")
    assert not hasattr(llava.model, "kebench_edits")
    assert all(torch.equal(value, original[name]) for name, value in llava.model.state_dict().items())


def test_a_serac_editor_of_another_base_model_is_refused_in_python_and_from_the_cli(
        tiny_llava, serac_editor, tmp_path, capsys):
    """The default model's SERAC editor on the tiny LLaVA: one line from ``kebench edit``, nothing written;
    a ValueError naming the editor from ``editors.edit``, the model left as it was."""
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["edit", "--method", "serac", "--editor", str(serac_editor), "--model", str(tiny_llava),
                 "--question", "Which river?", "--answer", "Storstu", "--out", str(out)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kebench:")]
    assert len(errors) == 1 and f"editor {serac_editor} was trained on a different base model" in errors[0]
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    adapter = load_adapter(tiny_llava)
    original = {name: value.clone() for name, value in adapter.model.state_dict().items()}
    with pytest.raises(ValueError, match=f"editor {serac_editor} was trained on a different base model"):
        editors.edit(adapter.model, adapter.processor, (None, "Which river?", "Storstu"), method="serac",
                     editor=serac_editor)
    assert not hasattr(adapter.model, "kebench_edits")
    assert all(torch.equal(value, original[name]) for name, value in adapter.model.state_dict().items())
