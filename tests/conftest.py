"""Shared fixtures. Expensive artifacts (worlds, tiny models, the hub server) are session-scoped."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kebench_hf.testing.hub_server import LocalHub, prepare_local_hub

FIXTURES = Path(__file__).parent / "fixtures"

# huggingface_hub, datasets and evaluate read HF_ENDPOINT at import: point it at the session's local
# hub server now, before any test module imports them (see the ``hub_server`` fixture).
_HUB_DIR = Path(tempfile.mkdtemp(prefix="kebench-test-hub-"))
atexit.register(shutil.rmtree, _HUB_DIR, ignore_errors=True)
_LOCAL_HUB = prepare_local_hub(_HUB_DIR / "storage", _HUB_DIR / "hf-home")


@pytest.fixture(scope="session")
def vlkeb_fixture_dir() -> Path:
    """The tiny directory in the exact public release layout (copied from shared/fixtures)."""
    return FIXTURES / "vlkeb-format"


@pytest.fixture
def writable_release(tmp_path: Path, vlkeb_fixture_dir: Path) -> Path:
    """A writable copy of the release-layout fixture, for building broken variants of it."""
    import shutil

    copy = tmp_path / "release"
    shutil.copytree(vlkeb_fixture_dir, copy, copy_function=shutil.copyfile)
    for path in [copy, *copy.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return copy


@pytest.fixture(scope="session")
def hub_server() -> Iterator[LocalHub]:
    """The session's local Hugging Face Hub (``kebench_hf.testing.hub_server``) on 127.0.0.1.

    This test process already talks to it: conftest set ``HF_ENDPOINT``, ``HF_TOKEN`` (a write token
    of user ``hub_server.user``), ``HF_HOME`` (a fresh temporary cache) and ``HF_HUB_DISABLE_XET=1``
    before anything imported huggingface_hub, so plain ``HfApi()``, ``hf_hub_download``,
    ``snapshot_download``, ``load_dataset("org/name")`` and ``evaluate.load("org/name")`` (a Space
    holding ``name.py``) all hit it. Fields: ``.endpoint``, ``.token``, ``.user``, ``.env`` (the
    ``HF_*`` variables; pass ``{**os.environ, **hub_server.env}`` to subprocesses, e.g.
    ``kebench push``) and ``.new_repo_id("stem")`` (a repo id no other test gets: the server and
    its repositories live for the whole session). It serves repos of every type, LFS uploads,
    commits and pull requests (``create_pr``, ``refs/pr/N``), discussions (list, details with diff,
    comment, status, merge), refs, branches and tags.
    """
    import datasets

    # The datasets-server (Parquet export) host does not exist here; the repo's own files are used.
    datasets.config.USE_PARQUET_EXPORT = False
    _LOCAL_HUB.server.start()
    yield _LOCAL_HUB
    _LOCAL_HUB.server.stop()


@pytest.fixture
def decode_calls(monkeypatch) -> list:
    """The paths of every ``datasets.Image.decode_example`` call made during the test."""
    import datasets

    calls = []
    original = datasets.Image.decode_example

    def counting(self, value, token_per_repo_id=None):
        calls.append(value["path"])
        return original(self, value, token_per_repo_id=token_per_repo_id)

    monkeypatch.setattr(datasets.Image, "decode_example", counting)
    return calls


@pytest.fixture(scope="session")
def leaderboard_data(tmp_path_factory: pytest.TempPathFactory, vlkeb_fixture_dir: Path) -> Path:
    """The release-layout fixture with 1- and 2-hop portability added to the first test case."""
    import json
    import shutil

    copy = tmp_path_factory.mktemp("leaderboard") / "kebench"
    shutil.copytree(vlkeb_fixture_dir, copy, copy_function=shutil.copyfile)
    records = json.loads((copy / "eval.json").read_text())
    records[0]["port_new"] = [
        {"port_type": "1-hop", "Q&A": {"Question": "Which club does the player in the image play for?", "Answer": "Al Nassr"}},
        {"port_type": "2-hop", "Q&A": {"Question": "In which country is that club?", "Answer": "Saudi Arabia"}},
    ]
    (copy / "eval.json").write_text(json.dumps(records, indent=1))
    return copy


@pytest.fixture(scope="session")
def leaderboard_reference(leaderboard_data: Path):
    """The leaderboard's ``Reference`` (dataset version + case ids per metric) of ``leaderboard_data``."""
    from kebench_hf.leaderboard.submission import Reference

    return Reference.load(str(leaderboard_data))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``kebench world --scale tiny --seed 0`` built once: the path of its ``kebench/`` release dir.

    The generated knowledge graph (``names.tsv``, ``triples.tsv``, ``images/``) is its sibling ``../kg``.
    """
    from kebench_hf.world import build_world

    return build_world(tmp_path_factory.mktemp("world") / "tiny", seed=0, scale="tiny")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, vlkeb_fixture_dir: Path) -> dict[str, Path]:
    """One untrained tiny model per architecture (``editors.tiny.BUILDERS``), tokenizer trained on
    the release fixture's text: ``{arch: model directory}``."""
    import json

    from editors.tiny import BUILDERS, build_tiny_model

    records = [r for name in ("train.json", "eval.json") for r in json.loads((vlkeb_fixture_dir / name).read_text())]
    texts = [value for record in records for value in record.values() if isinstance(value, str)]
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: build_tiny_model(arch, texts, root / arch) for arch in BUILDERS}


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory, tiny_world: Path) -> Path:
    """A tiny LLaVA pretrained on ``tiny_world`` with the short recipe (the method tests need the
    old answers, not reading facts in context): its model directory."""
    from editors.pretrain import SHORT_RECIPE, pretrain

    out = tmp_path_factory.mktemp("tiny-llava")
    pretrain(tiny_world, out, SHORT_RECIPE)
    return out


@pytest.fixture(scope="module")
def llava(tiny_llava: Path):
    """``tiny_llava`` loaded with its weights frozen; one per test module, since tests edit it."""
    from editors.adapters import load_adapter

    adapter = load_adapter(tiny_llava)
    adapter.model.requires_grad_(False)
    return adapter


@pytest.fixture(scope="module")
def test_cases(tiny_world: Path):
    """``tiny_world``'s test split as edit cases (images decoded on access)."""
    from editors.cases import CaseSequence, load_split

    return CaseSequence(load_split(tiny_world, "edit", "test"))


@pytest.fixture(scope="module")
def train_cases(tiny_world: Path):
    """``tiny_world``'s train split as edit cases."""
    from editors.cases import CaseSequence, load_split

    return CaseSequence(load_split(tiny_world, "edit", "train"))
