"""A small Hugging Face Hub-compatible HTTP server, for tests and offline demos.

It answers what ``huggingface_hub`` 2.4, ``datasets`` 5.2 and ``evaluate`` 0.4.6 really call:
repository create/delete/info, preupload + plain LFS upload + NDJSON commits (pull requests too),
tree listing, paths-info, resolve/download by revision (HEAD, GET, Range), refs, commit history,
branches and tags, discussions and pull requests (details with a diff, comment, status, merge)
and ``whoami``. Xet storage is not spoken: clients must run with ``HF_HUB_DISABLE_XET=1``.

Storage lives in one directory: ``blobs/<sha256>`` holds every file content once, and
``repos/<type>s/<org>/<name>.json`` holds a repository's commits (each a full file table), refs
(``refs/heads/*``, ``refs/tags/*``, ``refs/pr/*``) and discussions. Restarting on the same
directory keeps everything.

Run it with ``python -m kebench_hf.testing.hub_server --port 8999 --root /tmp/hub``, or in-process
with ``HubServer(root).start()`` (see the ``hub_server`` fixture in ``tests/conftest.py``).
"""

from __future__ import annotations

import argparse
import base64
import difflib
import fnmatch
import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

logger = logging.getLogger(__name__)

DEFAULT_TOKENS = {"hf_kebench_test_token": "kebench-user"}
REPO_TYPES = ("model", "dataset", "space")
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
# Files bigger than this go through LFS whatever their name, like on the real hub.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.gz *.h5 *.joblib *.model *.msgpack *.npy *.npz *.onnx *.ot "
    "*.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors *.tar *.tflite *.tgz *.wasm *.xz "
    "*.zip *.zst *tfevents* *.jpg *.jpeg *.png *.webp *.gif *.mp3 *.wav *.flac *.mp4"
)
DEFAULT_GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS.split())


class HubError(Exception):
    """An HTTP error answered the way the hub does: status, ``X-Error-Code`` and a JSON ``error``."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = {"error": message, **(body or {})}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _yaml_header(text: str) -> dict | None:
    """The YAML metadata block at the top of a README, or ``None`` when there is none."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if match is None:
        return None
    data = yaml.safe_load(match.group(1))
    return data if isinstance(data, dict) else None


