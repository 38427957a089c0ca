"""What people read from finished runs: Markdown score tables and plots (the main job's, the lifelong curves)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from editors.queries import DEFAULT_CONFIG, config_metrics, metric_titles


def table_columns(config: str = DEFAULT_CONFIG) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(scores, titles)`` of a table's columns: the scores of ``config``'s cases (:mod:`editors.queries`)."""
    metrics = config_metrics(config)
    return metrics, metric_titles(metrics)


def score_cells(scores: dict[str, float | None], config: str = DEFAULT_CONFIG) -> str:
    """The scores of ``config``'s cases (the metric's ``scores``) as Markdown table cells, in table order."""
    return " | ".join("-" if scores[name] is None else f"{scores[name]:.1f}" for name in table_columns(config)[0])


def score_table(results: dict[str, dict[str, Any]], protocol: str, config: str = DEFAULT_CONFIG) -> str:
    """A Markdown table like the paper's Table 3: one row per method, the scores of ``config``'s cases."""
    headers = table_columns(config)[1]
    lines = [f"| method ({protocol}) | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
    for name, scores in results.items():
        lines.append(f"| {name} | {score_cells(scores[protocol]['scores'], config)} |")
    return "\n".join(lines)


def plot_scores(results: dict[str, dict[str, Any]], path: Path) -> Path:
    """Grouped bars of the six scores per method, one panel per protocol (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, headers = table_columns()
    figure, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    width = 0.8 / max(1, len(results))
    for axis, protocol in zip(axes, ("token", "generate"), strict=True):
        for index, (name, scores) in enumerate(results.items()):
            values = [scores[protocol]["scores"][c] or 0.0 for c in metrics]
            axis.bar(np.arange(len(metrics)) + index * width, values, width, label=name)
        axis.set_xticks(np.arange(len(metrics)) + width * (len(results) - 1) / 2, headers)
        axis.set_title(f"{protocol} protocol")
        axis.set_ylim(0, 100)
    axes[0].set_ylabel("score (%)")
    axes[1].legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def running_scores(
    predictions: Path, gap: int, config: str = DEFAULT_CONFIG, points: int = 200,
) -> dict[str, list[float | None]]:
    """The token-protocol scores of a gap run as it went: after its j-th scored case, the mean over
    cases 1..j (what the reference's running average logs), against the edits then in the model
    (``j + gap``: the case's own, those before it and the ``gap`` after it). ``{"edits": [...], score: [...]}``.
    At most about ``points`` points, evenly spaced, and always the last (each point scores its whole
    prefix, so a 1,000-case run would otherwise score half a million cases)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from metric.kebench import score_predictions

    table = pq.read_table(predictions)
    case_ids = list(dict.fromkeys(table.column("case_id").to_pylist()))
    metrics = config_metrics(config)
    curve: dict[str, list[float | None]] = {"edits": [], **{name: [] for name in metrics}}
    stride = max(1, len(case_ids) // points)
    for count in sorted({*range(stride, len(case_ids) + 1, stride), len(case_ids)}):
        prefix = table.filter(pc.is_in(table.column("case_id"), value_set=pa.array(case_ids[:count])))
        scores = score_predictions(prefix, protocol="token", bootstrap=0)["scores"]
        curve["edits"].append(count + gap)
        for name in metrics:
            curve[name].append(scores[name])
    return curve


def plot_score_curves(lines: dict[str, dict[str, list[tuple[int, float]]]], path: Path, ylabel: str,
                      config: str = DEFAULT_CONFIG, legend: str = "lower right", **style: Any) -> Path:
    """One panel per score of ``config``, each against the number of edits in the model: ``lines``
    maps a line's label to its ``(edits, score)`` points per score name (PNG; ``style`` goes to plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, headers = table_columns(config)
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), sharey=True, squeeze=False)
    for axis, name, header in zip(axes[0], metrics, headers, strict=True):
        for label, points in lines.items():
            if points[name]:
                axis.plot(*zip(*points[name], strict=True), label=label, **style)
        axis.set_title(header)
        axis.set_xlabel("edits in the model")
        axis.set_ylim(0, 100)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(loc=legend, fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_lifelong(curves: dict[int, dict[str, list[float | None]]], path: Path, config: str = DEFAULT_CONFIG) -> Path:
    """One panel per score, each against the number of edits in the model, one line per gap (PNG)."""
    metrics = table_columns(config)[0]
    lines = {f"gap {gap}": {name: [(edits, value) for edits, value in zip(curve["edits"], curve[name], strict=True)
                                   if value is not None] for name in metrics}
             for gap, curve in curves.items()}
    return plot_score_curves(lines, path, "running mean (%)", config)
