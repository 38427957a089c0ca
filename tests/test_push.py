"""``kebench push`` against the local hub server: export -> push -> load from the hub."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Image, load_dataset
from huggingface_hub import HfApi, hf_hub_download

from kebench_hf import cli
from kebench_hf.builder import dataset_fingerprint, load_kebench
from kebench_hf.export import STATE_FILE, export_release
from kebench_hf.hub import HubError, push_folder
from kebench_hf.schema import IMAGE_FIELDS

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, vlkeb_fixture_dir) -> Path:
    out = tmp_path_factory.mktemp("export") / "kebench"
    export_release(vlkeb_fixture_dir, out)
    return out


def undecoded(dataset):
    """Rows with image columns left as stored bytes, so two loads compare exactly."""
    for name in IMAGE_FIELDS:
        dataset = dataset.cast_column(name, Image(decode=False))
    return dataset.to_list()


def test_export_push_and_load_dataset_from_the_hub(hub_server, exported):
    repo_id = hub_server.new_repo_id("kebench")
    result = subprocess.run(
        [sys.executable, "-m", "kebench_hf.cli", "push", str(exported), "--repo", repo_id],
        env={**os.environ, **hub_server.env}, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert f"{hub_server.endpoint}/datasets/{repo_id}/commit/" in result.stdout

    for config in ("edit", "multihop"):
        local, remote = load_dataset(str(exported), config), load_dataset(repo_id, config)
        assert sorted(remote) == sorted(local) and len(local) > 0
        for split in local:
            assert remote[split].features == local[split].features
            assert remote[split].num_rows == local[split].num_rows > 0
            assert undecoded(remote[split]) == undecoded(local[split])
        image, expected = remote["test"][0]["image"], local["test"][0]["image"]
        assert image.size == expected.size and image.tobytes() == expected.tobytes()


def test_load_kebench_from_a_pushed_release_directory(hub_server, vlkeb_fixture_dir):
    repo_id = hub_server.new_repo_id("vlkeb-release")
    push_folder(vlkeb_fixture_dir, repo_id)
    remote, local = load_kebench(repo_id, "edit"), load_kebench(vlkeb_fixture_dir, "edit")
    assert sorted(remote) == sorted(local) == ["test", "train"]
    for split in local:
        assert dataset_fingerprint(remote[split]) == dataset_fingerprint(local[split])
        assert remote[split][0]["image_rephrase"].tobytes() == local[split][0]["image_rephrase"].tobytes()


def test_create_pr_leaves_main_unchanged(hub_server, exported, tmp_path, capsys):
    repo_id = hub_server.new_repo_id("kebench-pr")
    push_folder(exported, repo_id)
    api = HfApi()
    main_sha = api.dataset_info(repo_id).sha
    card = (exported / "README.md").read_text()
    proposal = tmp_path / "proposal"
    shutil.copytree(exported, proposal)
    (proposal / "README.md").write_text(card + "\nA proposed addition.\n")

    status = cli.main(["push", str(proposal), "--repo", repo_id, "--create-pr", "--message", "Propose card"])
    out = capsys.readouterr().out
    assert status == 0
    assert f"pull request: {hub_server.endpoint}/datasets/{repo_id}/discussions/1 (revision refs/pr/1)" in out
    assert api.dataset_info(repo_id).sha == main_sha
    refs = api.list_repo_refs(repo_id, repo_type="dataset", include_pull_requests=True)
    assert [ref.ref for ref in refs.pull_requests] == ["refs/pr/1"]
    with open(hf_hub_download(repo_id, "README.md", repo_type="dataset")) as handle:
        assert handle.read() == card
    with open(hf_hub_download(repo_id, "README.md", repo_type="dataset", revision="refs/pr/1")) as handle:
        assert handle.read().endswith("A proposed addition.\n")
    [pr] = api.get_repo_discussions(repo_id, repo_type="dataset")
    assert (pr.title, pr.is_pull_request) == ("Propose card", True)
    # only the changed file is in the pull request
    diff = api.get_discussion_details(repo_id, 1, repo_type="dataset").diff
    assert [line for line in diff.splitlines() if line.startswith("diff --git")] == [
        "diff --git a/README.md b/README.md"]


def test_push_to_a_new_branch_and_as_private(hub_server, exported, capsys):
    repo_id = hub_server.new_repo_id("kebench-branch")
    assert cli.main(["push", str(exported / "data"), "--repo", repo_id, "--revision", "dev", "--private"]) == 0
    api = HfApi()
    assert api.dataset_info(repo_id).private
    assert api.list_repo_files(repo_id, repo_type="dataset") == [".gitattributes"]
    dev_files = api.list_repo_files(repo_id, repo_type="dataset", revision="dev")
    assert "edit/test-00000-of-00001.parquet" in dev_files


def test_push_errors_are_one_line(hub_server, exported, tmp_path, capsys, monkeypatch):
    def push_error(*args: str) -> str:
        assert cli.main(["push", *args]) == 1
        message = capsys.readouterr().err.strip()
        assert message.startswith("kebench: error: ") and "\n" not in message
        return message

    assert "no such directory" in push_error(str(tmp_path / "missing"), "--repo", hub_server.new_repo_id("x"))
    assert "bad repository id" in push_error(str(exported), "--repo", "not a/valid id!")
    assert "bad repository id" in push_error(str(exported), "--repo", "no-namespace")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(exported, unfinished)
    (unfinished / STATE_FILE).write_text("{}")
    assert "did not finish" in push_error(str(unfinished), "--repo", hub_server.new_repo_id("x"))
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token")
    assert "token was rejected" in push_error(str(exported), "--repo", hub_server.new_repo_id("x"))
    monkeypatch.delenv("HF_TOKEN")
    assert "no Hugging Face token" in push_error(str(exported), "--repo", hub_server.new_repo_id("x"))

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(HubError, match="cannot reach the hub at http://127.0.0.1"):
        push_folder(exported, "org/name", token=hub_server.token, endpoint=f"http://127.0.0.1:{closed_port}")


def test_pushing_the_same_folder_again_adds_no_commit(hub_server, exported):
    repo_id = hub_server.new_repo_id("kebench-again")
    first = push_folder(exported, repo_id)
    again = push_folder(exported, repo_id)
    assert again.oid == first.oid
    assert len(HfApi().list_repo_commits(repo_id, repo_type="dataset")) == 2  # repo creation + the push
