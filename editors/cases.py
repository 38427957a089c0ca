"""Edit cases as the engine and the methods see them, and the queries each metric asks.

A case is built from one dataset row (columns of :mod:`kebench_hf.schema`). Images are decoded
when the case is built, so a broken image surfaces as :class:`CaseError` naming the case and the
field, before any edit is applied.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
from PIL import Image

from editors.adapters.base import Query

#: the six metric families, in the order of the paper's tables
METRICS = ("reliability", "t_generality", "i_generality", "t_locality", "i_locality", "portability")


class CaseError(ValueError):
    """A record that cannot be turned into queries; the message names the case and the field."""


@dataclass(frozen=True)
class PortabilityQuestion:
    hop: int
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

    @property
    def edit_query(self) -> Query:
        """The query the edit is made on (the Reliability query)."""
        return Query(self.src, self.alt, self.image)

    def queries(self) -> list[tuple[str, Query]]:
        """``(metric, query)`` for every query of this case, reliability first."""
        listed = [
            ("reliability", self.edit_query),
            ("t_generality", Query(self.rephrase, self.alt, self.image)),
            ("i_generality", Query(self.src, self.alt, self.image_rephrase)),
            ("t_locality", Query(self.loc, self.loc_ans, None)),
            ("i_locality", Query(self.m_loc_q, self.m_loc_a, self.m_loc)),
        ]
        listed += [("portability", Query(item.question, item.answer, self.image)) for item in self.portability]
        return listed


_TEXT = ("case_id", "src", "rephrase", "pred", "alt", "loc", "loc_ans", "m_loc_q", "m_loc_a")
_IMAGES = ("image", "image_rephrase", "m_loc")


def _decoded_image(row: Mapping[str, Any], name: str, case_id: str) -> Image.Image:
    """The RGB image of field ``name``, from a decoded image or an undecoded ``{bytes, path}``."""
    value = row.get(name)
    if value is None:
        raise CaseError(f"case {case_id}: field {name!r}: image is missing")
    try:
        if isinstance(value, Mapping):
            if value.get("bytes"):
                value = Image.open(io.BytesIO(value["bytes"]))
            elif value.get("path"):
                value = Image.open(value["path"])
            else:
                raise CaseError(f"case {case_id}: field {name!r}: image has neither bytes nor a path")
        if not isinstance(value, Image.Image):
            raise CaseError(f"case {case_id}: field {name!r}: expected an image, got {type(value).__name__}")
        return value.convert("RGB")
    except CaseError:
        raise
    except Exception as error:
        raise CaseError(f"case {case_id}: field {name!r}: image cannot be decoded ({error})") from error


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
    images = {name: _decoded_image(row, name, case_id) for name in _IMAGES}
    return EditCase(**text, **images, portability=tuple(portability))


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
