"""The local hub server, driven through the real huggingface_hub / evaluate clients."""

from __future__ import annotations

import os

import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import get_session

from kebench_hf.testing.hub_server import HubServer

# Bytes with NULs and a binary suffix: the hub stores them through LFS; the text file stays regular.
BINARY = bytes(range(256)) * 40
TEXT = "first line\nsecond line\n"


def upload(api: HfApi, repo_id: str, files: dict[str, bytes], **kwargs):
    operations = [CommitOperationAdd(path, content) for path, content in files.items()]
    return api.create_commit(repo_id, operations, commit_message=kwargs.pop("message", "add files"),
                             repo_type="dataset", **kwargs)


@pytest.fixture
def dataset_repo(hub_server) -> str:
    repo_id = hub_server.new_repo_id("files")
    HfApi().create_repo(repo_id, repo_type="dataset")
    upload(HfApi(), repo_id, {"notes.txt": TEXT.encode(), "data/blob.bin": BINARY, "README.md": b"---\nlicense: mit\n---\n"})
    return repo_id


def test_whoami_and_tokens(hub_server):
    api = HfApi()
    assert api.whoami()["name"] == hub_server.user
    with pytest.raises(HfHubHTTPError) as bad_token:
        api.create_repo(hub_server.new_repo_id("denied"), repo_type="dataset", token="hf_not_a_token")
    assert bad_token.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as no_token:
        api.create_repo(hub_server.new_repo_id("denied"), repo_type="dataset", token=False)
    assert no_token.value.response.status_code == 401


def test_create_repos_of_every_type_and_repo_info(hub_server):
    api = HfApi()
    model, space = hub_server.new_repo_id("model"), hub_server.new_repo_id("space")
    assert api.create_repo(model) == f"{hub_server.endpoint}/{model}"
    assert api.create_repo(space, repo_type="space", space_sdk="gradio") == f"{hub_server.endpoint}/spaces/{space}"
    with pytest.raises(HfHubHTTPError) as exists:
        api.create_repo(model)
    assert exists.value.response.status_code == 409
    api.create_repo(model, exist_ok=True)
    assert api.space_info(space).sdk == "gradio"
    info = api.model_info(model)
    assert info.id == model and len(info.sha) == 40
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]
    api.delete_repo(model)
    assert not api.repo_exists(model)


def test_regular_and_lfs_upload_listing_and_download(hub_server, dataset_repo):
    api = HfApi()
    info = api.dataset_info(dataset_repo)
    assert info.card_data["license"] == "mit"
    tree = {entry.path: entry for entry in api.list_repo_tree(dataset_repo, repo_type="dataset", recursive=True)}
    assert sorted(tree) == [".gitattributes", "README.md", "data", "data/blob.bin", "notes.txt"]
    assert tree["data/blob.bin"].lfs.size == len(BINARY) and tree["data/blob.bin"].size == len(BINARY)
    assert tree["notes.txt"].lfs is None and tree["notes.txt"].size == len(TEXT)
    top = [entry.path for entry in api.list_repo_tree(dataset_repo, repo_type="dataset")]
    assert top == [".gitattributes", "README.md", "data", "notes.txt"]
    assert [e.path for e in api.list_repo_tree(dataset_repo, "data", repo_type="dataset")] == ["data/blob.bin"]
    assert api.list_repo_files(dataset_repo, repo_type="dataset") == [
        ".gitattributes", "README.md", "data/blob.bin", "notes.txt"]

    for path, content in (("notes.txt", TEXT.encode()), ("data/blob.bin", BINARY)):
        with open(hf_hub_download(dataset_repo, path, repo_type="dataset"), "rb") as handle:
            assert handle.read() == content
    # by commit hash too, and every file of a snapshot
    with open(hf_hub_download(dataset_repo, "notes.txt", repo_type="dataset", revision=info.sha)) as handle:
        assert handle.read() == TEXT
    folder = snapshot_download(dataset_repo, repo_type="dataset")
    with open(os.path.join(folder, "data", "blob.bin"), "rb") as handle:
        assert handle.read() == BINARY

    infos = api.get_paths_info(dataset_repo, ["data", "notes.txt", "missing.txt"], repo_type="dataset", expand=True)
    assert [(i.path, type(i).__name__) for i in infos] == [("data", "RepoFolder"), ("notes.txt", "RepoFile")]
    assert infos[1].last_commit.oid == info.sha


