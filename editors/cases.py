"""Edit cases as the engine and the methods see them (their queries: :mod:`editors.queries`).

A case is built from one dataset row (columns of :mod:`kebench_hf.schema`). Images are decoded
when the case is built, so a broken image surfaces as :class:`CaseError` naming the case and the
field, before any edit is applied.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import datasets
from PIL import Image

from editors.adapters.base import Query


class CaseError(ValueError):
    """A record that cannot be turned into queries; the message names the case and the field."""


@dataclass(frozen=True)
class PortabilityQuestion:
    hop: int
    question: str
    answer: str


@dataclass(frozen=True)
class OneHopEdit:
    """Edit-one-hop: after the case's edit, a second, text-only edit of a fact about the new entity
    (``edit_question`` -> ``edit_answer``); then ``question`` (on the edit image) must answer ``answer``."""

    edit_question: str
    edit_answer: str
    question: str
    answer: str


@dataclass(frozen=True)
class EditCase:
    """One edit: on ``image`` the answer to ``src`` becomes ``alt`` (was ``pred``)."""

    case_id: str
    src: str
    rephrase: str
    pred: str
    alt: str
    image: Image.Image | None
    image_rephrase: Image.Image | None
    loc: str
    loc_ans: str
    m_loc: Image.Image | None
    m_loc_q: str
    m_loc_a: str
    portability: tuple[PortabilityQuestion, ...] = field(default_factory=tuple)
    #: the second edit and its question (config ``edit_onehop``: exactly one; otherwise none)
    onehop: tuple[OneHopEdit, ...] = field(default_factory=tuple)
    #: this case is another case's edit-one-hop second edit (made by :meth:`second_edit`)
    is_second_edit: bool = False

    @property
    def edit_query(self) -> Query:
        """The query the edit is made on (the Reliability query)."""
        return Query(self.src, self.alt, self.image, second_edit=self.is_second_edit)

    def second_edit(self, on_image: bool = False) -> EditCase:
        """Edit-one-hop's second edit as a case of its own: ``edit_question`` -> ``edit_answer``, text
        only unless ``on_image`` (then on the edit image: a method that edits only through an image,
        as the reference's ``edit_twice_img``). Its other queries are the first edit's."""
        if len(self.onehop) != 1:
            raise CaseError(f"case {self.case_id}: field 'onehop' holds {len(self.onehop)} items; "
                            "edit-one-hop takes exactly one (the reference asserts it)")
        item = self.onehop[0]
        return replace(self, src=item.edit_question, alt=item.edit_answer,
                       image=self.image if on_image else None, onehop=(), is_second_edit=True)


_TEXT = ("case_id", "src", "rephrase", "pred", "alt", "loc", "loc_ans", "m_loc_q", "m_loc_a")
_IMAGES = ("image", "image_rephrase", "m_loc")


def decode_image(value: Any, where: str, name: str = "image") -> Image.Image:
    """The RGB image of field ``name`` of ``where`` (e.g. ``case c12``), from a decoded image, a file
    path or an undecoded ``{bytes, path}``; a :class:`CaseError` naming both when it cannot be read."""
    if value is None:
        raise CaseError(f"{where}: field {name!r}: image is missing")
    try:
        if isinstance(value, Mapping):
            if value.get("bytes"):
                value = Image.open(io.BytesIO(value["bytes"]))
            elif value.get("path"):
                value = Image.open(value["path"])
            else:
                raise CaseError(f"{where}: field {name!r}: image has neither bytes nor a path")
        elif isinstance(value, (str, os.PathLike)):
            value = Image.open(value)
        if not isinstance(value, Image.Image):
            raise CaseError(f"{where}: field {name!r}: expected an image, got {type(value).__name__}")
        return value.convert("RGB")
    except CaseError:
        raise
    except Exception as error:
        raise CaseError(f"{where}: field {name!r}: image cannot be decoded ({error})") from error


def _decoded_image(row: Mapping[str, Any], name: str, case_id: str) -> Image.Image:
    return decode_image(row.get(name), f"case {case_id}", name)


def case_from_row(row: Mapping[str, Any]) -> EditCase:
    """The :class:`EditCase` of a dataset row; raises :class:`CaseError` naming case and field."""
    case_id = str(row.get("case_id", "?"))
    text: dict[str, str] = {}
    for name in _TEXT:
        value = row.get(name)
        if not isinstance(value, str) or (name != "case_id" and not value.strip()):
            raise CaseError(f"case {case_id}: field {name!r} is missing, empty or not a string")
        text[name] = value
    portability = []
    for index, item in enumerate(row.get("portability") or []):
        if not item.get("question") or not item.get("answer"):
            raise CaseError(f"case {case_id}: field 'portability'[{index}] lacks a question or answer")
        portability.append(PortabilityQuestion(int(item.get("hop") or 1), item["question"], item["answer"]))
    onehop = []
    for index, item in enumerate(row.get("onehop") or []):
        values = {name: item.get(name) for name in ("edit_question", "edit_answer", "question", "answer")}
        empty = [name for name, value in values.items() if not isinstance(value, str) or not value.strip()]
        if empty:
            raise CaseError(f"case {case_id}: field 'onehop'[{index}] lacks {', '.join(empty)}")
        onehop.append(OneHopEdit(**values))
    images = {name: _decoded_image(row, name, case_id) for name in _IMAGES}
    return EditCase(**text, **images, portability=tuple(portability), onehop=tuple(onehop))


class CaseSequence(Sequence[EditCase]):
    """A split as a lazy sequence of cases: images are decoded only for the cases accessed.

    ``texts(i)`` reads one row without decoding its images (IKE's retrieval only needs text).
    """

    def __init__(self, rows: Any) -> None:
        # Images are decoded here, per field, so a broken one is reported with its field name.
        for name in _IMAGES:
            if name in rows.column_names:
                rows = rows.cast_column(name, datasets.Image(decode=False))
        self.rows = rows
        self._text_columns = rows.select_columns([c for c in _TEXT if c in rows.column_names])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> EditCase:  # type: ignore[override]
        return case_from_row(self.rows[index])

    def __iter__(self) -> Iterator[EditCase]:
        for index in range(len(self)):
            yield self[index]

    def texts(self) -> list[dict[str, str]]:
        """Every case's text fields (no image is decoded)."""
        return list(self._text_columns)


def load_split(data: str | os.PathLike, config: str, split: str) -> datasets.Dataset:
    """One split of KEBench ``config``; a missing split is a one-line error naming it."""
    from kebench_hf.builder import load_kebench

    try:
        return load_kebench(data, config, split=split)
    except (KeyError, ValueError) as error:
        if "split" not in str(error).lower():
            raise
        raise ValueError(f"data {data}: config {config!r} has no split {split!r} ({error})") from None


def stream_split(data: str | os.PathLike, config: str, split: str) -> tuple[datasets.IterableDataset, int | None]:
    """One split of an exported KEBench dataset (a local ``kebench export`` directory or a hub repo of
    one) read as a stream, ``load_dataset(..., streaming=True)``: rows arrive a Parquet batch at a
    time, images undecoded; and its number of cases, from the card's split sizes (None if it has none)."""
    from pathlib import Path

    from kebench_hf.builder import _is_exported

    source = str(data)
    if Path(source).exists() and not _is_exported(Path(source)):
        raise ValueError(f"data {source}: --streaming reads an exported dataset (kebench export) or a hub repo "
                         "of one; this is a release-layout directory")
    try:
        info = datasets.load_dataset_builder(source, config).info
        stream = datasets.load_dataset(source, config, split=split, streaming=True)
    except (ValueError, FileNotFoundError) as error:
        raise ValueError(f"data {source}: config {config!r} split {split!r} cannot be streamed ({error})") from None
    sizes = info.splits or {}
    total = sizes[split].num_examples if split in sizes else None
    for name in _IMAGES:
        if stream.features is not None and name in stream.features:
            stream = stream.cast_column(name, datasets.Image(decode=False))
    return stream, total
