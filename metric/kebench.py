"""KEBench (VLKEB) scoring: six knowledge-editing metrics from pre/post-edit predictions.

This file is both the ``evaluate`` module (``evaluate.load("metric/kebench.py")`` or from a hub Space)
and the one home of the scoring math, as NumPy over Arrow buffers (``from metric.kebench import
score_predictions``). It must stay self-contained: a Space ships this file alone.
"""

from __future__ import annotations

import json
import logging
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import datasets
import evaluate
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

logger = logging.getLogger(__name__)

#: the paper's six metrics, which every edit case of the ``edit`` config is scored on
METRICS = ("reliability", "t_generality", "i_generality", "t_locality", "i_locality", "portability")
#: edit-one-hop portability: edited src -> alt on the image, then the text-only ``port_edit_q`` ->
#: ``port_edit_a``, asked ``port_q`` expecting ``port_a`` (the release's ``eval_edit_onehop.json``)
EDIT_ONEHOP = "edit_onehop"
#: every score this metric reports (a row's ``metric`` is one of them), in table order
SCORES = (*METRICS, EDIT_ONEHOP)
#: how tables, plots and the leaderboard title each score
DISPLAY_NAMES = {
    "reliability": "Reliability",
    "t_generality": "T-Generality",
    "i_generality": "I-Generality",
    "t_locality": "T-Locality",
    "i_locality": "I-Locality",
    "portability": "Portability",
    EDIT_ONEHOP: "Edit-1-hop Port.",
}
#: scores judged against the answer (the others compare post-edit with pre-edit outputs)
TARGET_METRICS = ("reliability", "t_generality", "i_generality", "portability", EDIT_ONEHOP)
LOCALITY_METRICS = ("t_locality", "i_locality")
PROTOCOLS = ("token", "generate")
#: "case": mean over cases of each case's accuracy; "token": micro mean over every answer token (locality:
#: every compared id) of the metric's rows, as the reference's KE evaluation accumulates its accuracy
AVERAGES = ("case", "token")
#: how the queries behind the predictions were built (the engine's presets); recorded, never mixed
PRESETS = ("kebench", "vlkeb")

#: one row per query: the interface between the editors (who write it) and this metric
PREDICTION_FEATURES = datasets.Features(
    {
        "case_id": datasets.Value("string"),
        "metric": datasets.Value("string"),
        "hop": datasets.Value("int32"),
        "target": datasets.List(datasets.Value("int64")),
        "answer_span": datasets.List(datasets.Value("int64")),
        "pre": datasets.List(datasets.List(datasets.Value("int64"))),
        "post": datasets.List(datasets.List(datasets.Value("int64"))),
        "answer": datasets.Value("string"),
        "pre_text": datasets.Value("string"),
        "post_text": datasets.Value("string"),
        "aliases": datasets.List(datasets.Value("string")),
    }
)
PREDICTION_SCHEMA = PREDICTION_FEATURES.arrow_schema

_CITATION = """\
@inproceedings{huang2024vlkeb,
  title     = {VLKEB: A Large Vision-Language Model Knowledge Editing Benchmark},
  author    = {Han Huang and Haitian Zhong and Tao Yu and Qiang Liu and Shu Wu and Liang Wang and Tieniu Tan},
  booktitle = {Advances in Neural Information Processing Systems (Datasets and Benchmarks Track)},
  year      = {2024},
  note      = {arXiv:2403.07350 (first released as KEBench)}
}
"""

_DESCRIPTION = """\
KEBench (VLKEB) scores knowledge editing of vision-language models on six metrics, each a mean over
edit cases in percent: Reliability, T-Generality, I-Generality, T-Locality, I-Locality, Portability
(also per hop), plus edit-one-hop portability, with bootstrap 95% confidence intervals. Two
protocols: `token` (teacher-forced top-k agreement; the reference code's answer-token accuracy
formula) and `generate` (normalized exact match of greedy generations, stricter).
"""

