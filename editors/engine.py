"""The evaluation loop: (adapter, method, cases) -> prediction rows in the metric's schema.

Per group of cases (one case, or N with ``--sequential N``, our protocol):

1. build each case's queries (:mod:`editors.queries`) and encode them once (one batch per case);
2. pre-edit readouts and greedy answers on the base model, one batched forward per case;
3. apply the edit(s), score every query of the case in one batched forward (+ generation);
4. restore: the method copies back exactly the tensors it changed.

A case with a one-hop edit (config ``edit_onehop``) gets both its edits before it is scored, as the
reference's ``edit_onehop`` branch does. :meth:`Engine.run_gap` is the reference's sequential-gap
protocol instead: every pre-edit output first, then edits accumulate, case i is scored after G
further edits, and everything is restored only at the end.

A case that cannot be built (missing field, image that fails to decode) or that the adapter refuses
(e.g. an empty question) is written as *failed* rows, with empty ``pre``/``post`` and generations,
which the metric counts as skipped; the run goes on.
"""

from __future__ import annotations

import logging
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from editors.adapters.base import EncodedBatch, ModelAdapter, Query
from editors.cases import CaseError, EditCase
from editors.forward import Readout, TopLayers, model_logits, readouts
from editors.methods.base import AppliedEdit, EditMethod
from editors.queries import DEFAULT_CONFIG, QuerySpec, config_metrics
from editors.queries import case_queries as spec_queries

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineOptions:
    """How queries are scored; ``config``: the dataset config of the cases (it decides their queries,
    see :mod:`editors.queries`); ``queries``: the query specs asked (a preset's table,
    :func:`editors.queries.query_table`; None: :data:`editors.queries.QUERIES`)."""

    generate: bool = True
    max_new_tokens: int = 16
    seed: int = 0
    config: str = DEFAULT_CONFIG
    queries: tuple[QuerySpec, ...] | None = None


@dataclass
class CaseResult:
    """One finished case: its prediction rows, or the reason it failed (then rows are empty ones)."""

    case_id: str
    rows: list[dict[str, Any]]
    error: str | None = None


@dataclass
class ScoredCase:
    """A case's queries and their pre-edit outputs, kept until its edit is scored."""

    case: EditCase
    labels: list[tuple[str, int]]
    queries: list[Query]
    topk: list[int]
    #: per query, the positions its top-k is kept over (its spec's ``positions``)
    positions: list[str]
    pre: list[Readout]
    pre_text: list[str]
    encoded: EncodedBatch | None = None
    top: TopLayers | None = None

    def rows(self, post: list[Readout], post_text: list[str]) -> list[dict[str, Any]]:
        """The case's prediction rows (metric schema) given its post-edit outputs."""
        rows = []
        for index, ((metric, hop), query) in enumerate(zip(self.labels, self.queries, strict=True)):
            before, after = self.pre[index], post[index]
            if self.topk[index]:
                span = list(before.answer_span)
                pre_ids, post_ids = before.topk.tolist(), after.topk.tolist()
            else:
                span = []
                pre_ids = [[token] for token in before.answer_argmax]
                post_ids = [[token] for token in after.answer_argmax]
            rows.append(
                {"case_id": self.case.case_id, "metric": metric, "hop": hop, "target": before.target_ids,
                 "answer_span": span, "pre": pre_ids, "post": post_ids, "answer": query.answer,
                 "pre_text": self.pre_text[index], "post_text": post_text[index], "aliases": []}
            )
        return rows


def case_queries(
    case: EditCase, options: EngineOptions
) -> tuple[list[tuple[str, int]], list[Query], list[int], list[str]]:
    """``(labels, queries, topk, positions)`` of a case: ``(metric, hop)`` per query, the ranks it
    keeps and the positions it keeps them over, read from its spec."""
    listed = spec_queries(case, options.config, options.queries)
    return ([(spec.metric, hop) for spec, hop, _ in listed], [query for _, _, query in listed],
            [spec.topk for spec, _, _ in listed], [spec.positions for spec, _, _ in listed])


