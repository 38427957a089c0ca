"""Edit a model for use: :func:`edit` applies facts with any registered method and returns a model to keep.

The benchmark engine and this entry point share the methods: a fact ``(image, question, new answer)``
becomes an :class:`~editors.cases.EditCase` and goes through the method's own ``prepare`` and
``apply_all``, exactly as the engine's edits do; only the scoring is left out. What comes back:

* a method whose edit lives in the weights (FT-LLM, FT-vision, KE, MEND): the same transformers model,
  edited in place, so ``generate``, ``save_pretrained`` and ``transformers.pipeline`` work on it as on
  any model. ``model.kebench_edits`` (an :class:`EditRecord`) lists the facts it holds, and
  ``model.kebench_edits.restore()`` gives back the original weights bit for bit (each edit's
  :class:`~editors.methods.base.WeightSnapshot`, undone in reverse order);
* a method whose edit lives outside the weights (IKE's prompt, SERAC's memory, scope classifier and
  counterfactual model): an :class:`EditedModel` whose ``generate`` answers through the method, and which
  saves itself (safetensors + JSON) and loads back with ``EditedModel.from_pretrained(directory)``.

Which of the two a method is follows from its applied edit: one that answers through the model as it is
(the default :class:`~editors.methods.base.AppliedEdit`) changed weights; one that rewrites queries or
routes them did not. Nothing here asks which method it runs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, overload

import torch
from PIL import Image
from torch import nn

from editors.adapters.base import ModelAdapter, Query
from editors.cases import CaseSequence, EditCase, decode_image
from editors.methods import get_method, preset_method
from editors.methods.base import AppliedEdit, EditMethod
from editors.presets import KEBENCH
from editors.runtime import package_versions

logger = logging.getLogger(__name__)

#: what an edited model's directory records of its edits (next to the model's own files)
EDITS_FILE = "edits.json"
#: an :class:`EditedModel` directory: the untouched base model and processor live here, so that
#: loading the directory with transformers alone cannot pass the unedited model off as the edited one
BASE_DIR = "base"
EDITOR_DIR = "editor"
TRAIN_FILE = "train.jsonl"
IMAGES_DIR = "images"
FORMAT = "kebench-edit"
FORMAT_VERSION = 1
#: the attribute of an edited transformers model that holds its :class:`EditRecord`
RECORD_ATTRIBUTE = "kebench_edits"
MAX_NEW_TOKENS = 32
#: the answer slot of a query asked for generation: queries are encoded with an answer, but positions
#: up to where the answer starts (all that generation and SERAC's routing read) never see it
_UNREAD_ANSWER = "?"


@dataclass(frozen=True)
class Fact:
    """One edit: on ``image`` (None: a text-only fact) the answer to ``question`` becomes ``answer``.

    ``source`` says where the fact came from in messages and in edits.json (``fact 2``,
    ``edits.jsonl line 3``); ``image_file`` is the image's path as given, when it was a path.
    """

    question: str
    answer: str
    image: Image.Image | None = None
    source: str = "fact"
    image_file: str | None = None

    @property
    def query(self) -> Query:
        return Query(self.question, self.answer, self.image)


# -- reading facts ---------------------------------------------------------------------------------

_FACT_FIELDS = ("image", "question", "answer")


def _fact(item: Any, where: str, base_dir: Path | None = None) -> Fact:
    """The fact ``item`` (a :class:`Fact`, a mapping or an ``(image, question, answer)`` tuple)."""
    if isinstance(item, Fact):
        # read already (e.g. from a file): checked again, keeping where it came from
        where, values = item.source, {"image": item.image, "question": item.question, "answer": item.answer}
    elif isinstance(item, Mapping):
        unknown = sorted(set(item) - set(_FACT_FIELDS))
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; a fact has {', '.join(_FACT_FIELDS)}")
        values = {name: item.get(name) for name in _FACT_FIELDS}
    elif isinstance(item, (tuple, list)):
        if len(item) != 3:
            raise ValueError(f"{where}: expected (image, question, answer), got {len(item)} value(s)")
        values = dict(zip(_FACT_FIELDS, item, strict=True))
    else:
        raise ValueError(f"{where}: expected (image, question, answer) or a mapping, got {type(item).__name__}")
    for name in ("question", "answer"):
        if not isinstance(values[name], str) or not values[name].strip():
            raise ValueError(f"{where}: field {name!r} is missing, empty or not a string")
    image, image_file = values["image"], None
    if isinstance(image, (str, os.PathLike)):
        image_file = str(image)
        if base_dir is not None and not Path(image).is_absolute():
            image = base_dir / image
    if image is not None:
        image = decode_image(image, where)
    if isinstance(item, Fact):
        image_file = item.image_file
    return Fact(values["question"], values["answer"], image, where, image_file)


def _facts_from_jsonl(path: Path) -> list[Fact]:
    """One fact per line: ``{"image": path relative to the file's folder or null, "question", "answer"}``."""
    if path.is_dir():
        raise ValueError(f"edits {path}: a directory; pass a JSON Lines file, or a KEBench split "
                         "(kebench_hf.load_kebench(DIR, split='test'))")
    if not path.is_file():
        raise FileNotFoundError(f"edits file {path}: no such file")
    facts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected a JSON object with {', '.join(_FACT_FIELDS)}")
        facts.append(_fact(item, where, path.parent))
    return facts


def _facts_from_split(rows: Any) -> list[Fact]:
    """A KEBench split's edits: ``src`` -> ``alt`` on ``image``."""
    import datasets

    missing = sorted({"src", "alt", "image"} - set(rows.column_names))
    if missing:
        raise ValueError(f"edits: the dataset has no column(s) {missing}; expected a KEBench split")
    rows = rows.cast_column("image", datasets.Image(decode=False))
    facts = []
    for index, row in enumerate(rows):
        where = f"case {row.get('case_id') or index}"
        facts.append(_fact({"image": row["image"], "question": row["src"], "answer": row["alt"]}, where))
    return facts


def read_facts(edits: Any) -> list[Fact]:
    """The facts of ``edits``: one fact (a tuple ``(image, question, answer)``, a mapping with those
    keys, a :class:`Fact`), a list of them, a JSON Lines file or a KEBench split (``datasets.Dataset``).

    Images may be PIL images, paths (relative to a JSON Lines file's folder) or None; each is decoded
    now, so a broken one is a ``ValueError`` naming the fact and the field before anything is edited.
    """
    import datasets

    if isinstance(edits, (str, os.PathLike)):
        facts = _facts_from_jsonl(Path(edits))
    elif isinstance(edits, datasets.Dataset):
        facts = _facts_from_split(edits)
    elif isinstance(edits, (Fact, Mapping, tuple)):
        facts = [_fact(edits, "fact 0")]
    elif isinstance(edits, Iterable):
        facts = [_fact(item, f"fact {index}") for index, item in enumerate(edits)]
    else:
        raise ValueError(f"edits: expected facts, a JSON Lines file or a KEBench split, got {type(edits).__name__}")
    if not facts:
        raise ValueError("edits: no facts given; expected one or more (image, question, answer)")
    return facts


def fact_case(fact: Fact, index: int, answer_before: str) -> EditCase:
    """``fact`` as the methods take an edit: ``src`` -> ``alt`` on ``image``, the model's current answer as
    the old one (KE conditions on it). A fact names no rephrase or locality queries; the case's are its own
    question and empty, which no method reads when it applies an edit."""
    return EditCase(
        case_id=f"fact-{index}", src=fact.question, rephrase=fact.question, pred=answer_before, alt=fact.answer,
        image=fact.image, image_rephrase=fact.image, loc="", loc_ans="", m_loc=None, m_loc_q="", m_loc_a="",
    )


# -- where a method's preparation comes from ----------------------------------------------------------


class TrainSplit(Sequence[EditCase]):
    """The train split a method may prepare from (IKE's demonstrations), read only if the method asks:
    editing with FT never builds the default world."""

    def __init__(self, load: Callable[[], CaseSequence], description: str) -> None:
        self._load = load
        self.description = description
        self.read = False

    @cached_property
    def cases(self) -> CaseSequence:
        self.read = True
        logger.info("reading the train split %s", self.description)
        return self._load()

    def texts(self) -> list[dict[str, str]]:
        return self.cases.texts()

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> EditCase:  # type: ignore[override]
        return self.cases[index]

    def __iter__(self) -> Iterator[EditCase]:
        return iter(self.cases)


def train_split(train: Any) -> TrainSplit:
    """``train`` (a KEBench directory or hub id, a ``datasets.Dataset`` split, a :class:`CaseSequence`;
    None: the default world) as a lazily read :class:`TrainSplit`."""
    if isinstance(train, TrainSplit):
        return train
    if isinstance(train, CaseSequence):
        return TrainSplit(lambda: train, "given as cases")
    if train is None or isinstance(train, (str, os.PathLike)):
        def load() -> CaseSequence:
            from editors.cases import load_split
            from kebench_hf.world import default_world

            return CaseSequence(load_split(str(train) if train is not None else default_world(), "edit", "train"))

        return TrainSplit(load, str(train) if train is not None else "of the default world")
    if hasattr(train, "column_names"):
        return TrainSplit(lambda: CaseSequence(train), "given as a dataset")
    raise ValueError(f"train: expected a KEBench directory, hub id or split, got {type(train).__name__}")


# -- the record of a model's edits ---------------------------------------------------------------------


@dataclass
class EditBatch:
    """Facts edited together with one prepared method (one :func:`edit` call)."""

    method: EditMethod
    settings: dict[str, Any]
    editor: Path | None
    train: TrainSplit
    facts: list[Fact]
    answers_before: list[str]
    applied: list[AppliedEdit] = field(default_factory=list)

    @property
    def in_weights(self) -> bool:
        """Whether the edits live in the model's weights: the last applied edit answers through the model
        as it is (no rewritten queries, no routing)."""
        kind = type(self.applied[-1])
        return all(getattr(kind, name) is getattr(AppliedEdit, name) for name in ("rewrite", "score", "generate"))

    def describe(self, images: Mapping[int, str]) -> dict[str, Any]:
        return {
            "method": self.method.name,
            "hyperparameters": self.method.config.to_dict(),
            "editor": str(self.editor) if self.editor else None,
            "method_info": self.method.run_info(),
            "in_weights": self.in_weights,
            "facts": [
                {"question": fact.question, "answer": fact.answer, "image": images.get(id(fact)),
                 "image_file": fact.image_file, "source": fact.source, "answer_before": before}
                for fact, before in zip(self.facts, self.answers_before, strict=True)
            ],
        }


def _base_model(adapter: ModelAdapter, source: str | None) -> dict[str, Any]:
    """What edits.json records of the unedited model: where it came from, its class, and a hash of its
    configuration and of every weight (the identity trained editors are bound by)."""
    from editors.training import base_model_identity

    identity = base_model_identity(adapter, dict(adapter.model.state_dict()))
    return {"source": source or getattr(adapter.model, "name_or_path", None) or None,
            "class": type(adapter.model).__name__, "family": adapter.family, **identity}


class EditRecord(Sequence[Fact]):
    """The facts a model holds, in the order they were edited, and how to take them back.

    A sequence of :class:`Fact`; ``batches`` are the :func:`edit` calls that made them.
    """

    def __init__(self, adapter: ModelAdapter, source: str | None = None,
                 base_model: dict[str, Any] | None = None) -> None:
        self.adapter = adapter
        #: the unedited model's identity, taken before the first edit
        self.base_model = base_model if base_model is not None else _base_model(adapter, source)
        self.batches: list[EditBatch] = []

    def __len__(self) -> int:
        return sum(len(batch.facts) for batch in self.batches)

    def __getitem__(self, index: int) -> Fact:  # type: ignore[override]
        return [fact for batch in self.batches for fact in batch.facts][index]

    def __repr__(self) -> str:
        methods = sorted({batch.method.name for batch in self.batches})
        return f"EditRecord({len(self)} fact(s), method(s) {', '.join(methods) or 'none'})"

    @property
    def in_weights(self) -> bool:
        return all(batch.in_weights for batch in self.batches)

    def method_for(self, name: str, settings: dict[str, Any], editor: Path | None, train: Any) -> EditMethod:
        """The prepared method of the last batch when it is the one asked for (a trained editor reloaded
        after its own edits would find its weights changed and refuse them), else a new one, prepared."""
        last = self.batches[-1] if self.batches else None
        if last is not None and (last.method.name, last.settings, last.editor) == (name, settings, editor) \
                and train is None:
            return last.method
        method = preset_method(KEBENCH, name, self.adapter.family, settings)
        self.adapter.form = KEBENCH.prompt_form(method, self.adapter.family)
        if method.requires_training and editor is None:
            raise ValueError(f"method {name!r} needs its trained editor: editor=DIR "
                             f"(kebench train-editor --method {name} --model ... --out DIR)")
        return method

    def add(self, facts: list[Fact], method: EditMethod, settings: dict[str, Any], editor: Path | None,
            train: TrainSplit) -> EditBatch:
        """Edit ``facts`` with ``method`` on top of the edits held already (all or nothing)."""
        if method.edits_through_image:
            for fact in facts:
                if fact.image is None:
                    raise ValueError(f"{fact.source}: field 'image' is empty; method {method.name!r} edits "
                                     "through an image only")
        model = self.adapter.model
        grads = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
        training = model.training
        # the methods enable gradients on exactly what they train, as under the engine
        model.requires_grad_(False)
        model.eval()
        try:
            if not self.batches or self.batches[-1].method is not method:
                method.prepare(self.adapter, train, editor)
            answers_before = self.generate([fact.query for fact in facts])
            cases = [fact_case(fact, len(self) + index, before)
                     for index, (fact, before) in enumerate(zip(facts, answers_before, strict=True))]
            batch = EditBatch(method, settings, editor, train, list(facts), answers_before)
            held = self.batches[-1] if self.batches else None
            if method.supports_sequential or held is None or held.method is not method:
                batch.applied = method.apply_all(self.adapter, cases)
            else:
                # one edit holds all the facts (IKE's context): made again, the new facts after the old
                earlier = [fact_case(fact, index, before) for index, (fact, before)
                           in enumerate(zip(held.facts, held.answers_before, strict=True))]
                for edit in reversed(held.applied):
                    edit.restore()
                try:
                    batch.applied = method.apply_all(self.adapter, earlier + cases)
                except BaseException:
                    held.applied = method.apply_all(self.adapter, earlier)
                    raise
                held.applied = []
        finally:
            for parameter, flag in grads:
                parameter.requires_grad_(flag)
            model.train(training)
        self.batches.append(batch)
        return batch

    def generate(self, queries: list[Query], max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
        """Greedy answers of the model as edited (through the method, for edits outside the weights)."""
        for batch in reversed(self.batches):
            if batch.applied:
                return batch.applied[-1].generate(queries, max_new_tokens=max_new_tokens)
        return self.adapter.generate(queries, max_new_tokens=max_new_tokens)

    def restore(self) -> nn.Module:
        """Undo every edit, last first: the model's weights are the original ones again, bit for bit.
        Returns the (unedited) transformers model."""
        while self.batches:
            batch = self.batches.pop()
            for edit in reversed(batch.applied):
                edit.restore()
        if getattr(self.adapter.model, RECORD_ATTRIBUTE, None) is self:
            delattr(self.adapter.model, RECORD_ATTRIBUTE)
        return self.adapter.model

    def describe(self, images: Mapping[int, str] | None = None) -> dict[str, Any]:
        """edits.json: the batches (method, hyper-parameters, editor, facts), the base model, versions."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "load_with": "transformers" if self.in_weights else "editors.EditedModel.from_pretrained",
            "edits": [batch.describe(images or {}) for batch in self.batches],
            "base_model": self.base_model,
            "versions": package_versions(),
        }

    def write(self, directory: Path) -> None:
        """``directory/edits.json`` and the facts' images (``images/fact-N.png``)."""
        images: dict[int, str] = {}
        for index, fact in enumerate(self):
            if fact.image is not None:
                name = f"{IMAGES_DIR}/fact-{index}.png"
                (directory / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
                fact.image.save(directory / name)
                images[id(fact)] = name
        (directory / EDITS_FILE).write_text(json.dumps(self.describe(images), indent=2, default=str) + "\n")


# -- the wrapper for edits outside the weights ---------------------------------------------------------


class EditedModel:
    """A model whose edits live outside its weights (IKE, SERAC): ``generate`` answers through the method.

    ``model`` is the base transformers model, never changed; ``edits`` the :class:`EditRecord`.
    ``save_pretrained(directory)`` writes the base model and processor under ``directory/base``, the
    facts (``edits.json``, ``images/``) and what the method was prepared from (the trained editor in
    ``editor/``, the train split's texts in ``train.jsonl``); :meth:`from_pretrained` prepares the method
    from them again and re-applies the facts, which gives the same answers.
    """

    def __init__(self, record: EditRecord) -> None:
        self.edits = record

    @property
    def model(self) -> nn.Module:
        return self.edits.adapter.model

    @property
    def processor(self) -> Any:
        return self.edits.adapter.processor

    @property
    def method(self) -> EditMethod:
        return self.edits.batches[-1].method

    def __repr__(self) -> str:
        return f"EditedModel({type(self.model).__name__}, {self.edits!r})"

    @overload
    def generate(self, questions: str, images: Any = None, max_new_tokens: int = MAX_NEW_TOKENS) -> str: ...
    @overload
    def generate(self, questions: Sequence[str], images: Any = None,
                 max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]: ...

    def generate(self, questions: str | Sequence[str], images: Any = None,
                 max_new_tokens: int = MAX_NEW_TOKENS) -> str | list[str]:
        """Greedy answers to ``questions`` (one string, or a list) on ``images`` (None, one image or a list
        as long as ``questions``, each a PIL image, a path or None), through the method's edits."""
        single = isinstance(questions, str)
        texts = [questions] if single else list(questions)
        if images is None or isinstance(images, (Image.Image, str, os.PathLike)):
            images = [images] * len(texts)
        if len(images) != len(texts):
            raise ValueError(f"images: {len(images)} given for {len(texts)} question(s)")
        queries = []
        for index, (question, image) in enumerate(zip(texts, images, strict=True)):
            if not isinstance(question, str) or not question.strip():
                raise ValueError(f"question {index}: empty or not a string")
            image = None if image is None else decode_image(image, f"question {index}")
            queries.append(Query(question, _UNREAD_ANSWER, image))
        answers = self.edits.generate(queries, max_new_tokens)
        return answers[0] if single else answers

    def edit(self, edits: Any) -> EditedModel:
        """Add facts, edited with this model's method as it was prepared."""
        batch = self.edits.batches[-1]
        self.edits.add(read_facts(edits), batch.method, batch.settings, batch.editor, batch.train)
        return self

    def restore(self) -> nn.Module:
        """Forget every edit; returns the base model (whose weights these methods never change)."""
        return self.edits.restore()

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory / BASE_DIR)
        self.processor.save_pretrained(directory / BASE_DIR)
        batch = self.edits.batches[-1]
        if batch.editor is not None:
            shutil.copytree(batch.editor, directory / EDITOR_DIR, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("checkpoint"))
        if batch.train.read:
            lines = [json.dumps(record) for record in batch.train.texts()]
            (directory / TRAIN_FILE).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        self.edits.write(directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str | None = None) -> EditedModel:
        """The model :meth:`save_pretrained` wrote to ``directory``, its method prepared, its facts applied."""
        from editors.adapters import load_adapter

        directory = Path(directory)
        description = _read_description(directory)
        if description["load_with"] == "transformers":
            raise ValueError(f"{directory}: its edits are in the weights; load it with "
                             "AutoModelForImageTextToText.from_pretrained")
        adapter = load_adapter(directory / BASE_DIR, device=device, dtype=dtype)
        record = EditRecord(adapter, base_model=description["base_model"])
        train = directory / TRAIN_FILE
        split = train_split(_train_rows(train) if train.is_file() else None)
        editor = directory / EDITOR_DIR if (directory / EDITOR_DIR).is_dir() else None
        # edits made in the weights before these are in the saved base model already
        batches = [batch for batch in description["edits"] if not batch["in_weights"]]
        settings = batches[-1]["hyperparameters"]
        facts = [_saved_fact(fact, directory) for batch in batches for fact in batch["facts"]]
        method = record.method_for(batches[-1]["method"], settings, editor, None)
        record.add(facts, method, settings, editor, split)
        return cls(record)


def _read_description(directory: Path) -> dict[str, Any]:
    path = directory / EDITS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {EDITS_FILE}; not a directory written by kebench edit")
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg})") from None
    if description.get("format") != FORMAT or description.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a {FORMAT} file of version {FORMAT_VERSION}")
    return description