_KWARGS_DESCRIPTION = """
Args (one list entry per query row; the columns of a KEBench predictions file):
    case_id (`list[str]`): edit case of the row.
    metric (`list[str]`): one of reliability, t_generality, i_generality, t_locality, i_locality, portability,
        edit_onehop.
    hop (`list[int]`): 0, or the hop of a portability row.
    target (`list[list[int]]`): answer token ids.
    answer_span (`list[list[int]]`): locality rows: `[start, end)` positions predicting the answer; else `[]`.
    pre (`list[list[list[int]]]`): pre-edit top-k token ids per scored position.
    post (`list[list[list[int]]]`): post-edit, same shape as `pre`.
    answer (`list[str]`): expected answer text.
    pre_text (`list[str]`), post_text (`list[str]`): greedy generations, `""` when not generated.
    aliases (`list[list[str]]`): other accepted answers.
    protocol (`str`): "token" (default) or "generate".
    average (`str`): "case" (default: mean over cases) or "token" (micro mean over answer tokens; token protocol).
    preset (`str`): "kebench" (default) or "vlkeb": how the predictions' queries were built, recorded in the output.
    bootstrap (`int`): bootstrap resamples for the 95% intervals (default 1000; 0 = none).
    seed (`int`): bootstrap seed (default 0).
Returns:
    protocol, preset, average, scores {score: 0-100 or None}, ci95 {score: [lo, hi] or None},
    counts {score: cases}, skipped {score: rows without a prediction for the protocol},
    portability_by_hop {"1": ...}, locality_answer_only {"t_locality": ..., "i_locality": ...}
    (token protocol; None under generate). The scores are the six metrics and edit_onehop.
Examples:
    >>> kebench = evaluate.load("metric/kebench.py")
    >>> kebench.compute(case_id=["c0"], metric=["reliability"], hop=[0], target=[[5, 6]],
    ...     answer_span=[[]], pre=[[[5], [7]]], post=[[[5], [6]]], answer=["Ronaldo"],
    ...     pre_text=[""], post_text=[""], aliases=[[]], bootstrap=0)["scores"]["reliability"]
    100.0
"""

_INTEGER_COLUMNS = ("hop", "target", "answer_span", "pre", "post")


def _where(row: int, column: str, message: str) -> ValueError:
    return ValueError(f"predictions row {row}, column {column!r}: {message}")


def _column_error(column: str, message: str) -> ValueError:
    """For a whole column of the wrong type, where no single row is to blame."""
    return ValueError(f"predictions column {column!r}: {message}")


