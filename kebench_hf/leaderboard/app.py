"""The KEBench leaderboard Space: a Gradio app over the results dataset.

Self-contained on purpose (gradio, pandas, matplotlib, huggingface_hub only): ``kebench push-space``
uploads this file as the Space's ``app.py``. The results come from ``$KEBENCH_RESULTS`` or the
``results`` entry of ``leaderboard.json`` next to this file: a local directory holding
``data/results.parquet`` or a hub dataset repo id.

Run locally: ``python -m kebench_hf.leaderboard.app --results DIR_OR_REPO [--port 7860]``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import gradio as gr
import pandas as pd
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

RESULTS_FILE = "data/results.parquet"
CONFIG_FILE = Path(__file__).with_name("leaderboard.json")
#: the results file's schema metadata entry {score column: header}, written by the scoring service from the
#: metric's own names (this file cannot import the metric)
DISPLAY_NAMES_KEY = b"kebench_display_names"
#: shown first when the results have them
DEFAULT_PRESET, DEFAULT_PROTOCOL = "kebench", "token"
#: the rows ranked: runs on the edit config (an edit_onehop run's score is already in their
#: edit-one-hop column; a results file without the column holds edit runs only)
RANKED_CONFIG = "edit"
#: the most bars/lines a plot shows before it stops being readable
PLOT_LIMIT = 12

HOW_TO = """
## How to submit

1. Run a method on the KEBench `edit` test split:
   `kebench run --method ft_llm --model ORG/MODEL --data KEBENCH_DIR_OR_REPO --out runs/mine`
   (writes `predictions.parquet`, `run.json`, `scores.json`).
2. Optionally write `runs/mine/card.md`: a few lines on the model and the method.
3. Submit: `kebench submit runs/mine --repo {requests}`. This checks the run locally (schema, every
   test case for every metric, dataset version, sizes) and opens a pull request on the requests
   dataset under `submissions/<model>/<method>/<timestamp>/`.
4. The scoring service re-computes the scores from your predictions (reported numbers are not used),
   merges the pull request and adds a row here, or closes it with the reason as a comment.
   Duplicates of an earlier submission, other dataset versions and malformed files are rejected.

