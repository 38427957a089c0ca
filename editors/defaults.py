"""The default model the main job and ``kebench run`` without ``--model`` edit (the default world is
:func:`kebench_hf.world.default_world`): the tiny LLaVA shipped in the repository, or one pretrained
once on the default world and cached."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from filelock import FileLock

from editors.abilities import MissingAbilityError, shortfalls
from editors.pretrain import RECIPE, SUMMARY, PretrainConfig, pretrain
from kebench_hf.paths import cache_dir

logger = logging.getLogger(__name__)

#: the default model, shipped in the repository so that the main job starts editing at once
#: (``kebench pretrain --out editors/default_model`` rebuilds it on the default world)
SHIPPED_DEFAULT_MODEL = Path(__file__).parent / "default_model"


def _usable_record(model_dir: Path, fingerprint: str) -> dict | None:
    """The pretraining record of ``model_dir`` if it was made by this recipe on this world."""
    record = model_dir / SUMMARY
    if not record.exists():
        return None
    summary = json.loads(record.read_text())
    if summary.get("recipe") != RECIPE or summary.get("data_fingerprint") != fingerprint:
        return None
    return summary


def default_model(arch: str = "llava") -> Path:
    """The tiny ``arch`` pretrained on the ``default`` world: the shipped one (LLaVA) when it was made
    by this recipe on this world, else built once under the cache (rebuilt when the recipe or the
    world changes). A model whose record shows a missing ability is refused, never used."""
    # looked up at each call: the world's module is where tests point the default world elsewhere
    from kebench_hf.world import default_world, world_fingerprint

    world = default_world()
    fingerprint = world_fingerprint(world)
    out = cache_dir() / "models" / f"tiny-{arch}-default"
    candidates = [SHIPPED_DEFAULT_MODEL, out] if arch == "llava" else [out]
    found = next(((path, summary) for path in candidates if (summary := _usable_record(path, fingerprint))), None)
    if found is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        # runs sharing the cache wait for the one pretraining instead of training into the same files
        with FileLock(out.parent / f"{out.name}.lock"):
            summary = _usable_record(out, fingerprint)
            if summary is None:
                logger.info("pretraining the default tiny %s (no model of recipe %d for this world)", arch, RECIPE)
                (out / SUMMARY).unlink(missing_ok=True)
                pretrain(world, out, PretrainConfig(arch=arch))  # raises when an ability stays short
                summary = json.loads((out / SUMMARY).read_text())
        found = out, summary
    path, summary = found
    missing = shortfalls(summary["accuracy"])
    if missing:
        raise MissingAbilityError(f"the default model {path} lacks what the methods need: {'; '.join(missing)}; "
                                  "delete it to rebuild it, or pass --model")
    return path
