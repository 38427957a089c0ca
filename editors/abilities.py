"""What the editing methods need of a pretrained model, measured and checked.

A tiny model is only a fair stand-in for an LVLM when it has the abilities the methods rely on:
it knows the facts to be edited (and on another image of the same entity), it keeps unrelated
answers, and it reads a new fact given in its context, as IKE gives it (its own retrieved
demonstrations, then the fact) and as SERAC's counterfactual model reads it (the fact alone).
Without the last one IKE and SERAC measure nothing, so a model that lacks an ability says so
instead of producing a table: pretraining trains on or stops, and ``kebench run`` refuses such a
default model and warns about a model the user brings.

Each ability is a teacher-forced answer-token accuracy over the test split (``pretrain.json``'s
``accuracy``), under the name the record has used since the first recipes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ability:
    key: str
    description: str
    threshold: float


#: the abilities a default model must have, each with the least accuracy it must reach
ABILITIES = (
    Ability("reliability_old_answer", "knows the old answers on the edit images", 0.90),
    Ability("i_generality_old_answer", "knows them on another image of the same entity", 0.85),
    Ability("t_locality_answer", "answers the unrelated text questions", 0.90),
    Ability("i_locality_answer", "answers the unrelated image questions", 0.90),
    Ability("in_context_new_answer", "reads a new fact in context after IKE's retrieved demonstrations", 0.90),
    Ability("fact_alone_new_answer", "reads a new fact given alone in context (SERAC's counterfactual input)", 0.85),
)


class MissingAbilityError(ValueError):
    """A model lacks an ability a method needs; the message names it and its figure (one line)."""


def shortfalls(accuracy: Mapping[str, float]) -> list[str]:
    """One phrase per ability below its threshold (or not measured), e.g. ``"in_context_new_answer
    0.365 < 0.90 (reads a new fact ...)"``; empty when the model has them all."""
    missing = []
    for ability in ABILITIES:
        value = accuracy.get(ability.key)
        if value is None:
            missing.append(f"{ability.key} not measured ({ability.description})")
        elif value < ability.threshold:
            missing.append(f"{ability.key} {value:.3f} < {ability.threshold:.2f} ({ability.description})")
    return missing


def summary_line(accuracy: Mapping[str, float]) -> str:
    """The abilities as one line for people: ``old answers 96.0%, ... fact in context 92.5%``."""
    return ", ".join(f"{ability.key} {100 * accuracy[ability.key]:.1f}%" for ability in ABILITIES
                     if ability.key in accuracy)


def _pretrain_record(model_dir: str | Path) -> dict | None:
    """The ``pretrain.json`` of a model directory made by ``kebench pretrain``, else None."""
    record = Path(model_dir) / "pretrain.json"
    return json.loads(record.read_text()) if record.exists() else None


def model_abilities(model_dir: str | Path) -> dict[str, float] | None:
    """The measured abilities of a model directory made by ``kebench pretrain``, else None."""
    record = _pretrain_record(model_dir)
    return None if record is None else record.get("accuracy")


def measured_on(model_dir: str | Path, data_dir: str | Path) -> bool | None:
    """Whether ``model_dir``'s abilities were measured on ``data_dir``'s world (the one it was
    pretrained on): None when that cannot be told (no record, or data that is no local directory)."""
    from kebench_hf.world import world_fingerprint

    record = _pretrain_record(model_dir)
    if record is None or not Path(data_dir).is_dir():
        return None
    return record.get("data_fingerprint") == world_fingerprint(data_dir)


def warn_if_measured_elsewhere(model_dir: str | Path, data_dir: str | Path) -> bool | None:
    """:func:`measured_on`, with a warning when the answer is no: a model pretrained on one world
    neither knows another world's facts nor has learned to read its names in context, so its
    scores there measure the pipeline, not the methods (the default model on the ``full`` world:
    IKE Reliability 1.2, against 95 on its own; benchmarks/RESULTS.md#full-size-run)."""
    same = measured_on(model_dir, data_dir)
    if same is False:
        logger.warning("model %s was pretrained and its abilities measured on another world than %s: it may not "
                       "know these facts nor read these names in context, and scores here measure little; "
                       "run.json says abilities_measured_on_this_data: false", model_dir, data_dir)
    return same


def check_model(model_dir: str | Path, default: bool) -> str:
    """The line saying what ``model_dir`` can do. A default model that lacks an ability raises
    :class:`MissingAbilityError`; a model the user brings is only warned about (its abilities may
    be unmeasured, or measured for another purpose)."""
    accuracy = model_abilities(model_dir)
    if accuracy is None:
        return f"model {model_dir}: abilities not measured (no pretrain.json)"
    missing = shortfalls(accuracy)
    if missing and default:
        raise MissingAbilityError(f"the default model {model_dir} lacks what the methods need: {'; '.join(missing)}; "
                                  "rebuild it with another seed (kebench pretrain --seed N) or pass --model")
    if missing:
        logger.warning("model %s lacks abilities some methods need: %s", model_dir, "; ".join(missing))
    return f"model {model_dir}: {summary_line(accuracy)}"