Both protocols are shown when the run has them: `token` (teacher-forced answer-token accuracy) and
`generate` (exact match of greedy generations, stricter). Each row also carries the preset the run was
made under (`kebench`, or `vlkeb`: the reference code's evaluation, `kebench run --preset vlkeb`);
rows are only ever ranked against rows of the same preset and protocol. Scores are percentages with
bootstrap 95% confidence intervals in the results dataset.

Edit-one-hop: run the same model, method and preset on the `edit_onehop` config
(`kebench run ... --config edit_onehop`) and submit that run too; its score fills the Edit-one-hop
column of your `edit` run's row.
"""


def load_results(source: str) -> pd.DataFrame:
    """The results table from a local directory or a hub dataset repo id; ``attrs["scores"]`` maps
    each score column to its header."""
    directory = Path(source)
    if directory.is_dir():
        path = directory / RESULTS_FILE
    else:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(source, RESULTS_FILE, repo_type="dataset")
    table = pq.read_table(path)
    names = (table.schema.metadata or {}).get(DISPLAY_NAMES_KEY)
    if names is None:
        raise ValueError(f"{source}: the results file has no score names; it predates this app (re-run the update)")
    frame = table.to_pandas()
    frame.attrs["scores"] = json.loads(names)
    return frame


def configured_sources(results: str | None = None, requests: str | None = None) -> tuple[str, str]:
    """(results source, requests repo): arguments, else the environment, else ``leaderboard.json``."""
    config = json.loads(CONFIG_FILE.read_text()) if CONFIG_FILE.exists() else {}
    results = results or os.environ.get("KEBENCH_RESULTS") or config.get("results")
    if not results:
        raise SystemExit(f"give --results, set KEBENCH_RESULTS or write {CONFIG_FILE} with a 'results' entry")
    return results, requests or os.environ.get("KEBENCH_REQUESTS") or config.get("requests", "ORG/REQUESTS")


def select(
    frame: pd.DataFrame, preset: str, protocol: str, families: list[str], methods: list[str], search: str
) -> pd.DataFrame:
    """The edit runs of one preset and protocol (never more: their scores are not comparable), filtered
    and ranked."""
    config = frame["config"] if "config" in frame else pd.Series(RANKED_CONFIG, index=frame.index)
    chosen = frame[
        (config == RANKED_CONFIG)
        & (frame["preset"] == preset)
        & (frame["protocol"] == protocol)
        & frame["model_family"].isin(families)
        & frame["method"].isin(methods)
    ]
    if search.strip():
        chosen = chosen[chosen["model"].str.contains(search.strip(), case=False, regex=False)]
    return chosen.sort_values("reliability", ascending=False, na_position="last")


def display_table(chosen: pd.DataFrame, scores: dict[str, str]) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "Model": chosen["model"],
            "Family": chosen["model_family"],
            "Method": chosen["method"],
            "Preset": chosen["preset"],
            "Protocol": chosen["protocol"],
            "Average": chosen["average"],
            **{header: chosen[column].round(1) for column, header in scores.items()},
            "s/edit": chosen["seconds_per_edit"].round(3),
            "Date": chosen["date"].str.slice(0, 10),
            "Submission": [f"[PR]({link})" for link in chosen["link"]],
        }
    )
    return table.reset_index(drop=True)


def _label(row: pd.Series) -> str:
    return f"{row['method']} · {row['model'].rsplit('/', 1)[-1]}"


def scores_plot(chosen: pd.DataFrame, scores: dict[str, str]):
    """Grouped bars: the scores of each shown submission."""
    figure = Figure(figsize=(9, 3.6))
    axes = figure.subplots()
    shown = chosen.head(PLOT_LIMIT)
    width = 0.8 / max(len(shown), 1)
    for index, (_, row) in enumerate(shown.iterrows()):
        values = [row[column] if pd.notna(row[column]) else 0.0 for column in scores]
        axes.bar([x + index * width for x in range(len(scores))], values, width, label=_label(row))
    axes.set_xticks([x + 0.4 - width / 2 for x in range(len(scores))], list(scores.values()))
    axes.set_ylim(0, 100)
    axes.set_ylabel("score (%)")
    if len(shown):
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    return figure


def hops_plot(chosen: pd.DataFrame):
    """Portability by number of hops for each shown submission."""
    figure = Figure(figsize=(9, 3.2))
    axes = figure.subplots()
    for _, row in chosen.head(PLOT_LIMIT).iterrows():
        hops = [item for item in row["portability_by_hop"] if item["score"] is not None]
        if hops:
            axes.plot([item["hop"] for item in hops], [item["score"] for item in hops], marker="o", label=_label(row))
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("hops from the new entity")
    axes.set_ylabel("portability (%)")
    axes.set_ylim(0, 100)
    if axes.get_lines():
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    return figure


def build_app(frame: pd.DataFrame, requests_repo: str = "ORG/REQUESTS") -> gr.Blocks:
    """The leaderboard over ``frame`` (rows of the results dataset, from :func:`load_results`)."""
    scores = frame.attrs["scores"]
    families = sorted(frame["model_family"].unique())
    methods = sorted(frame["method"].unique())
    presets = sorted(frame["preset"].unique())
    protocols = sorted(frame["protocol"].unique())
    first_preset = DEFAULT_PRESET if DEFAULT_PRESET in presets else next(iter(presets), None)
    first_protocol = DEFAULT_PROTOCOL if DEFAULT_PROTOCOL in protocols else next(iter(protocols), None)

    def refresh(preset: str, protocol: str, chosen_families: list[str], chosen_methods: list[str], search: str):
        chosen = select(frame, preset, protocol, chosen_families, chosen_methods, search)
        return display_table(chosen, scores), scores_plot(chosen, scores), hops_plot(chosen)

    initial = select(frame, first_preset, first_protocol, families, methods, "")
    with gr.Blocks(title="KEBench leaderboard") as app:
        gr.Markdown(
            "# KEBench leaderboard\nKnowledge editing of vision-language models: six scores per"
            " submission, re-computed from its predictions on the KEBench test split. One preset and"
            " protocol at a time: scores of different ones are not comparable."
        )
        with gr.Tab("Leaderboard"):
            with gr.Row():
                preset = gr.Radio(presets, value=first_preset, label="Preset")
                protocol = gr.Radio(protocols, value=first_protocol, label="Protocol")
                search = gr.Textbox(label="Model contains", placeholder="e.g. llava")
            with gr.Row():
                family = gr.CheckboxGroup(families, value=families, label="Model family")
                method = gr.CheckboxGroup(methods, value=methods, label="Method")
            table = gr.Dataframe(
                display_table(initial, scores),
                datatype=["str"] * 6 + ["number"] * (len(scores) + 1) + ["str", "markdown"],
                interactive=False,
                label="Submissions (click a header to sort)",
                elem_id="leaderboard-table",
            )
            bars = gr.Plot(scores_plot(initial, scores), label="Scores")
            hops = gr.Plot(hops_plot(initial), label="Portability by hop")
        with gr.Tab("Submit"):
            gr.Markdown(HOW_TO.format(requests=requests_repo))
        filters = [preset, protocol, family, method, search]
        for control in filters:
            control.change(refresh, inputs=filters, outputs=[table, bars, hops])
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the KEBench leaderboard.")
    parser.add_argument("--results", help="results directory or hub dataset repo id")
    parser.add_argument("--requests", help="requests dataset repo id shown in the how-to")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    results, requests = configured_sources(args.results, args.requests)
    build_app(load_results(results), requests).launch(server_port=args.port)


if __name__ == "__main__":
    main()