def test_range_requests(hub_server, dataset_repo):
    url = hf_hub_url(dataset_repo, "data/blob.bin", repo_type="dataset")
    session = get_session()
    part = session.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == BINARY[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(BINARY)}"
    assert session.get(url, headers={"Range": "bytes=-5"}).content == BINARY[-5:]
    assert session.get(url, headers={"Range": f"bytes={len(BINARY)}-"}).status_code == 416
    head = session.head(url)
    assert int(head.headers["Content-Length"]) == len(BINARY) and len(head.headers["X-Repo-Commit"]) == 40
    # fsspec reads seek through Range requests
    with HfFileSystem().open(f"datasets/{dataset_repo}/data/blob.bin", "rb", block_size=64) as handle:
        handle.seek(1000)
        assert handle.read(100) == BINARY[1000:1100]


def test_not_found_errors_carry_hub_error_codes(hub_server, dataset_repo):
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(dataset_repo, "absent.txt", repo_type="dataset")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(dataset_repo, "notes.txt", repo_type="dataset", revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().dataset_info(hub_server.new_repo_id("never-created"))
    private = hub_server.new_repo_id("private")
    HfApi().create_repo(private, repo_type="dataset", private=True)
    assert HfApi().dataset_info(private).private
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).dataset_info(private, token=False)
    response = get_session().head(hf_hub_url(dataset_repo, "absent.txt", repo_type="dataset"))
    assert response.status_code == 404 and response.headers["X-Error-Code"] == "EntryNotFound"


def test_pull_request_lifecycle(hub_server, dataset_repo):
    api = HfApi()
    main_before = api.dataset_info(dataset_repo).sha
    commit = upload(api, dataset_repo, {"notes.txt": b"first line\nchanged line\n", "new.txt": b"added\n"},
                    message="Propose changes", create_pr=True)
    assert commit.pr_revision == "refs/pr/1" and commit.pr_num == 1
    assert api.dataset_info(dataset_repo).sha == main_before
    with open(hf_hub_download(dataset_repo, "notes.txt", repo_type="dataset", revision="refs/pr/1")) as handle:
        assert handle.read() == "first line\nchanged line\n"
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(dataset_repo, "new.txt", repo_type="dataset")
    # a second commit on the PR branch, as `upload_file(revision="refs/pr/1")` does
    api.create_commit(dataset_repo, [CommitOperationDelete("data/blob.bin")], commit_message="drop blob",
                      repo_type="dataset", revision="refs/pr/1")

    [listed] = api.get_repo_discussions(dataset_repo, repo_type="dataset")
    assert (listed.num, listed.title, listed.is_pull_request, listed.status) == (1, "Propose changes", True, "open")
    details = api.get_discussion_details(dataset_repo, 1, repo_type="dataset")
    assert details.target_branch == "refs/heads/main" and details.conflicting_files == []
    changed = [line.split(" b/")[1] for line in details.diff.splitlines() if line.startswith("diff --git")]
    assert changed == ["data/blob.bin", "new.txt", "notes.txt"]
    assert "-second line\n+changed line" in details.diff
    assert [event.type for event in details.events] == ["comment", "commit"]

    comment = api.comment_discussion(dataset_repo, 1, "looks right", repo_type="dataset")
    assert comment.content == "looks right"
    refs = api.list_repo_refs(dataset_repo, repo_type="dataset", include_pull_requests=True)
    assert [ref.ref for ref in refs.pull_requests] == ["refs/pr/1"]

    api.merge_pull_request(dataset_repo, 1, repo_type="dataset")
    merged = api.get_discussion_details(dataset_repo, 1, repo_type="dataset")
    assert merged.status == "merged" and merged.merge_commit_oid == api.dataset_info(dataset_repo).sha
    assert api.list_repo_files(dataset_repo, repo_type="dataset") == [
        ".gitattributes", "README.md", "new.txt", "notes.txt"]
    assert api.list_repo_commits(dataset_repo, repo_type="dataset")[0].title == "Propose changes (#1)"

    discussion = api.create_discussion(dataset_repo, "A question", repo_type="dataset")
    closed = api.change_discussion_status(dataset_repo, discussion.num, "closed", repo_type="dataset")
    assert closed.new_status == "closed"
    open_prs = api.get_repo_discussions(dataset_repo, repo_type="dataset", discussion_status="open")
    assert list(open_prs) == []