def _kind_matches(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Same nesting, integers where integers are expected, strings where strings; ``null`` leaves
    (from all-empty lists) match anything."""
    if pa.types.is_null(actual):
        return True
    if pa.types.is_list(expected):
        is_list = pa.types.is_list(actual) or pa.types.is_large_list(actual)
        return is_list and _kind_matches(actual.value_type, expected.value_type)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual)
    return pa.types.is_string(actual) or pa.types.is_large_string(actual)


def _plural(data_type: pa.DataType) -> str:
    if pa.types.is_list(data_type):
        return f"lists of {_plural(data_type.value_type)}"
    return "integers" if pa.types.is_integer(data_type) else "strings"


def _describe(data_type: pa.DataType) -> str:
    if pa.types.is_list(data_type):
        return f"a list of {_plural(data_type.value_type)}"
    return "an integer" if pa.types.is_integer(data_type) else "a string"


def _first_null_row(array: pa.Array) -> int | None:
    """Row of the first null at any nesting level of ``array``."""
    levels = [array]
    while pa.types.is_list(levels[-1].type) or pa.types.is_large_list(levels[-1].type):
        levels.append(levels[-1].flatten())
    if not any(level.null_count for level in levels):
        return None
    rows = np.arange(len(array))
    for level in levels:
        nulls = level.is_null().to_numpy(zero_copy_only=False)
        if nulls.any():
            return int(rows[np.argmax(nulls)])
        rows = np.repeat(rows, np.diff(np.asarray(level.offsets)))
    return None


#: what ``pa.array`` raises on a Python value it cannot hold: a wrong mix, an int beyond 64 bits, a lone surrogate
_UNCONVERTIBLE = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeEncodeError)


def _cast(name: str, array: pa.Array, data_type: pa.DataType) -> pa.Array:
    """``array`` cast to ``data_type``; a value out of range (an id of 2**63, a hop past int32) is an
    error naming its row."""
    try:
        return array.cast(data_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        levels = [array]
        while pa.types.is_list(levels[-1].type) or pa.types.is_large_list(levels[-1].type):
            levels.append(levels[-1].flatten())
            data_type = data_type.value_type
        leaf = levels[-1]
        # a cast fails for the whole array at once: bisect the flat values (a sliced list array would
        # still cast all of its children) for the first that does not fit
        low, high = 0, len(leaf)
        while high - low > 1:
            middle = (low + high) // 2
            try:
                leaf.slice(low, middle - low).cast(data_type)
                low = middle
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                high = middle
        row = low
        for level in reversed(levels[:-1]):
            row = int(np.searchsorted(_offsets(level), row, side="right") - 1)
        raise _where(row, name, f"{leaf[low].as_py()!r:.80} does not fit {data_type} ({error})") from None


def _python_column(name: str, values: Sequence[Any]) -> pa.Array:
    """Arrow array of a Python column, typed by inference and never coerced: ``pa.array`` given a
    target type would silently truncate 1.5 to 1."""
    expected = PREDICTION_SCHEMA.field(name).type
    values = [value.tolist() if isinstance(value, np.ndarray) else value for value in values]
    try:
        array = pa.array(values)
    except _UNCONVERTIBLE:
        array = None
    if array is not None and _kind_matches(array.type, expected):
        return array
    for row, value in enumerate(values):
        try:
            row_array = pa.array([value])
        except _UNCONVERTIBLE as error:
            raise _where(row, name, f"expected {_describe(expected)}, got {value!r:.80} ({error})") from None
        if not _kind_matches(row_array.type, expected):
            raise _where(row, name, f"expected {_describe(expected)}, got {value!r:.80}")
    raise _column_error(name, f"expected {_describe(expected)}: rows mix types")


def _column_values(name: str, values: Any) -> Any:
    """A column given as a mapping's value: an Arrow array, or a sized iterable (list, NumPy array,
    pandas Series) with one value per row."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    if values is None:
        raise _column_error(name, "missing (None)")
    zero_dimensional = isinstance(values, np.ndarray) and values.ndim == 0
    sized = hasattr(values, "__len__") and hasattr(values, "__iter__")
    if isinstance(values, (str, bytes, Mapping)) or not sized or zero_dimensional:
        raise _column_error(name, f"expected a list with one value per row, got {type(values).__name__} {values!r:.80}")
    return values


def _single_chunk(array: pa.ChunkedArray) -> pa.Array:
    return array.chunk(0) if array.num_chunks == 1 else array.combine_chunks()


def _arrow_column(name: str, array: pa.Array | pa.ChunkedArray) -> pa.Array:
    expected = PREDICTION_SCHEMA.field(name).type
    if isinstance(array, pa.ChunkedArray):
        array = _single_chunk(array)
    if not _kind_matches(array.type, expected):
        what = "token ids must be integers" if name in _INTEGER_COLUMNS else f"expected {_describe(expected)}"
        raise _column_error(name, f"{what}, but the column's type is {array.type}")
    return array


