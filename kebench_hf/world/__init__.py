"""A generated multimodal knowledge graph (the "world") and the KEBench data built from it."""

import hashlib
from pathlib import Path

from filelock import FileLock

from .build import SCALES, build_world

__all__ = ["SCALES", "build_world", "cached_world", "default_world", "world_fingerprint"]


def cached_world(scale: str = "default", seed: int = 0) -> Path:
    """The release directory of world ``scale`` (seed ``seed``), generated once under the cache.

    Processes sharing a cache (runs side by side, the shards of a data-parallel run) wait for the
    one that builds it instead of writing the same files at the same time."""
    from kebench_hf.paths import cache_dir

    name = scale if seed == 0 else f"{scale}-seed{seed}"
    directory = cache_dir() / "worlds" / name
    release = directory / "kebench"
    if (release / "eval.json").exists():
        return release
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(directory.parent / f"{name}.lock"):
        if (release / "eval.json").exists():  # built by another process while this one waited
            return release
        return build_world(directory, seed=seed, scale=scale)


def default_world() -> Path:
    """The ``default`` world's release directory, generated once under the cache."""
    return cached_world("default")


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