class HubStore:
    """Repositories, commits, refs and discussions, persisted under ``root``."""

    def __init__(self, root: str | os.PathLike, tokens: dict[str, str] | None = None):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.tokens = dict(tokens or DEFAULT_TOKENS)
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], dict] = {}
        for path in (self.root / "repos").glob("*s/*/*.json"):
            repo = json.loads(path.read_text())
            self.repos[(repo["type"], repo["id"])] = repo

    # -- blobs -------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def put_blob_stream(self, sha256: str, chunks: Iterable[bytes]) -> bool:
        """Store streamed content under its announced ``sha256``; ``False`` (nothing kept) if it does not match."""
        partial = self.blob_path(sha256).with_suffix(f".{secrets.token_hex(4)}.partial")
        digest = hashlib.sha256()
        with partial.open("wb") as handle:
            for chunk in chunks:
                digest.update(chunk)
                handle.write(chunk)
        if digest.hexdigest() != sha256:
            partial.unlink()
            return False
        partial.replace(self.blob_path(sha256))
        return True

    def put_blob(self, content: bytes) -> str:
        sha256 = hashlib.sha256(content).hexdigest()
        if not self.blob_path(sha256).exists():
            self.put_blob_stream(sha256, [content])
        return sha256

    # -- repositories ------------------------------------------------------------------------
    def save(self, repo: dict) -> None:
        path = self.root / "repos" / f"{repo['type']}s" / f"{repo['id']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(repo))
        partial.replace(path)

    def get(self, repo_type: str, repo_id: str, user: str | None) -> dict:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo["private"] and user is None):
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def create(self, repo_type: str, repo_id: str, author: str, private: bool, sdk: str | None, url: str) -> dict:
        if (repo_type, repo_id) in self.repos:
            # the client's create_repo(exist_ok=True) reads the url from this conflict answer
            raise HubError(409, "You already created this repo", body={"url": url})
        repo = {
            "type": repo_type,
            "id": repo_id,
            "private": private,
            "sdk": sdk,
            "createdAt": _now(),
            "commits": {},
            "refs": {},
            "discussions": [],
        }
        files = {".gitattributes": self._regular_entry(DEFAULT_GITATTRIBUTES.encode())}
        repo["refs"]["refs/heads/main"] = self._add_commit(repo, [], files, "initial commit", "", author)
        self.repos[(repo_type, repo_id)] = repo
        self.save(repo)
        return repo

    def delete(self, repo_type: str, repo_id: str) -> None:
        if self.repos.pop((repo_type, repo_id), None) is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        (self.root / "repos" / f"{repo_type}s" / f"{repo_id}.json").unlink()

    # -- commits and refs --------------------------------------------------------------------
    def _regular_entry(self, content: bytes) -> dict:
        return {"sha256": self.put_blob(content), "size": len(content), "oid": _git_blob_oid(content), "lfs": False}

    def _lfs_entry(self, sha256: str, size: int) -> dict:
        pointer = LFS_POINTER.format(oid=sha256, size=size).encode()
        return {"sha256": sha256, "size": size, "oid": _git_blob_oid(pointer), "lfs": True, "pointerSize": len(pointer)}

    def _add_commit(self, repo: dict, parents: list[str], files: dict, title: str, message: str, author: str) -> str:
        commit = {"parents": parents, "files": files, "title": title, "message": message, "author": author, "date": _now()}
        oid = hashlib.sha1(json.dumps([commit, secrets.token_hex(8)], sort_keys=True).encode()).hexdigest()
        repo["commits"][oid] = commit
        return oid

    def resolve(self, repo: dict, revision: str) -> tuple[str, str | None]:
        """``(commit oid, full ref name or None)`` of a branch, tag, ``refs/...`` name or commit oid."""
        refs = repo["refs"]
        for ref in (revision, f"refs/heads/{revision}", f"refs/tags/{revision}"):
            if ref.startswith("refs/") and ref in refs:
                return refs[ref], ref
        if revision in repo["commits"]:
            return revision, None
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def files_at(self, repo: dict, revision: str) -> tuple[str, dict]:
        oid, _ = self.resolve(repo, revision)
        return oid, repo["commits"][oid]["files"]

    def read(self, entry: dict) -> bytes:
        return self.blob_path(entry["sha256"]).read_bytes()

    def last_commit(self, repo: dict, head: str, path: str) -> dict:
        """The newest first-parent commit that set ``path`` (a file or a folder) to what ``head`` has."""

        def view(files: dict) -> list:
            return sorted((p, e["oid"]) for p, e in files.items() if p == path or p.startswith(path + "/"))

        wanted, oid = view(repo["commits"][head]["files"]), head
        while repo["commits"][oid]["parents"]:
            parent = repo["commits"][oid]["parents"][0]
            if view(repo["commits"][parent]["files"]) != wanted:
                break
            oid = parent
        commit = repo["commits"][oid]
        return {"id": oid, "title": commit["title"], "date": commit["date"]}

    def is_lfs(self, files: dict, path: str, size: int, sample: bytes) -> bool:
        attributes = files.get(".gitattributes")
        text = self.read(attributes).decode(errors="replace") if attributes else DEFAULT_GITATTRIBUTES
        patterns = [line.split()[0] for line in text.splitlines() if "filter=lfs" in line]
        name = path.rsplit("/", 1)[-1]
        by_pattern = any(fnmatch.fnmatch(path if "/" in p else name, p) for p in patterns)
        return by_pattern or size > LFS_SIZE_THRESHOLD or b"\0" in sample

    def commit(
        self, repo: dict, revision: str, lines: list[dict], author: str, create_pr: bool
    ) -> tuple[str, int | None]:
        """Apply NDJSON commit operations on ``revision``; returns the new commit and the new PR number."""
        header = next((line["value"] for line in lines if line.get("key") == "header"), None)
        if header is None or not header.get("summary"):
            raise HubError(400, "commit header with a summary is required")
        head, ref = self.resolve(repo, revision)
        if ref is None or ref.startswith("refs/tags/"):
            raise HubError(400, f"Cannot commit to {revision}: not a branch or a pull request")
        if header.get("parentCommit") and not create_pr and header["parentCommit"] != head:
            raise HubError(412, f"A commit has happened since {header['parentCommit']}: the parent commit is stale")
        files = dict(repo["commits"][head]["files"])
        for line in lines:
            key, value = line.get("key"), line.get("value", {})
            if key == "file":
                raw = value["content"]
                content = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
                files[value["path"]] = self._regular_entry(content)
            elif key == "lfsFile":
                blob = self.blob_path(value["oid"])
                if not blob.exists():
                    raise HubError(400, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                files[value["path"]] = self._lfs_entry(value["oid"], blob.stat().st_size)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: e for p, e in files.items() if not p.startswith(prefix)}
            elif key != "header":
                raise HubError(400, f"unknown commit operation {key!r}")
        oid = self._add_commit(repo, [head], files, header["summary"], header.get("description", ""), author)
        pr_num = None
        if create_pr:
            pr_num = self.open_discussion(repo, header["summary"], header.get("description", ""), author, ref, oid)
        else:
            repo["refs"][ref] = oid
            if ref.startswith("refs/pr/"):
                self.add_event(self.discussion(repo, int(ref.rsplit("/", 1)[1])), "commit", author,
                               {"subject": header["summary"], "oid": oid})
        self.save(repo)
        return oid, pr_num

    # -- discussions and pull requests -------------------------------------------------------
    def open_discussion(
        self, repo: dict, title: str, description: str, author: str, base_ref: str | None, head: str | None
    ) -> int:
        """Open a discussion, or a pull request from ``base_ref`` whose ``refs/pr/N`` points at ``head``."""
        num = len(repo["discussions"]) + 1
        discussion = {
            "num": num,
            "title": title,
            "author": author,
            "createdAt": _now(),
            "status": "open",
            "isPullRequest": base_ref is not None,
            "events": [],
        }
        if base_ref is not None:
            discussion["base"] = base_ref
            discussion["baseCommit"] = repo["refs"][base_ref]
            repo["refs"][f"refs/pr/{num}"] = head or repo["refs"][base_ref]
        self.add_event(discussion, "comment", author, self._comment_data(description))
        repo["discussions"].append(discussion)
        return num

    def discussion(self, repo: dict, num: int) -> dict:
        if not 1 <= num <= len(repo["discussions"]):
            raise HubError(404, f"Discussion {num} not found")
        return repo["discussions"][num - 1]

    @staticmethod
    def _comment_data(text: str) -> dict:
        return {"edited": False, "hidden": False, "numEdits": 0, "latest": {"raw": text, "html": text}}

    @staticmethod
    def add_event(discussion: dict, kind: str, author: str, data: dict) -> dict:
        event = {"id": secrets.token_hex(12), "type": kind, "createdAt": _now(), "author": {"name": author},
                 "data": data}
        discussion["events"].append(event)
        return event

    def pr_changes(self, repo: dict, discussion: dict) -> tuple[dict, dict, dict]:
        """(files at the PR's base commit, files at the PR head, files at the target branch head)."""
        commits = repo["commits"]
        base = commits[discussion["baseCommit"]]["files"]
        head = commits[repo["refs"][f"refs/pr/{discussion['num']}"]]["files"]
        return base, head, commits[repo["refs"][discussion["base"]]]["files"]

    def conflicts(self, repo: dict, discussion: dict) -> list[str]:
        base, head, target = self.pr_changes(repo, discussion)
        return sorted(
            path
            for path in set(base) | set(head)
            if base.get(path) != head.get(path)
            and base.get(path) != target.get(path)
            and head.get(path) != target.get(path)
        )

    def merge(self, repo: dict, discussion: dict, author: str) -> str:
        if not discussion["isPullRequest"] or discussion["status"] != "open":
            raise HubError(400, f"Discussion {discussion['num']} is not an open pull request")
        if conflicting := self.conflicts(repo, discussion):
            raise HubError(409, f"Pull request has conflicts in {', '.join(conflicting)}")
        base, head, target = self.pr_changes(repo, discussion)
        merged = dict(target)
        for path in set(base) | set(head):
            if base.get(path) != head.get(path):
                if path in head:
                    merged[path] = head[path]
                else:
                    merged.pop(path, None)
        parents = [repo["refs"][discussion["base"]], repo["refs"][f"refs/pr/{discussion['num']}"]]
        title = f"{discussion['title']} (#{discussion['num']})"
        oid = self._add_commit(repo, parents, merged, title, "", author)
        repo["refs"][discussion["base"]] = oid
        discussion["status"], discussion["mergeCommitId"] = "merged", oid
        self.add_event(discussion, "status-change", author, {"status": "merged"})
        self.save(repo)
        return oid

    def text(self, entry: dict | None) -> str | None:
        """The content of a regular UTF-8 file; ``None`` for no file, LFS and binary files."""
        if entry is None or entry["lfs"]:
            return None
        try:
            return self.read(entry).decode()
        except UnicodeDecodeError:
            return None

    def diff(self, repo: dict, discussion: dict) -> str:
        """A git-style diff of the pull request against its base (binary and LFS files summarised)."""
        base, head, _ = self.pr_changes(repo, discussion)
        chunks = []
        for path in sorted(p for p in set(base) | set(head) if base.get(p) != head.get(p)):
            old, new = base.get(path), head.get(path)
            chunks.append(f"diff --git a/{path} b/{path}\n")
            texts = [self.text(entry) for entry in (old, new)]
            if (old and texts[0] is None) or (new and texts[1] is None):
                chunks.append(f"Binary files {'a/' + path if old else '/dev/null'} and "
                              f"{'b/' + path if new else '/dev/null'} differ\n")
                continue
            lines = [(text or "").splitlines(keepends=True) for text in texts]
            chunks.extend(difflib.unified_diff(
                lines[0], lines[1], f"a/{path}" if old else "/dev/null", f"b/{path}" if new else "/dev/null"
            ))
        return "".join(chunk if chunk.endswith("\n") else chunk + "\n" for chunk in chunks)