def to_table(data: Any) -> pa.Table:
    """Validated predictions as an Arrow table with exactly :data:`PREDICTION_SCHEMA`.

    ``data`` is a ``pa.Table``, a ``datasets.Dataset``, a mapping of column -> values, or a sequence
    of row mappings. Missing columns or fields, nulls, and values of the wrong type (floats or NaN
    as token ids, numbers as case ids) raise ``ValueError`` naming the row and column; extra
    columns are ignored.
    """
    if isinstance(data, datasets.Dataset):
        data = data.with_format("arrow")[:]
    if isinstance(data, pa.Table):
        columns = {name: data.column(name) for name in data.column_names}
    elif isinstance(data, Mapping):
        columns = {name: _column_values(name, values) for name, values in data.items() if name in PREDICTION_SCHEMA.names}
    elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        columns = {}
        for row, record in enumerate(data):
            if not isinstance(record, Mapping):
                raise ValueError(f"predictions row {row}: expected a mapping of column -> value, got {record!r:.80}")
            missing = [name for name in PREDICTION_SCHEMA.names if name not in record]
            if missing:
                raise _where(row, missing[0], "missing field")
        for name in PREDICTION_SCHEMA.names:
            columns[name] = [record[name] for record in data]
    else:
        raise ValueError(f"predictions must be a table, a mapping of columns or a list of rows, got {type(data)}")

    missing = [name for name in PREDICTION_SCHEMA.names if name not in columns]
    if missing:
        raise ValueError(f"predictions are missing column(s) {missing}; expected {PREDICTION_SCHEMA.names}")
    lengths = {name: len(columns[name]) for name in PREDICTION_SCHEMA.names}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"prediction columns differ in length: {lengths}")
    if next(iter(lengths.values())) == 0:
        raise ValueError("predictions are empty: no rows to score")

    arrays = []
    for field in PREDICTION_SCHEMA:
        values = columns[field.name]
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            array = _arrow_column(field.name, values)
        else:
            array = _python_column(field.name, values)
        null_row = _first_null_row(array)
        if null_row is not None:
            raise _where(null_row, field.name, "missing value (null/None)")
        arrays.append(_cast(field.name, array, field.type))
    return pa.Table.from_arrays(arrays, schema=PREDICTION_SCHEMA)


def _offsets(array: pa.Array) -> np.ndarray:
    offsets = np.asarray(array.offsets, dtype=np.int64)
    return offsets - offsets[0]