def _train_rows(path: Path) -> Any:
    import datasets

    return datasets.Dataset.from_list([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()])


def _saved_fact(item: Mapping[str, Any], directory: Path) -> Fact:
    fact = _fact({"image": item.get("image"), "question": item.get("question"), "answer": item.get("answer")},
                 str(item.get("source") or "fact"), directory)
    return Fact(fact.question, fact.answer, fact.image, fact.source, item.get("image_file"))


# -- the entry point ------------------------------------------------------------------------------------


def _adapter(model: Any, processor: Any) -> tuple[ModelAdapter, str | None]:
    """The adapter of ``model`` (an object or a path / hub id) and where the model came from."""
    from editors.adapters import adapter_class, adapter_for, load_adapter

    if isinstance(model, (str, os.PathLike)):
        adapter = load_adapter(model)
        if processor is not None:
            adapter = adapter_for(adapter.model, _processor(type(adapter), processor))
        return adapter, str(model)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a transformers model, a directory or a hub id, got {type(model).__name__}")
    record = getattr(model, RECORD_ATTRIBUTE, None)
    if isinstance(record, EditRecord):
        return record.adapter, record.base_model.get("source")
    source = getattr(model, "name_or_path", None) or None
    if processor is None:
        if not source or not Path(source).is_dir():
            raise ValueError("processor: required with a model object (it was not loaded from a directory "
                             "its processor could be read from)")
        processor = source
    return adapter_for(model, _processor(adapter_class(model.config.model_type), processor)), source


