"""Pushing folders to the Hugging Face Hub (``kebench push``, see :mod:`kebench_hf.data_commands`).

Everything goes through ``huggingface_hub``: the endpoint is ``HF_ENDPOINT`` (default the public
hub), the token comes from the usual places (``HF_TOKEN``, then the token stored by
``hf auth login``). Failures a user can fix (no token, rejected token, unreachable endpoint, bad
repository id, missing folder) raise :class:`HubError` or ``ValueError``/``FileNotFoundError``
with a one-line message; the CLI prints it.

A push is one commit: ``create_repo(exist_ok=True)`` then ``upload_folder``. Re-running an
interrupted push re-sends only what the hub does not have yet (LFS objects already stored are
skipped, unchanged regular files are dropped from the commit).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx2
from huggingface_hub import CommitInfo, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from kebench_hf.constants import REPO_TYPES
from kebench_hf.errors import HubError
from kebench_hf.export import STATE_FILE

logger = logging.getLogger(__name__)


def hub_token(token: str | None = None) -> str:
    """``token``, else ``HF_TOKEN``, else the stored login token; a :class:`HubError` when there is none."""
    token = token or get_token()
    if not token:
        raise HubError("no Hugging Face token found: set HF_TOKEN or run `hf auth login`")
    return token


def is_hub_id(text: str, namespaced: bool = True) -> bool:
    """Whether ``text`` is a hub repository id (the hub's own validation): ``ORG/NAME``, or also a bare
    ``NAME`` when not ``namespaced`` (canonical datasets). What a model or data argument that names no
    local directory must be."""
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return text.count("/") == 1 if namespaced else text.count("/") <= 1


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid ``ORG/NAME``; a one-line ``ValueError`` otherwise."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"bad repository id {repo_id!r}: {str(error).splitlines()[0]}") from None
    if not is_hub_id(repo_id):
        raise ValueError(f"bad repository id {repo_id!r}: expected ORG/NAME")
    return repo_id


@contextlib.contextmanager
def hub_errors(action: str, endpoint: str | None = None) -> Iterator[None]:
    """Turn network and HTTP failures of ``huggingface_hub`` into one-line :class:`HubError` messages."""
    endpoint = endpoint or constants.ENDPOINT
    try:
        yield
    except httpx2.TransportError as error:
        raise HubError(f"{action}: cannot reach the hub at {endpoint} ({type(error).__name__}: {error})") from error
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            reason = "the token was rejected (check HF_TOKEN or run `hf auth login`)"
        elif status == 403:
            reason = "the token has no write access to this repository"
        else:
            reason = str(error).strip().splitlines()[0] or f"HTTP {status}"
        raise HubError(f"{action}: {reason} [{endpoint}]") from error


def ensure_repo(
    repo_id: str,
    repo_type: str = "dataset",
    *,
    private: bool = False,
    space_sdk: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Create ``repo_id`` unless it exists; returns its URL. Spaces default to the gradio SDK.

    ``endpoint`` defaults to ``HF_ENDPOINT``, ``token`` to :func:`hub_token`.
    """
    check_repo_id(repo_id)
    if repo_type not in REPO_TYPES:
        raise ValueError(f"unknown repo type {repo_type!r}; expected one of {REPO_TYPES}")
    api = HfApi(endpoint=endpoint, token=hub_token(token))
    sdk = (space_sdk or "gradio") if repo_type == "space" else None
    with hub_errors(f"creating {repo_type} {repo_id}", endpoint):
        return str(api.create_repo(repo_id, repo_type=repo_type, private=private, space_sdk=sdk, exist_ok=True))


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: str = "dataset",
    create_pr: bool = False,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    space_sdk: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> CommitInfo:
    """Upload every file of ``folder`` to ``repo_id`` in one commit (or one pull request).

    ``revision`` names a branch, created from ``main`` if missing. The returned ``CommitInfo``
    has ``commit_url``, ``oid`` and, for a pull request, ``pr_url``/``pr_revision`` (``refs/pr/N``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such directory to push")
    if not any(path.is_file() for path in folder.rglob("*")):
        raise ValueError(f"{folder}: directory has no files to push")
    if (folder / STATE_FILE).exists():
        raise ValueError(f"{folder}: `kebench export` did not finish here ({STATE_FILE}); re-run it before pushing")
    token = hub_token(token)
    ensure_repo(repo_id, repo_type, private=private, space_sdk=space_sdk, token=token, endpoint=endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    if revision is not None and revision != constants.DEFAULT_REVISION:
        with hub_errors(f"creating branch {revision} of {repo_id}", endpoint):
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
    logger.info("pushing %s to %s %s%s", folder, repo_type, repo_id, " as a pull request" if create_pr else "")
    with hub_errors(f"pushing {folder} to {repo_id}", endpoint):
        return api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            repo_type=repo_type,
            revision=revision,
            create_pr=create_pr,
            commit_message=message or f"Upload {folder.name} with kebench push",
        )
