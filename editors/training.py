"""What the trained editors (MEND, KE, SERAC) share: edit queries, the gradient factors of an
edit, the meta-training loop, and saving/loading editors bound to their base model.

The loop is deliberately short: sample a train case, compute the method's training loss, step; every
``val_every`` steps score the held-out train cases, keep the best editor, stop after ``patience``
validations without improvement; checkpoint after every validation so a killed run resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from editors.adapters.base import EncodedBatch, ModelAdapter, Query
from editors.cases import EditCase
from editors.forward import full_logits
from editors.losses import answer_nll_row_mean
from editors.methods.base import MethodConfig
from editors.queries import trained_specs

logger = logging.getLogger(__name__)

EDITOR_FORMAT_VERSION = 1
EDITOR_WEIGHTS = "editor.safetensors"
EDITOR_CONFIG = "editor.json"
CHECKPOINT_WEIGHTS = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"

class EditorFileError(ValueError):
    """A trained editor that cannot be used: missing, corrupt, or made for another base model."""


# -- the queries of an edit case --------------------------------------------------------------------

# Looked up in the query table at each call, so that a spec added there is learnt from too.


def trained_queries(case: EditCase) -> list[Query]:
    """The case's queries a trained editor learns from (one per :func:`~editors.queries.trained_specs`)."""
    return [spec.query(case) for spec in trained_specs()]


def in_scope_rows() -> tuple[int, ...]:
    """Rows of :func:`trained_queries` in the scope of the edit (their answer becomes the new one)."""
    return tuple(row for row, spec in enumerate(trained_specs()) if spec.in_scope)


def out_of_scope_rows() -> tuple[int, ...]:
    """Rows of :func:`trained_queries` whose output the edit must leave alone."""
    return tuple(row for row, spec in enumerate(trained_specs()) if not spec.in_scope)


def edit_row() -> int:
    """The row of :func:`trained_queries` that is the query the edit is made on (the reliability query)."""
    return [spec.name for spec in trained_specs()].index("reliability")


def in_scope_queries(case: EditCase) -> list[Query]:
    """The case's queries whose answer the edit changes (edit, rephrase, other image)."""
    return [spec.query(case) for spec in trained_specs() if spec.in_scope]


def edit_condition(case: EditCase) -> str:
    """KE's conditioning text: old answer, new answer, edit question."""
    return f"{case.pred} >> {case.alt} || {case.src}"


# -- what a trained editor edits and the gradient of an edit -----------------------------------------


def mlp_output_projection(mlp: nn.Module) -> nn.Linear:
    """The linear of an MLP block that writes back to the residual stream (down_proj / fc2 / ...).

    Found by shape, not by name: the last ``nn.Linear`` whose output width equals the input width of
    the block's first linear.
    """
    linears = [module for module in mlp.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"MLP block {type(mlp).__name__} has no nn.Linear to edit")
    residual_width = linears[0].in_features
    writers = [linear for linear in linears if linear.out_features == residual_width]
    if not writers:
        raise ValueError(f"MLP block {type(mlp).__name__}: no linear maps back to width {residual_width}")
    return writers[-1]


def edited_weights(adapter: ModelAdapter, layers: Sequence[int]) -> dict[str, nn.Parameter]:
    """``{parameter name: weight}`` of the MLP output projection of each decoder layer in ``layers``."""
    names = {id(module): name for name, module in adapter.model.named_modules()}
    weights = {}
    for layer in layers:
        linear = mlp_output_projection(adapter.mlp(layer))
        weights[f"{names[id(linear)]}.weight"] = linear.weight
    return weights