def test_conflicting_pull_request_is_not_merged(hub_server, dataset_repo):
    api = HfApi()
    upload(api, dataset_repo, {"notes.txt": b"from the PR\n"}, create_pr=True)
    upload(api, dataset_repo, {"notes.txt": b"from main\n"})
    details = api.get_discussion_details(dataset_repo, 1, repo_type="dataset")
    assert details.conflicting_files == ["notes.txt"]
    with pytest.raises(HfHubHTTPError) as conflict:
        api.merge_pull_request(dataset_repo, 1, repo_type="dataset")
    assert conflict.value.response.status_code == 409


def test_branches_tags_and_stale_parent(hub_server, dataset_repo):
    api = HfApi()
    first = api.dataset_info(dataset_repo).sha
    api.create_tag(dataset_repo, tag="v1", repo_type="dataset")
    api.create_branch(dataset_repo, branch="dev", repo_type="dataset")
    upload(api, dataset_repo, {"notes.txt": b"dev\n"}, revision="dev")
    upload(api, dataset_repo, {"notes.txt": b"main\n"})
    for revision, expected in (("v1", TEXT), ("dev", "dev\n"), ("main", "main\n"), (first, TEXT)):
        with open(hf_hub_download(dataset_repo, "notes.txt", repo_type="dataset", revision=revision)) as handle:
            assert handle.read() == expected
    with pytest.raises(HfHubHTTPError) as stale:
        upload(api, dataset_repo, {"notes.txt": b"late\n"}, parent_commit=first)
    assert stale.value.response.status_code == 412


def test_evaluate_loads_a_metric_from_a_space(hub_server):
    import evaluate

    space = hub_server.new_repo_id("hits")
    api = HfApi()
    api.create_repo(space, repo_type="space", space_sdk="gradio")
    script = (
        "import datasets\nimport evaluate\n\n\n"
        "class Hits(evaluate.Metric):\n"
        "    def _info(self):\n"
        "        value = datasets.Value('int32')\n"
        "        return evaluate.MetricInfo(description='', citation='', inputs_description='',\n"
        "            features=datasets.Features({'predictions': value, 'references': value}))\n\n"
        "    def _compute(self, predictions, references):\n"
        "        return {'hits': sum(int(p == r) for p, r in zip(predictions, references))}\n"
    )
    name = space.split("/")[1]
    api.upload_file(path_or_fileobj=script.encode(), path_in_repo=f"{name}.py", repo_id=space, repo_type="space")
    metric = evaluate.load(space)
    assert metric.compute(predictions=[1, 2, 3, 4], references=[1, 0, 3, 0]) == {"hits": 2}


def test_storage_survives_a_restart(tmp_path):
    server = HubServer(tmp_path / "hub").start()
    api = HfApi(endpoint=server.endpoint, token="hf_kebench_test_token")
    api.create_repo("org/kept", repo_type="dataset")
    api.upload_file(path_or_fileobj=BINARY, path_in_repo="blob.bin", repo_id="org/kept", repo_type="dataset")
    sha = api.dataset_info("org/kept").sha
    server.stop()
    with HubServer(tmp_path / "hub") as restarted:
        api = HfApi(endpoint=restarted.endpoint, token="hf_kebench_test_token")
        assert api.dataset_info("org/kept").sha == sha
        content = get_session().get(hf_hub_url("org/kept", "blob.bin", repo_type="dataset",
                                               endpoint=restarted.endpoint)).content
        assert content == BINARY