class _Rows:
    """The validated columns of a predictions table as flat NumPy arrays plus offsets."""

    def __init__(self, table: pa.Table):
        self.table = table
        self.n = table.num_rows
        metric_code = pc.index_in(table.column("metric"), value_set=pa.array(SCORES))
        unknown = metric_code.is_null().to_numpy(zero_copy_only=False)
        if unknown.any():
            row = int(np.argmax(unknown))
            raise _where(row, "metric", f"unknown metric {table.column('metric')[row].as_py()!r}; expected one of {SCORES}")
        self.metric = metric_code.to_numpy().astype(np.int64)
        self.is_locality = np.isin(self.metric, [SCORES.index(name) for name in LOCALITY_METRICS])
        self.case = np.asarray(pc.dictionary_encode(_single_chunk(table.column("case_id"))).indices, dtype=np.int64)
        self.hop = table.column("hop").to_numpy().astype(np.int64)

        pre = _single_chunk(table.column("pre"))
        post = _single_chunk(table.column("post"))
        self.position_offsets = _offsets(post)
        pre_positions, post_positions = pre.flatten(), post.flatten()
        self.entry_offsets = _offsets(post_positions)
        self.pre = np.asarray(pre_positions.flatten())
        self.post = np.asarray(post_positions.flatten())
        target = _single_chunk(table.column("target"))
        self.target_offsets = _offsets(target)
        self.target = np.asarray(target.flatten())
        span = _single_chunk(table.column("answer_span"))
        self.span_offsets = _offsets(span)
        self.span = np.asarray(span.flatten())

        self.positions = np.diff(self.position_offsets)
        self.scored_token = self.positions > 0
        self._check_shapes(_offsets(pre), _offsets(pre_positions))
        self._check_hops()

    def first_bad(self, bad: np.ndarray, column: str, describe: Callable[[int], str]) -> None:
        """Raise the error ``describe`` words for the first row flagged in ``bad``."""
        if bad.any():
            row = int(np.argmax(bad))
            raise _where(row, column, describe(row))

    def row_of_position(self, position: int) -> int:
        return int(np.searchsorted(self.position_offsets, position, side="right") - 1)

    def _check_shapes(self, pre_position_offsets: np.ndarray, pre_entry_offsets: np.ndarray) -> None:
        pre_positions = np.diff(pre_position_offsets)
        self.first_bad(
            pre_positions != self.positions,
            "post",
            lambda row: f"post has {self.positions[row]} positions but pre has {pre_positions[row]}",
        )
        entries = np.diff(self.entry_offsets)
        mismatch = np.diff(pre_entry_offsets) != entries
        if mismatch.any():
            position = int(np.argmax(mismatch))
            row = self.row_of_position(position)
            raise _where(row, "post", f"position {position - self.position_offsets[row]}: top-k of post and pre differ in length")
        empty = entries == 0
        if empty.any():
            position = int(np.argmax(empty))
            row = self.row_of_position(position)
            raise _where(row, "post", f"position {position - self.position_offsets[row]} has no token ids (k must be >= 1)")

        target_length = np.diff(self.target_offsets)
        self.first_bad(
            ~self.is_locality & self.scored_token & (target_length != self.positions),
            "post",
            lambda row: f"{self.positions[row]} positions but target has {target_length[row]} tokens",
        )
        span_length = np.diff(self.span_offsets)
        self.first_bad(
            ~self.is_locality & (span_length > 0),
            "answer_span",
            lambda row: f"only locality rows have an answer span; a {SCORES[self.metric[row]]} row has {span_length[row]} values",
        )
        # a scored locality row needs its span; a failed one (no positions) may have none
        needs_span = self.is_locality & (self.scored_token | (span_length > 0))
        self.first_bad(
            needs_span & (span_length != 2),
            "answer_span",
            lambda row: f"a locality row needs [start, end), got {span_length[row]} values",
        )
        start = np.zeros(self.n, dtype=np.int64)
        end = np.zeros(self.n, dtype=np.int64)
        has_span = span_length == 2
        start[has_span] = self.span[self.span_offsets[:-1][has_span]]
        end[has_span] = self.span[self.span_offsets[:-1][has_span] + 1]
        self.first_bad(
            needs_span & ~((start >= 0) & (start < end) & (end <= self.positions)),
            "answer_span",
            lambda row: f"[{start[row]}, {end[row]}) is not a non-empty range within the {self.positions[row]} positions",
        )
        self.span_start, self.span_end = start, end

    def _check_hops(self) -> None:
        self.first_bad(self.hop < 0, "hop", lambda row: f"hop must be >= 0, got {self.hop[row]}")
        portability = self.metric == SCORES.index("portability")
        self.first_bad(
            ~portability & (self.hop != 0),
            "hop",
            lambda row: f"only portability rows have a hop; a {SCORES[self.metric[row]]} row has hop {self.hop[row]}",
        )

    def check_duplicates(self) -> None:
        """Identical rows would double-weight a query, so they are an error naming both rows."""
        # hops by rank, not value, so that the key stays far from int64 overflow whatever the hops are
        _, hop_rank = np.unique(self.hop, return_inverse=True)
        key = (self.case * len(SCORES) + self.metric) * (int(hop_rank.max()) + 1) + hop_rank
        _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        candidates = np.flatnonzero(counts[inverse] > 1)
        seen: dict[str, int] = {}
        for row, record in zip(candidates, self.table.take(candidates).to_pylist(), strict=True):
            content = json.dumps(record, sort_keys=True)
            if content in seen:
                raise ValueError(
                    f"predictions rows {seen[content]} and {row} are identical "
                    f"(case_id {record['case_id']!r}, metric {record['metric']!r}, hop {record['hop']}); "
                    "a duplicate would count its query twice"
                )
            seen[content] = int(row)