def gradient_factors(
    adapter: ModelAdapter, weights: Mapping[str, nn.Parameter], batch: EncodedBatch, rows: Sequence[int]
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Rank-1 factors of the edit loss gradient at each weight (``grad W = delta.T @ u``), and the logits.

    ``u`` (tokens x in) are the linear's inputs and ``delta`` (tokens x out) the loss gradient at its
    output, over all non-padding positions of ``rows``. Only the model's forward and a backward down to
    the lowest edited layer run; no parameter gradient is accumulated.
    """
    modules = dict(adapter.model.named_modules())
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for name in weights:
        module_name = name.removesuffix(".weight")

        def capture(module, args, output, module_name=module_name):
            inputs[module_name] = args[0].detach()
            # a leaf here gives d loss / d output directly, whatever requires grad below it
            outputs[module_name] = output.detach().requires_grad_(True)
            return outputs[module_name]

        handles.append(modules[module_name].register_forward_hook(capture))
    try:
        with torch.enable_grad():
            logits = full_logits(adapter, batch)
            loss = answer_nll_row_mean(logits, batch, rows)
            grads = torch.autograd.grad(loss, [outputs[name.removesuffix(".weight")] for name in weights])
    finally:
        for handle in handles:
            handle.remove()
    # each row's real positions, counted in the logits (a family whose forward widens its image ids,
    # mPLUG-Owl2, has more positions than input ids): the row's first to its last, right-padded
    mask = torch.zeros(logits.shape[:2], dtype=torch.bool, device=logits.device)
    for row, valid in enumerate(batch.valid_positions):
        mask[row, : valid.stop + 1] = True
    factors = {}
    for name, grad in zip(weights, grads, strict=True):
        u = inputs[name.removesuffix(".weight")]
        if u.dim() == 2:  # OPT runs its MLP on the (rows x positions) tokens flattened
            u, grad = u.reshape(*logits.shape[:2], -1), grad.reshape(*logits.shape[:2], -1)
        keep = mask[list(rows)].to(u.device)
        u, delta = u[list(rows)][keep], grad[list(rows)][keep]
        factors[name] = (u.reshape(-1, u.shape[-1]).float(), delta.reshape(-1, delta.shape[-1]).float())
    return factors, logits.detach()


# -- the base model an editor belongs to --------------------------------------------------------------


def base_model_identity(adapter: ModelAdapter, weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What binds an editor to its base model: config hash, and shape + value hash of the edited weights."""
    config = adapter.model.config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "_commit_hash"):
        config.pop(volatile, None)
    config_hash = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    weight_hash = hashlib.sha256()
    shapes = {}
    for name in sorted(weights):
        tensor = weights[name].detach().to("cpu", torch.float32).contiguous()
        shapes[name] = list(tensor.shape)
        weight_hash.update(name.encode())
        weight_hash.update(tensor.numpy().tobytes())
    return {
        "model_type": config.get("model_type"),
        "config_sha256": config_hash,
        "weights": shapes,
        "weights_sha256": weight_hash.hexdigest(),
    }


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_editor(
    out_dir: Path,
    method: str,
    config: Any,
    tensors: Mapping[str, torch.Tensor],
    base_model: Mapping[str, Any],
    report: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``editor.safetensors`` and ``editor.json`` (method, config, base model identity, report)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / EDITOR_WEIGHTS
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(weights_path))
    description = {
        "format_version": EDITOR_FORMAT_VERSION,
        "method": method,
        "config": asdict(config),
        "base_model": dict(base_model),
        "weights_sha256": _file_sha256(weights_path),
        "report": dict(report or {}),
    }
    (out_dir / EDITOR_CONFIG).write_text(json.dumps(description, indent=2, default=str) + "\n")
    logger.info("saved %s editor to %s", method, out_dir)
    return out_dir