# A repository in API paths (``/api/datasets/org/name``) and in web paths (``/datasets/org/name``,
# models without a prefix); revisions arrive URL-quoted as one segment (``refs%2Fpr%2F1``).
_API_REPO = r"/api/(?P<t>model|dataset|space)s/(?P<org>[^/]+)/(?P<name>[^/]+)"
_WEB_REPO = r"/(?:(?P<t>dataset|space)s/)?(?P<org>[^/]+)/(?P<name>[^/]+)"


class HubRequestHandler(BaseHTTPRequestHandler):
    """Routes hub API calls to the ``HubStore`` of its server."""

    protocol_version = "HTTP/1.1"
    server: _Server
    #: handlers that stream big bodies and take the store lock only where they need it
    STREAMING = frozenset({"lfs_put", "resolve"})

    ROUTES: list[tuple[str, str, str]] = [
        # (method, regex on the raw path, handler name); the URL-quoted captures are unquoted for the handler
        ("GET", r"/api/whoami-v2", "whoami"),
        ("GET", r"/api/agent-harnesses", "agent_harnesses"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("DELETE", r"/api/repos/delete", "delete_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("PUT", r"/_lfs/(?P<oid>[0-9a-f]{64})", "lfs_put"),
        ("POST", rf"{_WEB_REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
        ("GET", rf"{_API_REPO}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
        ("GET", rf"{_API_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
        ("POST", rf"{_API_REPO}/paths-info/(?P<rev>[^/]+)", "paths_info"),
        ("POST", rf"{_API_REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", rf"{_API_REPO}/commit/(?P<rev>[^/]+)", "commit"),
        ("GET", rf"{_API_REPO}/refs", "refs"),
        ("GET", rf"{_API_REPO}/commits/(?P<rev>[^/]+)", "commits"),
        ("POST", rf"{_API_REPO}/branch/(?P<branch>[^/]+)", "create_branch"),
        ("POST", rf"{_API_REPO}/tag/(?P<rev>[^/]+)", "create_tag"),
        ("GET", rf"{_API_REPO}/discussions", "list_discussions"),
        ("POST", rf"{_API_REPO}/discussions", "create_discussion"),
        ("GET", rf"{_API_REPO}/discussions/(?P<num>\d+)", "discussion_details"),
        ("POST", rf"{_API_REPO}/discussions/(?P<num>\d+)/(?P<action>merge|comment|status|title)", "discussion_action"),
        ("GET", rf"{_WEB_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("HEAD", rf"{_WEB_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ]

    # -- plumbing ----------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self.dispatch("GET")

    def do_HEAD(self) -> None:
        self.dispatch("HEAD")

    def do_POST(self) -> None:
        self.dispatch("POST")

    def do_PUT(self) -> None:
        self.dispatch("PUT")

    def do_DELETE(self) -> None:
        self.dispatch("DELETE")

    def dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        # one handler instance serves every request of a keep-alive connection: reset per request
        self.body_read, self.body_content = False, None
        try:
            for route_method, pattern, handler in self.ROUTES:
                match = re.fullmatch(pattern, url.path)
                if route_method == method and match:
                    params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    if handler in self.STREAMING:
                        getattr(self, handler)(**params)
                    else:
                        with self.server.store.lock:
                            getattr(self, handler)(**params)
                    return
            logger.warning("hub server: no route for %s %s", method, self.path)
            raise HubError(404, f"Not found: {method} {url.path}")
        except HubError as error:
            headers = dict(error.headers)
            if error.code:
                headers["X-Error-Code"] = error.code
            headers["X-Error-Message"] = error.message
            self.send_json(error.body, error.status, headers)
        except Exception as error:
            logger.exception("hub server: %s %s failed", method, self.path)
            self.send_json({"error": f"internal error: {error!r}"}, 500)
        finally:
            for _ in self.body_chunks():  # an unread body would corrupt the next request on this connection
                pass

    def body_chunks(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The request body, streamed (plain or chunked transfer encoding); readable once."""
        if self.body_read:
            return
        self.body_read = True
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                yield self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            chunk = self.rfile.read(min(chunk_size, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk

    @property
    def body(self) -> bytes:
        if self.body_content is None:
            self.body_content = b"".join(self.body_chunks())
        return self.body_content

    def json_body(self) -> Any:
        return json.loads(self.body) if self.body else None

    def send_json(self, payload: Any, status: int = 200, headers: dict | None = None) -> None:
        self.send_bytes(json.dumps(payload).encode(), status, {"Content-Type": "application/json", **(headers or {})})

    def send_bytes(self, content: bytes, status: int = 200, headers: dict | None = None, length: int | None = None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{self.headers.get('Host') or f'{host}:{port}'}"

    def user(self, required: bool = False) -> str | None:
        """The user of the bearer token; a bad token is rejected, and so is no token when ``required``."""
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else None
        if token is None:
            if required:
                raise HubError(401, "Authorization header is required for this operation")
            return None
        if token not in self.server.store.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.server.store.tokens[token]

    def repo(self, t: str | None, org: str, name: str, write: bool = False) -> dict:
        user = self.user(required=write)
        return self.server.store.get(t or "model", f"{org}/{name}", user)

    def repo_url(self, repo: dict) -> str:
        return f"{self.base_url}/{URL_PREFIX[repo['type']]}{repo['id']}"

    # -- account and repositories ------------------------------------------------------------
    def whoami(self) -> None:
        user = self.user(required=True)
        self.send_json({"type": "user", "name": user, "fullname": user, "orgs": [],
                        "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}})

    def agent_harnesses(self) -> None:
        # huggingface_hub fetches this registry for its user-agent; an empty one detects no agent
        self.send_json({"standardEnvVars": [], "harnesses": {}})

    def create_repo(self) -> None:
        user = self.user(required=True)
        body = self.json_body() or {}
        repo_type = body.get("type") or "model"
        if repo_type not in REPO_TYPES or not body.get("name"):
            raise HubError(400, f"Invalid repo type or name: {body}")
        if repo_type == "space" and not body.get("sdk"):
            raise HubError(400, "A Space needs an sdk")
        repo_id = f"{body.get('organization') or user}/{body['name']}"
        private = body.get("visibility") == "private" or bool(body.get("private"))
        url = f"{self.base_url}/{URL_PREFIX[repo_type]}{repo_id}"
        self.server.store.create(repo_type, repo_id, user, private, body.get("sdk"), url)
        self.send_json({"url": url, "name": repo_id})

    def delete_repo(self) -> None:
        user = self.user(required=True)
        body = self.json_body() or {}
        self.server.store.delete(body.get("type") or "model", f"{body.get('organization') or user}/{body['name']}")
        self.send_json({})

    def validate_yaml(self) -> None:
        try:
            _yaml_header((self.json_body() or {}).get("content", ""))
        except yaml.YAMLError as error:
            raise HubError(400, f"Invalid YAML in README.md: {error}") from error
        self.send_json({"errors": [], "warnings": []})

    def repo_info(self, t: str | None, org: str, name: str, rev: str = "main") -> None:
        repo, store = self.repo(t, org, name), self.server.store
        oid, files = store.files_at(repo, rev)
        siblings = [
            {"rfilename": path, "size": e["size"], "blobId": e["oid"],
             **({"lfs": {"sha256": e["sha256"], "size": e["size"], "pointerSize": e["pointerSize"]}} if e["lfs"] else {})}
            for path, e in sorted(files.items())
        ]
        readme = files.get("README.md")
        try:
            card = _yaml_header(store.read(readme).decode(errors="replace")) if readme else None
        except yaml.YAMLError:
            card = None  # the hub serves a repo with a broken card, without its metadata
        info = {
            "_id": hashlib.sha1(repo["id"].encode()).hexdigest()[:24],
            "id": repo["id"],
            "author": repo["id"].split("/")[0],
            "sha": oid,
            "lastModified": repo["commits"][oid]["date"],
            "createdAt": repo["createdAt"],
            "private": repo["private"],
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "cardData": card,
        }
        if repo["type"] == "space":
            info.update(sdk=repo["sdk"], runtime={"stage": "RUNNING", "hardware": {"current": None}})
        self.send_json(info)

    # -- listing -----------------------------------------------------------------------------
    def path_info(self, repo: dict, head: str, files: dict, path: str, expand: bool) -> dict | None:
        """The tree entry of a file or folder at ``head``, ``None`` when the path does not exist."""
        if path in files:
            e = files[path]
            entry = {"type": "file", "path": path, "size": e["size"], "oid": e["oid"]}
            if e["lfs"]:
                entry["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": e["pointerSize"]}
        else:
            inside = sorted((p, e["oid"]) for p, e in files.items() if p.startswith(path + "/"))
            if not inside:
                return None
            entry = {"type": "directory", "path": path, "size": 0,
                     "oid": hashlib.sha1(json.dumps(inside).encode()).hexdigest()}
        if expand:
            entry["lastCommit"] = self.server.store.last_commit(repo, head, path)
        return entry

    def tree(self, t: str | None, org: str, name: str, rev: str, path: str = "") -> None:
        repo = self.repo(t, org, name)
        head, files = self.server.store.files_at(repo, rev)
        path = path.strip("/")
        prefix = f"{path}/" if path else ""
        if path and not any(p.startswith(prefix) for p in files):
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound", {"X-Repo-Commit": head})
        recursive = self.query.get("recursive", "false").lower() in ("1", "true")
        expand = self.query.get("expand", "false").lower() in ("1", "true")
        entries: set[str] = set()
        for file_path in files:
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix):].split("/")
            depth = len(parts) if recursive else 1
            entries.update(prefix + "/".join(parts[: i + 1]) for i in range(depth))
        listing = [self.path_info(repo, head, files, p, expand) for p in sorted(entries)]
        self.send_json(listing)

    def paths_info(self, t: str | None, org: str, name: str, rev: str) -> None:
        repo = self.repo(t, org, name)
        head, files = self.server.store.files_at(repo, rev)
        form = parse_qs(self.body.decode())
        expand = form.get("expand", ["false"])[-1].lower() in ("1", "true")
        infos = (self.path_info(repo, head, files, path.strip("/"), expand) for path in form.get("paths", []))
        self.send_json([info for info in infos if info is not None])

    def refs(self, t: str | None, org: str, name: str) -> None:
        repo = self.repo(t, org, name)

        def listed(prefix: str) -> list[dict]:
            return [{"name": ref[len(prefix):], "ref": ref, "targetCommit": oid}
                    for ref, oid in sorted(repo["refs"].items()) if ref.startswith(prefix)]

        refs = {"branches": listed("refs/heads/"), "tags": listed("refs/tags/"), "converts": []}
        if self.query.get("include_prs"):
            refs["pullRequests"] = listed("refs/pr/")
        self.send_json(refs)

    def commits(self, t: str | None, org: str, name: str, rev: str) -> None:
        repo = self.repo(t, org, name)
        oid, _ = self.server.store.resolve(repo, rev)
        history = []
        while oid:
            commit = repo["commits"][oid]
            history.append({"id": oid, "title": commit["title"], "message": commit["message"],
                            "date": commit["date"], "authors": [{"user": commit["author"]}]})
            oid = commit["parents"][0] if commit["parents"] else None
        self.send_json(history)

    # -- writing -----------------------------------------------------------------------------
    def create_branch(self, t: str | None, org: str, name: str, branch: str) -> None:
        repo = self.repo(t, org, name, write=True)
        if f"refs/heads/{branch}" in repo["refs"]:
            raise HubError(409, f"Branch {branch} already exists")
        start = (self.json_body() or {}).get("startingPoint") or "main"
        repo["refs"][f"refs/heads/{branch}"] = self.server.store.resolve(repo, start)[0]
        self.server.store.save(repo)
        self.send_json({})

    def create_tag(self, t: str | None, org: str, name: str, rev: str) -> None:
        repo = self.repo(t, org, name, write=True)
        tag = (self.json_body() or {}).get("tag", "")
        if not tag or f"refs/tags/{tag}" in repo["refs"]:
            raise HubError(409, f"Tag {tag!r} is empty or already exists")
        repo["refs"][f"refs/tags/{tag}"] = self.server.store.resolve(repo, rev)[0]
        self.server.store.save(repo)
        self.send_json({})

    def preupload(self, t: str | None, org: str, name: str, rev: str) -> None:
        repo, store = self.repo(t, org, name, write=True), self.server.store
        head, files = store.files_at(repo, rev)
        answer = []
        for item in (self.json_body() or {}).get("files", []):
            lfs = store.is_lfs(files, item["path"], item["size"], base64.b64decode(item.get("sample", "")))
            current = files.get(item["path"])
            remote_oid = (current["sha256"] if current["lfs"] else current["oid"]) if current else None
            answer.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                           "oid": remote_oid})
        self.send_json({"files": answer, "commitOid": head})

    def lfs_batch(self, org: str, name: str, t: str | None = None) -> None:
        self.repo(t, org, name, write=True)
        objects = []
        for obj in (self.json_body() or {}).get("objects", []):
            answer = {"oid": obj["oid"], "size": obj["size"]}
            if not self.server.store.blob_path(obj["oid"]).exists():
                answer["actions"] = {"upload": {"href": f"{self.base_url}/_lfs/{obj['oid']}"}}
            objects.append(answer)
        self.send_json({"transfer": "basic", "objects": objects}, headers={"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_put(self, oid: str) -> None:
        if not self.server.store.put_blob_stream(oid, self.body_chunks()):
            raise HubError(400, f"uploaded content does not match its sha256 {oid}")
        self.send_json({})

    def commit(self, t: str | None, org: str, name: str, rev: str) -> None:
        repo = self.repo(t, org, name, write=True)
        user = self.user(required=True)
        try:
            lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise HubError(400, f"commit body is not NDJSON: {error}") from error
        create_pr = self.query.get("create_pr") == "1"
        oid, pr_num = self.server.store.commit(repo, rev, lines, user, create_pr)
        self.send_json({
            "success": True,
            "commitOid": oid,
            "commitUrl": f"{self.repo_url(repo)}/commit/{oid}",
            "pullRequestUrl": f"{self.repo_url(repo)}/discussions/{pr_num}" if pr_num else None,
        })

    # -- discussions -------------------------------------------------------------------------
    def discussion_summary(self, repo: dict, discussion: dict) -> dict:
        return {
            "num": discussion["num"],
            "title": discussion["title"],
            "status": discussion["status"],
            "createdAt": discussion["createdAt"],
            "author": {"name": discussion["author"]},
            "isPullRequest": discussion["isPullRequest"],
            "repo": {"name": repo["id"], "type": repo["type"]},
        }

    def list_discussions(self, t: str | None, org: str, name: str) -> None:
        repo = self.repo(t, org, name)
        wanted_type, wanted_status = self.query.get("type", "all"), self.query.get("status", "all")
        selected = [
            d for d in reversed(repo["discussions"])
            if wanted_type == "all" or (wanted_type == "pull_request") == d["isPullRequest"]
            if wanted_status == "all" or d["status"] == wanted_status
            if "author" not in self.query or d["author"] == self.query["author"]
        ]
        self.send_json({"discussions": [self.discussion_summary(repo, d) for d in selected],
                        "count": len(selected), "start": 0, "numClosedDiscussions": 0})

    def create_discussion(self, t: str | None, org: str, name: str) -> None:
        repo = self.repo(t, org, name, write=True)
        body = self.json_body() or {}
        base = "refs/heads/main" if body.get("pullRequest") else None
        num = self.server.store.open_discussion(repo, body["title"], body.get("description", ""),
                                                self.user(required=True), base, None)
        self.server.store.save(repo)
        self.send_json({"num": num, "url": f"{self.repo_url(repo)}/discussions/{num}"})

    def discussion_details(self, t: str | None, org: str, name: str, num: str) -> None:
        repo, store = self.repo(t, org, name), self.server.store
        discussion = store.discussion(repo, int(num))
        details = {**self.discussion_summary(repo, discussion), "events": discussion["events"]}
        if discussion["isPullRequest"]:
            details["changes"] = {"base": discussion["base"]}
            if "mergeCommitId" in discussion:
                details["changes"]["mergeCommitId"] = discussion["mergeCommitId"]
            details["filesWithConflicts"] = store.conflicts(repo, discussion)
            details["diff"] = store.diff(repo, discussion)
        self.send_json(details)

    def discussion_action(self, t: str | None, org: str, name: str, num: str, action: str) -> None:
        repo, store = self.repo(t, org, name, write=True), self.server.store
        user, discussion = self.user(required=True), store.discussion(repo, int(num))
        body = self.json_body() or {}
        if action == "merge":
            if body.get("comment"):
                store.add_event(discussion, "comment", user, store._comment_data(body["comment"]))
            self.send_json({"mergeCommitId": store.merge(repo, discussion, user)})
            return
        if action == "comment":
            answer = {"newMessage": store.add_event(discussion, "comment", user, store._comment_data(body["comment"]))}
        elif action == "status":
            if body.get("status") not in ("open", "closed"):
                raise HubError(400, f"Invalid status {body.get('status')!r}")
            if body.get("comment"):
                store.add_event(discussion, "comment", user, store._comment_data(body["comment"]))
            discussion["status"] = body["status"]
            answer = {"newStatus": store.add_event(discussion, "status-change", user, {"status": body["status"]})}
        else:
            event = store.add_event(discussion, "title-change", user, {"from": discussion["title"], "to": body["title"]})
            discussion["title"] = body["title"]
            answer = {"newTitle": event}
        store.save(repo)
        self.send_json(answer)

    # -- downloads ---------------------------------------------------------------------------
    def resolve(self, org: str, name: str, rev: str, path: str, t: str | None = None) -> None:
        with self.server.store.lock:  # blobs never change, so only the lookup needs the lock
            repo = self.repo(t, org, name)
            head, files = self.server.store.files_at(repo, rev)
            entry = files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": head})
        etag = entry["sha256"] if entry["lfs"] else entry["oid"]
        headers = {"X-Repo-Commit": head, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        size, status = entry["size"], 200
        start, end = 0, size - 1
        requested = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if requested is not None:
            first, last = requested.groups()
            start, end = (size - int(last), size - 1) if not first else (int(first), min(int(last or end), end))
            if start >= size or start > end or start < 0:
                self.send_bytes(b"", 416, {**headers, "Content-Range": f"bytes */{size}"})
                return
            status, headers["Content-Range"] = 206, f"bytes {start}-{end}/{size}"
        self.send_bytes(b"", status, headers, length=end - start + 1)
        if self.command == "GET":
            with self.server.store.blob_path(entry["sha256"]).open("rb") as blob:
                blob.seek(start)
                remaining = end - start + 1
                while remaining > 0:
                    chunk = blob.read(min(1 << 20, remaining))
                    self.wfile.write(chunk)
                    remaining -= len(chunk)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: HubStore):
        super().__init__(address, HubRequestHandler)
        self.store = store


class HubServer:
    """A hub server bound to ``host:port`` (port 0 = a free one) and served from a background thread.

    Binding happens at construction, so ``endpoint`` is known (and can be exported as
    ``HF_ENDPOINT``) before anything talks to it; requests wait in the listen queue until
    ``start()``. Use it as a context manager or call ``start()``/``stop()``.
    """

    def __init__(self, root: str | os.PathLike, port: int = 0, host: str = "127.0.0.1",
                 tokens: dict[str, str] | None = None):
        self.store = HubStore(root, tokens)
        self.httpd = _Server((host, port), self.store)
        self.thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        if self.thread is None:
            self.thread = threading.Thread(target=self.httpd.serve_forever, name="hub-server", daemon=True)
            self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread is not None:
            self.httpd.shutdown()
            self.thread.join()
            self.thread = None
        self.httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class LocalHub:
    """A hub server this process's ``HF_*`` environment points at (see :func:`prepare_local_hub`)."""

    server: HubServer
    token: str
    user: str
    #: the ``HF_*`` variables to pass to subprocesses so that they talk to this server too
    env: dict[str, str]
    _repo_count: itertools.count = field(default_factory=itertools.count)

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def new_repo_id(self, stem: str) -> str:
        """A repository id under the test user that no other caller in this process gets."""
        return f"{self.user}/{stem}-{next(self._repo_count)}"


def prepare_local_hub(root: str | os.PathLike, home: str | os.PathLike) -> LocalHub:
    """Bind a hub server on a free port and point this process's environment at it.

    ``huggingface_hub``, ``datasets`` and ``evaluate`` read ``HF_ENDPOINT`` when first imported,
    so call this before any of them is. ``home`` becomes ``HF_HOME`` (caches, stored token),
    keeping the user's real caches out. The server answers once ``local_hub.server.start()`` ran.
    """
    if "huggingface_hub" in sys.modules:
        raise RuntimeError("huggingface_hub was imported before prepare_local_hub(): its HF_ENDPOINT is fixed")
    token, user = next(iter(DEFAULT_TOKENS.items()))
    server = HubServer(root, tokens={token: user})
    env = {
        "HF_ENDPOINT": server.endpoint,
        "HF_TOKEN": token,
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_XET": "1",  # this server speaks plain LFS, not Xet
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_OFFLINE": "0",  # everything goes to 127.0.0.1
        "HF_DATASETS_OFFLINE": "0",
    }
    os.environ.update(env)
    return LocalHub(server, token, user, env)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a local Hugging Face Hub-compatible API.")
    parser.add_argument("--root", required=True, help="storage directory (created if missing, kept across runs)")
    parser.add_argument("--port", type=int, default=8999)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--token", action="append", metavar="TOKEN=USER",
                        help=f"accepted token and its user (repeatable; default {DEFAULT_TOKENS})")
    args = parser.parse_args(argv)
    tokens = dict(item.split("=", 1) for item in args.token) if args.token else None
    server = HubServer(args.root, args.port, args.host, tokens)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(f"hub server on {server.endpoint}  (storage: {args.root}; export HF_ENDPOINT={server.endpoint} "
          "HF_HUB_DISABLE_XET=1)", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


if __name__ == "__main__":
    main()
