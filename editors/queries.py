"""The one definition of an edit case's queries: which metric each answers and how it is built.

Every consumer looks a query up here by name: the engine (which queries a case is scored on, the
ranks kept, the rows written), the trained editors (which queries they learn from, which are in the
scope of the edit), SERAC (its scope labels), pretraining (what the model must know before the
edit) and the main job's table (its columns). Adding or renaming a spec changes all of them.

A spec builds its queries from an :class:`~editors.cases.EditCase`: ``question`` and ``answer``
name fields of the case, or, when ``items`` is set, fields of each element of that case field (one
query per element: the portability questions, the edit-one-hop question); ``image`` names the
case's image field (``None``: a text-only query).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from editors.adapters.base import Query
from editors.presets import POSITIONS, Preset
from kebench_hf.constants import DEFAULT_CONFIG

if TYPE_CHECKING:
    from editors.cases import EditCase


#: the dataset configs whose cases carry a single edit, scored on the paper's six metrics
SINGLE_EDIT_CONFIGS = ("edit", "multihop")


@dataclass(frozen=True)
class QuerySpec:
    """One kind of query of an edit case."""

    #: the query's name, as the engine, the trained editors and pretraining look it up
    name: str
    #: the score its prediction rows count towards (``metric`` column of the predictions)
    metric: str
    #: the case field (or item field, see ``items``) holding the question
    question: str
    #: the case field (or item field) holding the expected answer
    answer: str
    #: the case's image field shown with the question; ``None``: text only
    image: str | None
    #: short column title of the score in tables
    title: str
    #: 0: scored on the answer tokens (argmax against the target); k > 0: a locality query, its
    #: top-k ids compared pre- against post-edit (ordered, element-wise) over ``positions``
    topk: int = 0
    #: which positions a locality query compares (a key of :data:`POSITIONS`); a preset's table
    #: (:func:`query_table`) sets its own, and the engine reads it from there
    positions: str = "all_but_last"
    #: whether the edit should change its answer (generality) or must leave it alone (locality)
    in_scope: bool = True
    #: the case field holding a tuple of items, one query each (``None``: one query per case)
    items: str | None = None
    #: the dataset configs whose cases are asked it
    configs: tuple[str, ...] = SINGLE_EDIT_CONFIGS

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"query {self.name!r}: unknown positions {self.positions!r}; expected one of {sorted(POSITIONS)}")

    def build(self, case: EditCase, answer: str | None = None, context: str = "") -> list[tuple[int, Query]]:
        """``(hop, query)`` for each query of ``case`` (none when its ``items`` are empty).

        ``answer`` replaces the expected answer (e.g. the old answer ``case.pred`` before the edit);
        ``context`` is read before the query (see :class:`~editors.adapters.base.Query`).
        """
        image = getattr(case, self.image) if self.image else None
        if self.items is None:
            return [(0, Query(getattr(case, self.question), answer or getattr(case, self.answer), image, context))]
        return [
            (getattr(item, "hop", 0), Query(getattr(item, self.question), answer or getattr(item, self.answer), image, context))
            for item in getattr(case, self.items)
        ]

    def query(self, case: EditCase, answer: str | None = None, context: str = "") -> Query:
        """The one query of a spec without ``items``."""
        if self.items is not None:
            raise ValueError(f"query {self.name!r} has one query per {self.items!r} item, not one per case")
        return self.build(case, answer, context)[0][1]


#: every query of an edit case, in the order of the paper's tables
QUERIES: tuple[QuerySpec, ...] = (
    QuerySpec("reliability", "reliability", "src", "alt", "image", "Rel."),
    QuerySpec("t_generality", "t_generality", "rephrase", "alt", "image", "T-Gen."),
    QuerySpec("i_generality", "i_generality", "src", "alt", "image_rephrase", "I-Gen."),
    QuerySpec("t_locality", "t_locality", "loc", "loc_ans", None, "T-Loc.", topk=1, in_scope=False),
    QuerySpec("i_locality", "i_locality", "m_loc_q", "m_loc_a", "m_loc", "I-Loc.", topk=10, in_scope=False),
    QuerySpec("portability", "portability", "question", "answer", "image", "Port.", items="portability"),
    # asked after both edits of an edit-one-hop case (the reference's edit_onehop branch scores
    # nothing else on that file)
    QuerySpec("edit_onehop", "edit_onehop", "question", "answer", "image", "Edit-1-hop", items="onehop",
              configs=("edit_onehop",)),
)


def spec(name: str) -> QuerySpec:
    """The spec named ``name``."""
    for candidate in QUERIES:
        if candidate.name == name:
            return candidate
    raise ValueError(f"unknown query {name!r}; known: {[candidate.name for candidate in QUERIES]}")


def config_specs(config: str, table: tuple[QuerySpec, ...] | None = None) -> tuple[QuerySpec, ...]:
    """The specs of ``table`` (None: :data:`QUERIES`) the cases of dataset ``config`` are scored on."""
    return tuple(candidate for candidate in (QUERIES if table is None else table) if config in candidate.configs)


def config_metrics(config: str) -> tuple[str, ...]:
    """The scores of dataset ``config``'s cases, in table order (each once)."""
    return tuple(dict.fromkeys(candidate.metric for candidate in config_specs(config)))


def metric_titles(metrics: tuple[str, ...]) -> tuple[str, ...]:
    """The column titles of ``metrics`` (scores named in the table)."""
    titles = {candidate.metric: candidate.title for candidate in QUERIES}
    return tuple(titles[metric] for metric in metrics)


def trained_specs() -> tuple[QuerySpec, ...]:
    """The queries a trained editor learns from: every spec with one query per case."""
    return tuple(candidate for candidate in QUERIES if candidate.items is None)


__all__ = ["DEFAULT_CONFIG", "POSITIONS", "QUERIES", "QuerySpec", "case_queries", "config_metrics", "config_specs",
           "metric_titles", "spec", "trained_specs"]


def case_queries(case: EditCase, config: str, table: tuple[QuerySpec, ...] | None = None) -> list[tuple[QuerySpec, int, Query]]:
    """``(spec, hop, query)`` for every query ``case`` (of dataset ``config``) is scored on, the specs
    those of ``table`` (a preset's, :func:`query_table`; None: :data:`QUERIES`)."""
    return [(candidate, hop, query) for candidate in config_specs(config, table) for hop, query in candidate.build(case)]


def query_table(preset: Preset, method: Any) -> tuple[QuerySpec, ...]:
    """The query specs (:data:`QUERIES`) as ``preset`` asks them of ``method``: every locality spec
    (``topk > 0``) compares the preset's :meth:`~editors.presets.Preset.locality_positions`."""
    positions = preset.locality_positions(method)
    return tuple(replace(spec, positions=positions) if spec.topk else spec for spec in QUERIES)