def read_editor(editor_dir: Path, method: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify an editor directory; returns (editor.json content, tensors)."""
    editor_dir = Path(editor_dir)
    config_path, weights_path = editor_dir / EDITOR_CONFIG, editor_dir / EDITOR_WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise EditorFileError(f"editor {editor_dir}: {path.name} is missing")
    try:
        description = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise EditorFileError(f"editor {editor_dir}: {EDITOR_CONFIG} is not valid JSON ({error})") from None
    for key in ("format_version", "method", "config", "base_model", "weights_sha256"):
        if key not in description:
            raise EditorFileError(f"editor {editor_dir}: {EDITOR_CONFIG} lacks the field {key!r}")
    if description["method"] != method:
        raise EditorFileError(
            f"editor {editor_dir} was trained for method {description['method']!r}, not {method!r}"
        )
    if description["format_version"] != EDITOR_FORMAT_VERSION:
        raise EditorFileError(f"editor {editor_dir}: unsupported format_version {description['format_version']}")
    if _file_sha256(weights_path) != description["weights_sha256"]:
        raise EditorFileError(
            f"editor {editor_dir}: {EDITOR_WEIGHTS} is corrupt or truncated (checksum differs from {EDITOR_CONFIG})"
        )
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise EditorFileError(f"editor {editor_dir}: cannot read {EDITOR_WEIGHTS} ({error})") from None
    return description, tensors


def check_base_model(editor_dir: Path, recorded: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Refuse an editor trained on another base model, naming what differs."""
    for key, meaning in (
        ("config_sha256", "model configuration"),
        ("weights", "edited weight names/shapes"),
        ("weights_sha256", "edited weight values"),
    ):
        if recorded.get(key) != current.get(key):
            raise EditorFileError(
                f"editor {editor_dir} was trained on a different base model ({meaning} differ: "
                f"editor {recorded.get('model_type')!r}, model {current.get('model_type')!r})"
            )


# -- meta-training --------------------------------------------------------------------------------------


@dataclass
class MetaTrainingConfig(MethodConfig):
    """Settings of the meta-training loop, shared by the trained methods' configs."""

    max_steps: int = 1500
    lr: float = 1e-3
    val_cases: int = 16
    val_every: int = 100
    patience: int = 4
    seed: int = 0


def held_out_split(count: int, config: MetaTrainingConfig) -> tuple[list[int], list[int]]:
    """(training, validation) indices of ``count`` train cases: a seeded shuffle, ``val_cases`` held out."""
    if count <= config.val_cases:
        raise ValueError(f"{count} train cases: need more than val_cases={config.val_cases} to train an editor")
    order = list(range(count))
    random.Random(config.seed).shuffle(order)
    return order[config.val_cases :], order[: config.val_cases]


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


@dataclass
class TrainingState:
    """Where meta-training stands: what a checkpoint holds besides the editor's and optimizer's tensors."""

    best_state: dict[str, torch.Tensor]
    step: int = 0
    best_score: float = float("-inf")
    #: validations in a row without a new best (early stopping counts them against ``patience``)
    bad_validations: int = 0
    elapsed_seconds: float = 0.0


def meta_train(
    editor: nn.Module,
    training_loss: Callable[[EditCase], torch.Tensor],
    validation_score: Callable[[EditCase], float],
    cases: Sequence[EditCase],
    config: MetaTrainingConfig,
    checkpoint_dir: Path | None = None,
    description: str = "meta-training",
    parameter_groups: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train ``editor``'s parameters on ``cases``; the best editor on held-out cases is kept.

    ``validation_score`` is higher-is-better (e.g. post-edit answer accuracy minus locality damage).
    The first ``config.val_cases`` cases (after a seeded shuffle) are held out for validation.
    ``parameter_groups`` (optimizer groups with their own lr) default to all of ``editor``'s parameters.
    Returns a report (steps, best validation score, early stop, seconds, peak RSS).
    """
    train_indices, val_indices = held_out_split(len(cases), config)
    val_cases = [cases[i] for i in val_indices]
    train_cases = [cases[i] for i in train_indices]
    parameters = [p for p in editor.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameter_groups or parameters, lr=config.lr, weight_decay=0.0)

    state = TrainingState(best_state={k: v.detach().clone() for k, v in editor.state_dict().items()})
    if checkpoint_dir is not None and (Path(checkpoint_dir) / CHECKPOINT_STATE).is_file():
        state = _resume(editor, optimizer, Path(checkpoint_dir))
        logger.info("%s: resumed at step %d (best validation %.4f)", description, state.step, state.best_score)

    def validate() -> float:
        return sum(validation_score(case) for case in val_cases) / len(val_cases)

    started = time.perf_counter() - state.elapsed_seconds
    stopped_early = state.bad_validations >= config.patience
    progress = tqdm(total=config.max_steps, initial=state.step, desc=description, disable=stopped_early)
    while state.step < config.max_steps and not stopped_early:
        editor.train()
        # the case of a step depends on (seed, step) only, so a resumed run sees what the killed one would have
        case = train_cases[random.Random(f"{config.seed}-{state.step}").randrange(len(train_cases))]
        loss = training_loss(case)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        state.step += 1
        progress.update(1)
        progress.set_postfix(loss=f"{loss.item():.3f}", best=f"{state.best_score:.3f}")
        if state.step % config.val_every == 0 or state.step == config.max_steps:
            editor.eval()
            score = validate()
            if score > state.best_score:
                state.best_score, state.bad_validations = score, 0
                state.best_state = {k: v.detach().clone() for k, v in editor.state_dict().items()}
            else:
                state.bad_validations += 1
            stopped_early = state.bad_validations >= config.patience
            logger.info("%s step %d: validation %.4f (best %.4f)", description, state.step, score, state.best_score)
            if checkpoint_dir is not None:
                state.elapsed_seconds = time.perf_counter() - started
                _checkpoint(editor, optimizer, Path(checkpoint_dir), state)
    progress.close()
    editor.load_state_dict(state.best_state)
    editor.eval()
    return {
        "steps": state.step,
        "best_validation": state.best_score,
        "stopped_early": stopped_early,
        "train_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "train_cases": len(train_cases),
        "validation_cases": len(val_cases),
    }


def _checkpoint(editor: nn.Module, optimizer: torch.optim.Optimizer, directory: Path, progress: TrainingState) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tensors, optimizer_meta = _optimizer_tensors(optimizer)
    tensors.update({f"editor.{k}": v for k, v in editor.state_dict().items()})
    tensors.update({f"best.{k}": v for k, v in progress.best_state.items()})
    # write-then-rename: a crash mid-write leaves the previous checkpoint intact
    temporary = directory / (CHECKPOINT_WEIGHTS + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(temporary))
    temporary.replace(directory / CHECKPOINT_WEIGHTS)
    state = {
        "step": progress.step,
        "best_score": progress.best_score,
        "bad_validations": progress.bad_validations,
        "elapsed_seconds": progress.elapsed_seconds,
        "optimizer": optimizer_meta,
        "weights_sha256": _file_sha256(directory / CHECKPOINT_WEIGHTS),
    }
    (directory / (CHECKPOINT_STATE + ".tmp")).write_text(json.dumps(state))
    (directory / (CHECKPOINT_STATE + ".tmp")).replace(directory / CHECKPOINT_STATE)


def _resume(editor: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> TrainingState:
    state = json.loads((directory / CHECKPOINT_STATE).read_text())
    weights_path = directory / CHECKPOINT_WEIGHTS
    if not weights_path.is_file() or _file_sha256(weights_path) != state["weights_sha256"]:
        raise EditorFileError(f"checkpoint in {directory} is corrupt or incomplete; delete it to start over")
    tensors = load_file(str(weights_path))
    device = next(editor.parameters()).device
    editor.load_state_dict({k.removeprefix("editor."): v.to(device) for k, v in tensors.items() if k.startswith("editor.")})
    best_state = {k.removeprefix("best."): v.to(device) for k, v in tensors.items() if k.startswith("best.")}
    _load_optimizer(optimizer, {k: v.to(device) for k, v in tensors.items()}, state["optimizer"])
    return TrainingState(best_state, state["step"], state["best_score"], state["bad_validations"],
                         state["elapsed_seconds"])
