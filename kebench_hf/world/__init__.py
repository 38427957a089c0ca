"""A generated multimodal knowledge graph (the "world") and the KEBench data built from it."""

import hashlib
from pathlib import Path

from .build import SCALES, build_world

__all__ = ["SCALES", "build_world", "default_world", "world_fingerprint"]


def default_world() -> Path:
    """The ``default`` world's release directory, generated once under the cache."""
    from kebench_hf.paths import cache_dir

    directory = cache_dir() / "worlds" / "default"
    if (directory / "kebench" / "eval.json").exists():
        return directory / "kebench"
    return build_world(directory, seed=0, scale="default")


def world_fingerprint(data_dir: str | Path) -> str:
    """A digest of every file of a release directory and of its sibling ``kg/`` (what a tiny model
    is pretrained on): a model made for one world is not silently used with another."""
    root = Path(data_dir)
    digest = hashlib.sha256()
    for directory in (root, root.parent / "kg"):
        if not directory.is_dir():
            continue
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            digest.update(f"{directory.name}/{path.relative_to(directory).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