def case_seed(seed: int, case_id: str) -> int:
    """A per-case seed, so a resumed run edits each case exactly as an uninterrupted one would."""
    return (seed * 1_000_003 + zlib.crc32(case_id.encode())) % 2**31


def failed_rows(case_id: str, config: str = DEFAULT_CONFIG) -> list[dict[str, Any]]:
    """The rows of a case of ``config`` that could not be scored: one per metric, nothing predicted."""
    return [
        {"case_id": case_id, "metric": metric, "hop": 0, "target": [], "answer_span": [], "pre": [], "post": [],
         "answer": "", "pre_text": "", "post_text": "", "aliases": []}
        for metric in config_metrics(config)
    ]


class Engine:
    """Runs one method over cases on one adapter; yields a :class:`CaseResult` per case."""

    def __init__(self, adapter: ModelAdapter, method: EditMethod, options: EngineOptions | None = None) -> None:
        self.adapter = adapter
        self.method = method
        self.options = options or EngineOptions()
        # Methods enable gradients on what they train; nothing else ever needs them.
        adapter.model.requires_grad_(False)
        adapter.model.eval()
        self.first_edited_layer = method.first_edited_layer(adapter)
        #: edits kept through the next case's pre-edit pass (method.stale_baseline)
        self._unrestored: list[AppliedEdit] = []

    def run(self, cases: Iterator[tuple[str, EditCase | CaseError]], sequential: int = 1) -> Iterator[CaseResult]:
        """Edit and score ``cases`` (``(case_id, case or the error building it)``), ``sequential`` at a time."""
        if sequential > 1 and not self.method.supports_sequential:
            raise ValueError(f"method {self.method.name!r} does not support sequential editing")
        group: list[ScoredCase] = []
        try:
            for case_id, case in cases:
                scored = self._pre_edit(case_id, case)
                if isinstance(scored, CaseResult):
                    yield scored
                    continue
                group.append(scored)
                if len(group) == sequential:
                    yield from self._edit_group(group)
                    group = []
            if group:
                yield from self._edit_group(group)
        finally:
            self._restore(self._unrestored)

    def run_gap(self, cases: Sequence[tuple[str, EditCase | CaseError]], gap: int, scored: int) -> Iterator[CaseResult]:
        """VLKEB's sequential-gap protocol (``test_sequential_editing.py``, ``multihop_and_sequential``).

        The pre-edit outputs of the first ``scored`` cases are all taken on the unedited model first.
        Then the edits of ``cases`` are applied one after the other and never undone during the run:
        once edit ``s`` is applied (``s >= gap``), case ``s - gap`` is scored, so case ``i`` is scored
        with edits ``0 .. i + gap`` in the model (its own and ``gap`` further ones). The run stops after
        the last scored case; the ``gap`` cases after it are edited, never scored. All edits are
        restored at the end (in reverse order: bit for bit).
        """
        if not self.method.supports_sequential:
            raise ValueError(f"method {self.method.name!r} does not support sequential editing")
        if gap < 0 or not 0 < scored <= len(cases) - gap:
            raise ValueError(f"sequential gap {gap}: {len(cases)} cases cannot score {scored} cases (need scored + gap)")
        # inputs are encoded again at scoring time: holding every case's encoding and captured
        # activations for the whole run would grow with its length
        waiting: deque[ScoredCase | CaseResult] = deque(
            self._pre_edit(case_id, case, keep_inputs=False) for case_id, case in cases[:scored]
        )
        applied: list[AppliedEdit] = []
        failed_edits: dict[str, str] = {}
        try:
            for step, (case_id, case) in enumerate(cases[: scored + gap]):
                if not isinstance(case, CaseError):
                    torch.manual_seed(case_seed(self.options.seed, case_id))
                    try:
                        applied += self._apply(case)
                    except (CaseError, ValueError) as error:
                        logger.warning("edit of case %s failed: %s", case_id, error)
                        failed_edits[case_id] = str(error)
                if step >= gap:
                    yield self._score_after(waiting.popleft(), applied[-1] if applied else AppliedEdit(self.adapter),
                                            failed_edits)
        finally:
            for edit in reversed(applied):
                edit.restore()

    # -- steps --------------------------------------------------------------------------------
    def _pre_edit(self, case_id: str, case: EditCase | CaseError, keep_inputs: bool = True) -> ScoredCase | CaseResult:
        if isinstance(case, CaseError):
            logger.warning("case %s failed: %s", case_id, case)
            return CaseResult(case_id, failed_rows(case_id, self.options.config), str(case))
        labels, queries, topk, positions = case_queries(self.method.target_case(case), self.options)
        try:
            encoded = self.adapter.encode(queries).to(self.adapter.device)
            top = None
            if self.first_edited_layer is not None and keep_inputs:
                # The edit leaves the layers below this one alone: run them once, reuse after the edit.
                top = TopLayers(self.adapter, encoded, self.first_edited_layer)
                logits, offset = top.initial_logits, 0
                del top.initial_logits
            else:
                with torch.no_grad():
                    logits, offset = model_logits(self.adapter, encoded)
            pre = readouts(logits, offset, encoded, topk, positions)
            del logits
            pre_text = self._generate(queries, None)
        except (CaseError, ValueError) as error:
            logger.warning("case %s failed: %s", case_id, error)
            return CaseResult(case_id, failed_rows(case_id, self.options.config), f"case {case_id}: {error}")
        return ScoredCase(case, labels, queries, topk, positions, pre, pre_text, encoded if keep_inputs else None, top)

    def _apply(self, case: EditCase) -> list[AppliedEdit]:
        """The case's edit, or with a one-hop edit both: the case's, then the second on the edited model."""
        if not case.onehop:
            return [self.method.apply(self.adapter, case)]
        return self.method.apply_all(self.adapter, [case, case.second_edit(self.method.edits_through_image)])

    def _score_after(self, scored: ScoredCase | CaseResult, edit: AppliedEdit, failed_edits: dict[str, str]) -> CaseResult:
        """A gap-protocol case scored through ``edit`` (the cumulative state), or its failure."""
        if isinstance(scored, CaseResult):
            return scored
        case_id = scored.case.case_id
        try:
            if case_id in failed_edits:
                raise ValueError(failed_edits[case_id])
            post = edit.score(scored.queries, scored.topk, positions=scored.positions)
            return CaseResult(case_id, scored.rows(post, self._generate(scored.queries, edit)))
        except (CaseError, ValueError) as error:
            logger.warning("case %s failed: %s", case_id, error)
            return CaseResult(case_id, failed_rows(case_id, self.options.config), str(error))

    def _edit_group(self, group: list[ScoredCase]) -> Iterator[CaseResult]:
        self._restore(self._unrestored)
        applied: list[AppliedEdit] = []
        try:
            for scored in group:
                torch.manual_seed(case_seed(self.options.seed, scored.case.case_id))
                applied += self._apply(scored.case)
            last = applied[-1]  # sequential: the last edit sees the cumulative state
            results = []
            for scored in group:
                post = last.score(scored.queries, scored.topk, encoded=scored.encoded, top=scored.top,
                                  positions=scored.positions)
                post_text = self._generate(scored.queries, last)
                results.append(CaseResult(scored.case.case_id, scored.rows(post, post_text)))
        except (CaseError, ValueError) as error:
            logger.warning("edit of case(s) %s failed: %s", [s.case.case_id for s in group], error)
            results = [CaseResult(s.case.case_id, failed_rows(s.case.case_id, self.options.config), str(error)) for s in group]
        finally:
            if self.method.stale_baseline:
                self._unrestored = applied
            else:
                self._restore(applied)
        yield from results

    def _restore(self, applied: list[AppliedEdit]) -> None:
        while applied:
            applied.pop().restore()

    # -- helpers ------------------------------------------------------------------------------
    def _generate(self, queries: list[Query], edit: AppliedEdit | None) -> list[str]:
        if not self.options.generate:
            return [""] * len(queries)
        if edit is None:
            return self.adapter.generate(queries, max_new_tokens=self.options.max_new_tokens)
        return edit.generate(queries, max_new_tokens=self.options.max_new_tokens)