def _processor(adapter: type[ModelAdapter], processor: Any) -> Any:
    if isinstance(processor, (str, os.PathLike)):
        from transformers import AutoProcessor

        return getattr(adapter, "load_processor", AutoProcessor.from_pretrained)(str(processor))
    return processor


def edit(model: Any, processor: Any = None, edits: Any = (), method: str = "ft-llm",
         editor: str | os.PathLike | None = None, train: Any = None, **config: Any) -> Any:
    """Edit ``model`` with ``method`` so that it holds ``edits``; returns the edited model.

    ``model``/``processor``: transformers objects, or a directory / hub id (the processor then defaults to
    the model's). ``edits``: see :func:`read_facts`. ``editor``: the trained editor directory of KE, MEND
    and SERAC (``kebench train-editor``); one trained for another base model is refused. ``train``: the
    KEBench train split IKE retrieves its demonstrations from (default: the default world's). ``config``:
    the method's hyper-parameters (its config dataclass's fields, e.g. ``steps=20``).

    Weight-editing methods edit ``model`` in place and return it (``model.kebench_edits`` lists the facts,
    ``model.kebench_edits.restore()`` undoes them); IKE and SERAC return an :class:`EditedModel`. Facts
    apply in order, on top of those the model holds already.
    """
    facts = read_facts(edits)
    editor = Path(editor) if editor is not None else None
    if isinstance(model, EditedModel):
        held = model.edits.batches[-1]
        if method != held.method.name or editor is not None or config or train is not None:
            raise ValueError(f"this model holds {held.method.name} edits: add facts with method "
                             f"{held.method.name!r} and no other settings, or restore() it first")
        return model.edit(facts)
    get_method(method)  # an unknown method fails before any model is loaded
    adapter, source = _adapter(model, processor)
    record = getattr(adapter.model, RECORD_ATTRIBUTE, None)
    if not isinstance(record, EditRecord):
        record = EditRecord(adapter, source)
    elif not record.in_weights:
        raise ValueError("this model also holds edits outside its weights; edit its EditedModel instead")
    prepared = record.method_for(method, dict(config), editor, train)
    batch = record.add(facts, prepared, dict(config), editor, train_split(train))
    if batch.in_weights:
        setattr(adapter.model, RECORD_ATTRIBUTE, record)
        return adapter.model
    return EditedModel(record)