def _token_row_scores(rows: _Rows) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row, under the token protocol: (hits, compared) of the score and of the answer-only
    locality. A row's accuracy is hits / compared; ``compared == 0`` means not scored."""
    matches = (rows.pre == rows.post).view(np.uint8)
    position_starts = rows.entry_offsets[:-1]
    position_matches = matches[:0]
    if len(position_starts):
        # the smallest counter that holds k keeps the summed copy as small as the match mask
        counter = np.min_scalar_type(int(np.diff(rows.entry_offsets).max()))
        position_matches = np.add.reduceat(matches, position_starts, dtype=counter)
    matched_before = np.concatenate([[0], np.cumsum(position_matches, dtype=np.int64)])
    entries_before = rows.entry_offsets
    first, last = rows.position_offsets[:-1], rows.position_offsets[1:]

    hits, compared = np.zeros(rows.n), np.zeros(rows.n)
    answer_hits, answer_compared = np.zeros(rows.n), np.zeros(rows.n)
    locality = np.flatnonzero(rows.is_locality & rows.scored_token)
    row_first, row_last = first[locality], last[locality]
    hits[locality] = matched_before[row_last] - matched_before[row_first]
    compared[locality] = entries_before[row_last] - entries_before[row_first]
    span_first, span_last = row_first + rows.span_start[locality], row_first + rows.span_end[locality]
    answer_hits[locality] = matched_before[span_last] - matched_before[span_first]
    answer_compared[locality] = entries_before[span_last] - entries_before[span_first]

    targeted = ~rows.is_locality & rows.scored_token
    position_row = np.repeat(np.arange(rows.n), rows.positions)
    target_row = np.repeat(np.arange(rows.n), np.diff(rows.target_offsets))
    # lengths agree row by row (checked), so the selected positions and target tokens line up
    top1 = rows.post[position_starts][targeted[position_row]]
    correct = top1 == rows.target[targeted[target_row]]
    hit_count = np.bincount(position_row[targeted[position_row]], weights=correct, minlength=rows.n)
    hits[targeted] = hit_count[targeted]
    compared[targeted] = rows.positions[targeted]
    return hits, compared, answer_hits, answer_compared


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalization; underscores count as spaces (the release writes ``Laredo,_Texas``)."""
    text = text.replace("_", " ").lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _generate_row_scores(rows: _Rows) -> tuple[np.ndarray, np.ndarray]:
    """Per row, under the generate protocol: (hit, compared), each 0 or 1; ``compared == 0``: not generated."""
    table = rows.table
    answers = table.column("answer").to_pylist()
    pre_texts = table.column("pre_text").to_pylist()
    post_texts = table.column("post_text").to_pylist()
    aliases = table.column("aliases").to_pylist()
    hits, compared = np.zeros(rows.n), np.zeros(rows.n)
    for row in range(rows.n):
        post = post_texts[row]
        if rows.is_locality[row]:
            if post and pre_texts[row]:
                hits[row], compared[row] = normalize_answer(post) == normalize_answer(pre_texts[row]), 1
        elif post:
            expected = {normalize_answer(text) for text in [answers[row], *aliases[row]]}
            if not normalize_answer(answers[row]):
                raise _where(row, "answer", f"{answers[row]!r} is empty after normalization")
            hits[row], compared[row] = normalize_answer(post) in expected, 1
    return hits, compared


def _case_totals(
    rows: _Rows, hits: np.ndarray, compared: np.ndarray, selected: np.ndarray, average: str
) -> tuple[np.ndarray, np.ndarray]:
    """(numerator, denominator) per case of the selected scored rows, so that a score is
    ``numerator.sum() / denominator.sum()``: a case's mean accuracy over 1 under ``average="case"``,
    its hits over its compared tokens under ``"token"``. Cases without a scored row are left out."""
    selected = selected & (compared > 0)
    _, case = np.unique(rows.case[selected], return_inverse=True)
    if average == "token":
        return np.bincount(case, weights=hits[selected]), np.bincount(case, weights=compared[selected])
    rows_per_case = np.bincount(case)
    case_means = np.bincount(case, weights=hits[selected] / compared[selected]) / rows_per_case
    return case_means, np.ones(len(case_means))


def _percent(numerator: np.ndarray, denominator: np.ndarray) -> float | None:
    return float(numerator.sum() / denominator.sum() * 100) if len(numerator) else None


def _bootstrap_ci(
    numerator: np.ndarray, denominator: np.ndarray, resamples: int, rng: np.random.Generator
) -> list[float]:
    """Percentile 95% interval of the score over cases resampled with replacement."""
    n = len(numerator)
    means = np.empty(resamples)
    block = max(1, 4_000_000 // n)
    for start in range(0, resamples, block):
        size = min(block, resamples - start)
        drawn = rng.integers(0, n, size=(size, n))
        means[start : start + size] = numerator[drawn].sum(axis=1) / denominator[drawn].sum(axis=1)
    low, high = np.percentile(means, [2.5, 97.5]) * 100
    return [float(low), float(high)]


def score_predictions(
    data: Any,
    protocol: str = "token",
    bootstrap: int = 1000,
    seed: int = 0,
    *,
    average: str = "case",
    preset: str = "kebench",
) -> dict:
    """The KEBench scores (percent) of a predictions table; see the metric card for the formulas.

    ``data``: anything :func:`to_table` accepts. ``average``: ``"case"`` (mean over cases of each
    case's accuracy) or ``"token"`` (micro mean over the answer tokens, or compared ids of locality
    rows, of all rows; token protocol only). ``preset``: how the predictions' queries were built, one of
    :data:`PRESETS`, recorded in the output. Raises ``ValueError`` naming row and column on bad input.
    Returns ``{"protocol", "preset", "average", "scores", "ci95", "counts", "skipped",
    "portability_by_hop", "locality_answer_only"}`` keyed by :data:`SCORES`; a score without scored
    rows is ``None``, never 0.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    if average not in AVERAGES:
        raise ValueError(f"unknown average {average!r}; expected one of {AVERAGES}")
    if average == "token" and protocol != "token":
        raise ValueError(f"average 'token' counts answer tokens, which only the token protocol scores; got {protocol!r}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {PRESETS}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
        raise ValueError(f"bootstrap must be a non-negative number of resamples, got {bootstrap!r}")
    rows = _Rows(to_table(data))
    rows.check_duplicates()
    if protocol == "token":
        hits, compared, answer_hits, answer_compared = _token_row_scores(rows)
    else:
        hits, compared = _generate_row_scores(rows)
        answer_hits = answer_compared = np.zeros(rows.n)

    result: dict[str, Any] = {
        "protocol": protocol, "preset": preset, "average": average, "scores": {}, "ci95": {}, "counts": {}, "skipped": {}
    }
    for index, name in enumerate(SCORES):
        of_metric = rows.metric == index
        numerator, denominator = _case_totals(rows, hits, compared, of_metric, average)
        result["counts"][name] = len(numerator)
        result["skipped"][name] = int((of_metric & (compared == 0)).sum())
        result["scores"][name] = _percent(numerator, denominator)
        rng = np.random.default_rng([seed, index])
        result["ci95"][name] = _bootstrap_ci(numerator, denominator, bootstrap, rng) if bootstrap and len(numerator) else None
        if result["skipped"][name]:
            logger.warning("%s: %d row(s) have no %s prediction and are left out", name, result["skipped"][name], protocol)

    portability = rows.metric == SCORES.index("portability")
    result["portability_by_hop"] = {
        str(hop): _percent(*_case_totals(rows, hits, compared, portability & (rows.hop == hop), average))
        for hop in np.unique(rows.hop[portability & (compared > 0)])
    }
    result["locality_answer_only"] = {
        name: _percent(*_case_totals(rows, answer_hits, answer_compared, rows.metric == SCORES.index(name), average))
        for name in LOCALITY_METRICS
    }
    return result


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Kebench(evaluate.Metric):
    """KEBench's knowledge-editing scores; the columns of a predictions file are the inputs."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=PREDICTION_FEATURES,
            homepage="https://github.com/VLKEB/VLKEB",
            reference_urls=["https://arxiv.org/abs/2403.07350"],
        )

    def add_batch(self, **columns: Any) -> None:
        """Add prediction rows (column -> values); types are checked here, the rest at ``compute``."""
        # evaluate's own encoding would silently truncate 1.5 to token id 1
        to_table(columns)
        super().add_batch(**columns)

    def add(self, **row: Any) -> None:
        """Add one prediction row (column -> value)."""
        self.add_batch(**{name: [value] for name, value in row.items()})

    def _compute(
        self,
        protocol: str = "token",
        bootstrap: int = 1000,
        seed: int = 0,
        average: str = "case",
        preset: str = "kebench",
        **columns: Any,
    ) -> dict:
        return score_predictions(columns, protocol=protocol, bootstrap=bootstrap, seed=seed, average=average, preset=preset)
