"""The leaderboard end to end on the local hub server: submit -> update -> results -> Space -> browser.

One module-scoped flow opens good and hostile submissions, runs the scoring service once, and the
tests check what it left on the hub; the browser test renders the resulting results dataset in
headless Chromium.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    hf_hub_download,
    parse_eval_result_entries,
    snapshot_download,
)

from kebench_hf.cli import main
from kebench_hf.leaderboard.results import EVAL_RESULTS_FILE, RESULTS_FILE
from kebench_hf.leaderboard.service import update_leaderboard
from kebench_hf.leaderboard.submission import Limits
from kebench_hf.leaderboard.synthetic import synthetic_run
from metric.kebench import METRICS

HOPS = {"eval-00000": [1, 2]}
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
# hostile submission -> the reason its pull request must be closed with
HOSTILE = {
    "duplicate": "duplicate: the same predictions were already submitted",
    "path traversal": "folder of plain names",
    "pickle as parquet": "predictions.parquet is not readable Parquet",
    "other dataset version": "run on dataset version",
    "non-finite number": "non-finite number Infinity",
    "wrong case ids": "not in the test split",
    "oversized": "over the limit of 1048576",
}


def _open_pr(api: HfApi, repo: str, folder: str, files: dict[str, bytes], hostile_path: str | None = None) -> int:
    operations = [CommitOperationAdd(f"{folder}/{name}", content) for name, content in files.items()]
    if hostile_path is not None:
        # the client refuses '..' in paths; a hostile submitter talks to the hub without that check
        operations[0].path_in_repo = hostile_path
    commit = api.create_commit(repo, operations, commit_message="submission", repo_type="dataset", create_pr=True)
    return int(commit.pr_num)


def _with_case_id_replaced(path: Path, old: str, new: str) -> bytes:
    table = pq.read_table(path)
    case_ids = pc.replace_substring(table["case_id"], old, new)
    sink = io.BytesIO()
    pq.write_table(table.set_column(table.column_names.index("case_id"), "case_id", case_ids), sink)
    return sink.getvalue()


@pytest.fixture(scope="module")
def flow(hub_server, leaderboard_data, leaderboard_reference, tmp_path_factory):
    api = HfApi()
    requests, results = hub_server.new_repo_id("requests"), hub_server.new_repo_id("results")
    model_repo = hub_server.new_repo_id("tiny-llava")
    api.create_repo(requests, repo_type="dataset")
    api.create_repo(model_repo)
    root = tmp_path_factory.mktemp("leaderboard-hub")

    perfect = synthetic_run(root / "perfect", leaderboard_reference, HOPS, model=model_repo, method="ft_llm", skill=1.0)
    (perfect / "card.md").write_text("# tiny LLaVA + FT-LLM\nThe last MLP of the language model, 10 steps.\n")
    assert main(["submit", str(perfect), "--repo", requests, "--data", str(leaderboard_data)]) == 0

    good = {name: (perfect / name).read_bytes() for name in ("run.json", "predictions.parquet", "card.md")}
    run = json.loads(good["run.json"])
    hostile_runs = {
        "duplicate": good,
        "path traversal": good,
        "pickle as parquet": {**good, "predictions.parquet": b"\x80\x04\x95" + os.urandom(64)},
        "other dataset version": {**good, "run.json": json.dumps({**run, "dataset_fingerprint": "0" * 64}).encode()},
        "non-finite number": {**good, "run.json": good["run.json"].replace(b'"seconds_per_edit": 0.5', b'"seconds_per_edit": Infinity')},
        "wrong case ids": {**good, "predictions.parquet": _with_case_id_replaced(
            perfect / "predictions.parquet", "eval-00001", "eval-00077")},
        "oversized": {**good, "predictions.parquet": os.urandom(1_100_000)},
    }
    hostile_prs = {
        _open_pr(
            api, requests, f"submissions/x/{index}/20260101T000000Z", files,
            "submissions/../../../etc/passwd" if name == "path traversal" else None,
        ): name
        for index, (name, files) in enumerate(hostile_runs.items())
    }
    # a good submission after the hostile ones: they must not stop it from being scored
    # under the reference's preset: ranked apart from the kebench rows
    zero = synthetic_run(root / "zero", leaderboard_reference, HOPS, model="nobody/not-on-the-hub", method="ike",
                         model_family="blip2", skill=0.0, generate=False, preset="vlkeb")
    (zero / "scores.json").write_text(json.dumps({"scores": dict.fromkeys(METRICS, 99.0)}))  # never trusted
    assert main(["submit", str(zero), "--repo", requests, "--data", str(leaderboard_data),
                 "--description", "IKE on BLIP-2"]) == 0
    report = update_leaderboard(
        api, requests, results, leaderboard_reference, dataset_id="kebench/kebench",
        limits=Limits(predictions_bytes=2**20),
    )
    return {"api": api, "requests": requests, "results": results, "model_repo": model_repo,
            "hostile_prs": hostile_prs, "report": report, "data": leaderboard_data}


def test_update_merges_good_submissions_and_rejects_hostile_ones_with_their_reason(flow):
    report, api = flow["report"], flow["api"]
    assert report.failed == {}
    assert sorted(report.accepted) == [1, len(flow["hostile_prs"]) + 2]
    assert {flow["hostile_prs"][num]: reason for num, reason in report.rejected.items()}.keys() == HOSTILE.keys()
    for num, name in flow["hostile_prs"].items():
        assert HOSTILE[name] in report.rejected[num]
        assert "kebench-leaderboard-" not in report.rejected[num]  # the service's own paths stay private
        details = api.get_discussion_details(flow["requests"], num, repo_type="dataset")
        assert details.status == "closed"
        assert any(HOSTILE[name] in getattr(event, "content", "") for event in details.events)
    for num, folder in report.accepted.items():
        assert api.get_discussion_details(flow["requests"], num, repo_type="dataset").status == "merged"
        assert f"{folder}/run.json" in api.list_repo_files(flow["requests"], repo_type="dataset")
    assert not any(".." in path for path in api.list_repo_files(flow["requests"], repo_type="dataset"))


def test_results_dataset_holds_the_recomputed_scores_of_accepted_submissions_only(flow, leaderboard_reference):
    from datasets import load_dataset

    rows = load_dataset(flow["results"], split="train").to_list()
    assert [(row["model"], row["method"], row["preset"], row["protocol"]) for row in rows] == [
        (flow["model_repo"], "ft_llm", "kebench", "token"),
        (flow["model_repo"], "ft_llm", "kebench", "generate"),
        ("nobody/not-on-the-hub", "ike", "vlkeb", "token"),
    ]
    for row in rows[:2]:
        assert [row[name] for name in METRICS] == [100.0] * 6
        assert row["portability_by_hop"] == [{"hop": 1, "score": 100.0}, {"hop": 2, "score": 100.0}]
    assert [rows[2][name] for name in METRICS] == [0.0] * 6  # not the 99s of its scores.json
    assert rows[2]["model_family"] == "blip2"
    assert rows[0]["link"].endswith(f"/datasets/{flow['requests']}/discussions/1")
    assert {row["dataset_fingerprint"] for row in rows} == {leaderboard_reference.fingerprint}


def test_eval_results_are_written_where_the_model_repo_exists(flow):
    path = hf_hub_download(flow["model_repo"], EVAL_RESULTS_FILE)
    entries = parse_eval_result_entries(yaml.safe_load(Path(path).read_text()))
    assert len(entries) == 12
    assert {(entry.dataset_id, entry.task_id, entry.value) for entry in entries} == {
        ("kebench/kebench", name, 100.0) for name in METRICS
    }
    assert flow["report"].eval_results_written == [flow["model_repo"]]


def test_running_the_update_again_changes_nothing(flow, capsys):
    api = flow["api"]

    def state() -> list:
        return [
            api.repo_info(flow["requests"], repo_type="dataset").sha,
            api.repo_info(flow["results"], repo_type="dataset").sha,
            api.repo_info(flow["model_repo"]).sha,
            [(d.num, d.status) for d in api.get_repo_discussions(flow["requests"], repo_type="dataset")],
        ]

    before = state()
    assert main(["leaderboard", "update", "--requests", flow["requests"], "--results", flow["results"],
                 "--data", str(flow["data"]), "--dataset-id", "kebench/kebench"]) == 0
    assert "0 accepted, 0 rejected, 0 failed; 0 new result rows" in capsys.readouterr().out
    assert state() == before


def test_the_results_card_ranks_each_preset_and_protocol_in_its_own_table(flow):
    card = Path(hf_hub_download(flow["results"], "README.md", repo_type="dataset")).read_text()
    sections = {section.splitlines()[0]: section for section in card.split("### ")[1:]}
    assert list(sections) == [
        "preset `kebench`, protocol `generate`", "preset `kebench`, protocol `token`", "preset `vlkeb`, protocol `token`"
    ]
    assert "nobody/not-on-the-hub" in sections["preset `vlkeb`, protocol `token`"]
    assert all("nobody/not-on-the-hub" not in text for title, text in sections.items() if "kebench" in title)


def test_push_space_publishes_the_app_with_its_results_repo(flow, hub_server):
    space = hub_server.new_repo_id("leaderboard")
    assert main(["push-space", "--repo", space, "--results", flow["results"], "--requests", flow["requests"]]) == 0
    files = HfApi().list_repo_files(space, repo_type="space")
    assert {"app.py", "README.md", "requirements.txt", "leaderboard.json"} <= set(files)
    config = json.loads(Path(hf_hub_download(space, "leaderboard.json", repo_type="space")).read_text())
    assert config == {"results": flow["results"], "requests": flow["requests"]}
    card = Path(hf_hub_download(space, "README.md", repo_type="space")).read_text()
    assert "sdk: gradio" in card and "app_file: app.py" in card


class DevTools:
    """Headless Chromium driven through the DevTools protocol."""

    FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--window-size=1280,1500")

    def __init__(self, profile: Path):
        import websocket

        self.process = subprocess.Popen(
            ["chromium", *self.FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(_get(f"http://127.0.0.1:{port}/json/list"))
        page = next(target for target in targets if target["type"] == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30)
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expression}")

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=10)


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


ROW_TEXTS = "Array.from(document.querySelectorAll('[role=row]')).slice(1).map(r => r.innerText.replace(/\\s+/g, ' '))"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (make test installs it as root)")
def test_the_app_shows_the_new_rows_and_filters_them_in_chromium(flow, tmp_path):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from kebench_hf.leaderboard.app import build_app, load_results

    local = Path(snapshot_download(flow["results"], repo_type="dataset", local_dir=tmp_path / "results"))
    assert (local / RESULTS_FILE).exists()
    frame = load_results(str(local))
    assert frame.equals(load_results(flow["results"]))
    app = build_app(frame, flow["requests"])
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    browser = DevTools(tmp_path / "chromium-profile")
    try:
        browser.call("Page.navigate", url=f"http://127.0.0.1:{port}/")
        # one preset and protocol at a time: kebench/token first, the vlkeb row is not among them
        browser.wait_for(f"{ROW_TEXTS}.length == 1")
        rows = browser.js(ROW_TEXTS)
        assert rows[0].startswith(f"{flow['model_repo']} llava ft_llm kebench token case 100 100 100 100 100 100")

        def choose(label: str) -> None:
            browser.click(*browser.js(
                "(() => { const label = Array.from(document.querySelectorAll('label'))"
                f".find(l => l.innerText.trim() == '{label}'); const box = label.getBoundingClientRect();"
                " return [box.x + box.width / 2, box.y + box.height / 2]; })()"
            ))

        choose("generate")
        browser.wait_for(f"{ROW_TEXTS}.length == 1 && {ROW_TEXTS}[0].includes('generate')")
        assert browser.js(ROW_TEXTS)[0].startswith(f"{flow['model_repo']} llava ft_llm kebench generate case 100")
        choose("token")
        choose("vlkeb")
        browser.wait_for(f"{ROW_TEXTS}.length == 1 && {ROW_TEXTS}[0].includes('vlkeb')")
        assert browser.js(ROW_TEXTS)[0].startswith("nobody/not-on-the-hub blip2 ike vlkeb token case 0 0 0 0 0 0")
        shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "leaderboard.png").write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.close()
        app.close()


def test_an_interrupted_pass_is_finished_without_rescoring_after_main_moved_on(hub_server, leaderboard_reference, tmp_path):
    from kebench_hf.leaderboard.results import result_rows, results_card, results_parquet
    from kebench_hf.leaderboard.service import score_submission
    from kebench_hf.leaderboard.submission import submit, validate_run_dir

    api = HfApi()
    requests, results = hub_server.new_repo_id("requests"), hub_server.new_repo_id("results")
    api.create_repo(requests, repo_type="dataset")
    run = synthetic_run(tmp_path / "run", leaderboard_reference, HOPS, model="m/interrupted", method="ike", skill=0.6)
    submit(run, requests, leaderboard_reference, api)
    (pr,) = api.get_repo_discussions(requests, repo_type="dataset")
    folder = next(path for path in api.list_repo_files(requests, repo_type="dataset", revision=pr.git_reference)
                  if path.endswith("run.json")).rsplit("/", 1)[0]
    # the state a pass leaves when it stops after writing the results, before merging
    submission = validate_run_dir(run, leaderboard_reference)
    rows = result_rows(submission, folder, score_submission(submission), "2026-01-01T00:00:00Z", pr.url)
    api.create_repo(results, repo_type="dataset")
    api.create_commit(results, [CommitOperationAdd(RESULTS_FILE, results_parquet(rows)),
                                CommitOperationAdd("README.md", results_card(rows).encode())],
                      commit_message="results", repo_type="dataset")
    results_sha = api.repo_info(results, repo_type="dataset").sha
    # main moves on after the pull request was opened: the PR is judged against where it started
    api.upload_file(path_or_fileobj=b"# requests\n", path_in_repo="README.md", repo_id=requests, repo_type="dataset")

    report = update_leaderboard(api, requests, results, leaderboard_reference)
    assert report.accepted == {pr.num: folder} and report.new_rows == 0
    assert api.get_discussion_details(requests, pr.num, repo_type="dataset").status == "merged"
    assert api.repo_info(results, repo_type="dataset").sha == results_sha


def test_the_app_filters_by_protocol_family_method_and_model_name(flow, tmp_path):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from kebench_hf.leaderboard.app import display_table, load_results, select

    frame = load_results(flow["results"])
    every = {"families": ["llava", "blip2"], "methods": ["ft_llm", "ike"], "search": ""}
    # the two token rows are of different presets: never in one table
    assert list(select(frame, "kebench", "token", **every)["model"]) == [flow["model_repo"]]
    assert list(select(frame, "vlkeb", "token", **every)["model"]) == ["nobody/not-on-the-hub"]
    assert list(select(frame, "kebench", "generate", **every)["model"]) == [flow["model_repo"]]
    assert select(frame, "vlkeb", "generate", **every).empty
    assert select(frame, "kebench", "token", **{**every, "families": ["blip2"]}).empty
    assert list(select(frame, "vlkeb", "token", **{**every, "methods": ["ike"]})["model_family"]) == ["blip2"]
    assert select(frame, "kebench", "token", **{**every, "search": "NOT-ON"}).empty
    table = display_table(select(frame, "kebench", "token", **every), frame.attrs["scores"])
    assert list(table["Reliability"]) == [100.0]
    assert table["Edit-1-hop Port."].isna().all()  # the edit config has no edit-one-hop cases
    assert table["Submission"][0] == f"[PR]({frame['link'][0]})"