def restore(edited: Any) -> nn.Module:
    """Undo every edit of a model :func:`edit` returned; returns the unedited transformers model."""
    if isinstance(edited, EditedModel):
        return edited.restore()
    record = getattr(edited, RECORD_ATTRIBUTE, None)
    if not isinstance(record, EditRecord):
        raise ValueError(f"{type(edited).__name__} holds no edits made by editors.edit")
    return record.restore()


def edit_record(edited: Any) -> EditRecord:
    """The :class:`EditRecord` of a model :func:`edit` returned."""
    record = edited.edits if isinstance(edited, EditedModel) else getattr(edited, RECORD_ATTRIBUTE, None)
    if not isinstance(record, EditRecord):
        raise ValueError(f"{type(edited).__name__} holds no edits made by editors.edit")
    return record


def save_edited(edited: Any, directory: str | os.PathLike) -> Path:
    """Write a model :func:`edit` returned to ``directory``: ``save_pretrained`` (safetensors), its
    processor, ``edits.json`` and the facts' images; an :class:`EditedModel` as it saves itself."""
    directory = Path(directory)
    if isinstance(edited, EditedModel):
        edited.save_pretrained(directory)
        return directory
    record = edit_record(edited)
    directory.mkdir(parents=True, exist_ok=True)
    edited.save_pretrained(directory, safe_serialization=True)
    record.adapter.processor.save_pretrained(directory)
    record.write(directory)
    return directory
