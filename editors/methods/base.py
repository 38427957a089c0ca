"""The interface every editing method implements, and the pieces most methods share.

A method is a small module: a config dataclass (paper defaults) and an :class:`EditMethod`
subclass registered in :mod:`editors.methods`. The engine drives it like this::

    method = get_method(name)(config)
    method.prepare(adapter, train_cases, editor_dir)    # once: index / train / load
    for case in cases:
        edit = method.apply(adapter, case)              # change weights in place, or queries
        readouts = edit.score(queries, topk)            # teacher-forced readouts, batched
        answers = edit.generate(queries)                # greedy answers
        edit.restore()                                  # the model is bit-identical again

With ``--sequential N`` the engine applies N cases' edits one after the other without restoring,
scores all N cases through the *last* :class:`AppliedEdit` (so an applied edit must reflect the
cumulative state: weights are cumulative by nature, a memory-based method keeps its memory on
the method object), then restores the N edits in reverse order.

Methods never ask which model they edit: everything model-specific comes from the adapter
(``adapter.mlp(-1)``, ``adapter.vision_side_module()``, ``adapter.encode``...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from editors.adapters.base import EncodedBatch, ModelAdapter, Query
from editors.cases import CaseSequence, EditCase
from editors.forward import Readout, TopLayers, model_logits, readouts, score_queries
from editors.losses import answer_nll_token_mean

_TRUE, _FALSE, _NONE = ("true", "1", "yes"), ("false", "0", "no"), ("none", "null")


def _typed(kind: Any, value: Any) -> Any:
    """``value`` as type ``kind`` (a field annotation); text (from ``--set``) is parsed. Raises
    ``TypeError``/``ValueError`` when it is not one."""
    options = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else ()
    if options:
        if type(None) in options and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE)):
            return None
        for option in (o for o in options if o is not type(None)):
            with contextlib.suppress(TypeError, ValueError):
                return _typed(option, value)
        raise ValueError(value)
    if typing.get_origin(kind) is tuple:
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [part for part in text.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise TypeError(value)
        return tuple(_typed(typing.get_args(kind)[0], item) for item in value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in (*_TRUE, *_FALSE):
            return value.strip().lower() in _TRUE
        raise TypeError(value)
    if kind in (int, float):
        if isinstance(value, bool):
            raise TypeError(value)
        if isinstance(value, str):
            return kind(value.strip())
        if isinstance(value, int) or (kind is float and isinstance(value, float)):
            return kind(value)
        raise TypeError(value)
    if kind is str:
        if not isinstance(value, str):
            raise TypeError(value)
        return value
    return value


def _kind_name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


@dataclasses.dataclass
class MethodConfig:
    """Base of every method's hyper-parameters; subclasses are dataclasses with paper defaults."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MethodConfig:
        """The config with ``values`` over the defaults, each read as its field's type (``--set``
        gives text: ``lr=5e-3``, ``steps=10``, ``layers=-3,-2,-1``, ``stop_loss=none``); an unknown
        setting or a value of the wrong type is a one-line error naming it."""
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} setting(s) {unknown}; known: {sorted(known)}")
        typed = {}
        for name, value in values.items():
            try:
                typed[name] = _typed(hints[name], value)
            except (TypeError, ValueError, json.JSONDecodeError):
                raise ValueError(
                    f"{cls.__name__} setting {name}={value!r}: expected {_kind_name(hints[name])}"
                ) from None
        return cls(**typed)


class AppliedEdit:
    """One applied edit: how the edited model answers, and how to undo the edit.

    The default scores queries on the adapter's (edited) model as they are. Subclasses change
    the queries (:meth:`rewrite`, e.g. IKE's in-context prompt) or the whole scoring path
    (override :meth:`score` / :meth:`generate`, e.g. SERAC's routing).
    """

    def __init__(self, adapter: ModelAdapter, snapshot: WeightSnapshot | None = None) -> None:
        self.adapter = adapter
        self.snapshot = snapshot

    def rewrite(self, queries: list[Query]) -> list[Query]:
        return queries

    def score(
        self, queries: list[Query], topk: list[int], encoded: EncodedBatch | None = None, top: TopLayers | None = None,
        positions: list[str] | None = None,
    ) -> list[Readout]:
        """Teacher-forced readouts of ``queries`` in one batched forward (see :mod:`editors.forward`;
        ``positions``: the positions each query's top-k is kept over, :func:`~editors.forward.readouts`).

        ``encoded`` is the engine's encoding of ``queries`` as given, and ``top`` (when the method
        declares :meth:`EditMethod.first_edited_layer`) the top layers re-runnable from inputs
        captured before the edit; both are reused when :meth:`rewrite` leaves the queries as they
        are, so inputs are tokenized once and frozen layers run once per query.
        """
        rewritten = self.rewrite(queries)
        if encoded is None or rewritten is not queries:
            return score_queries(self.adapter, rewritten, topk, positions)
        with torch.no_grad():
            if top is not None:
                return readouts(top.logits(), 0, encoded, topk, positions)
            return readouts(*model_logits(self.adapter, encoded), encoded, topk, positions)

    def generate(self, queries: list[Query], max_new_tokens: int = 16) -> list[str]:
        return self.adapter.generate(self.rewrite(queries), max_new_tokens=max_new_tokens)

    def restore(self) -> None:
        """Undo the edit: copies back exactly the tensors the method touched."""
        if self.snapshot is not None:
            self.snapshot.restore()


class EditMethod(ABC):
    """An editing method. Subclasses set ``name``, ``config_class`` and implement :meth:`apply`."""

    #: registry key, e.g. "ft-llm"
    name: ClassVar[str]
    #: the method's config dataclass (defaults = the paper's reference settings)
    config_class: ClassVar[type[MethodConfig]]
    #: True when :meth:`prepare` trains something on the train split (KE, SERAC, MEND)
    requires_training: ClassVar[bool] = False
    #: whether ``--sequential N`` (N edits applied cumulatively) makes sense for this method
    supports_sequential: ClassVar[bool] = True
    #: True when the method's edits reach the model only through an image (FT on the vision side): a
    #: text-only fact (edit-one-hop's second edit) is then made on the case's edit image, as the
    #: reference's ``edit_twice_img`` does for it
    edits_through_image: ClassVar[bool] = False
    #: True when the edit lives in the prompt (IKE): the presets compare its locality elsewhere
    edits_prompt: ClassVar[bool] = False

    @property
    def stale_baseline(self) -> bool:
        """Whether the engine keeps an edit applied through the next case's pre-edit pass and undoes
        it only then (a reference bug reproduced on request, see :class:`FineTuneConfig`)."""
        return False

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()

    def prepare(self, adapter: ModelAdapter, train: CaseSequence, editor_dir: Path | None = None) -> None:  # noqa: B027
        """Called once before the first edit with the train split of the same data.

        IKE indexes its demonstrations here. A trained method loads its editor from
        ``editor_dir`` when given, else trains (or loads a cached training) on ``train``.
        The default does nothing.
        """

    @abstractmethod
    def apply(self, adapter: ModelAdapter, case: EditCase) -> AppliedEdit:
        """Make ``case``'s edit; the returned edit scores queries and restores the model."""

    def apply_all(self, adapter: ModelAdapter, cases: list[EditCase]) -> list[AppliedEdit]:
        """Make several edits that hold together (edit-one-hop's two), in order, each on the model the
        previous one left; the last returned answers for all of them, restoring goes in reverse.
        All or nothing: when one fails, those before it are undone before the error propagates."""
        edits: list[AppliedEdit] = []
        try:
            for case in cases:
                edits.append(self.apply(adapter, case))
        except BaseException:
            for edit in reversed(edits):
                edit.restore()
            raise
        return edits

    def target_case(self, case: EditCase) -> EditCase:
        """``case`` as its queries are scored after this method's edit: by default, expecting the new answer."""
        return case

    def first_edited_layer(self, adapter: ModelAdapter) -> int | None:
        """The lowest decoder layer this method's edits can change, when every change is confined to
        ``decoder_layers()[layer:]`` (and what follows them); ``None`` (the default) otherwise.

        Declaring it lets the engine compute the layers below once per query, in the pre-edit pass,
        and score the edited model by running only the layers from there up.
        """
        return None

    def run_info(self) -> dict[str, Any]:
        """What run.json should record beyond the config (e.g. which embedder was used)."""
        return {}


class WeightSnapshot:
    """Copies of exactly the parameters a method is about to change, to restore bit-for-bit."""

    def __init__(self, params: Iterable[nn.Parameter]) -> None:
        # each copy stays on its weight's device (a device_map spreads weights over several)
        self.saved = [(param, param.detach().clone()) for param in params]
        if any(param.device.type == "meta" for param, _ in self.saved):
            raise ValueError("a weight this method edits is offloaded to the disk (device_map): give its layer a "
                             "device (--max-memory) so that the edit can change and restore it")

    def restore(self) -> None:
        with torch.no_grad():
            for param, value in self.saved:
                param.copy_(value)


@contextlib.contextmanager
def trainable(params: list[nn.Parameter]) -> Iterator[list[nn.Parameter]]:
    """Enables gradients on ``params`` only (the engine freezes the whole model up front)."""
    for param in params:
        param.requires_grad_(True)
    try:
        yield params
    finally:
        for param in params:
            param.requires_grad_(False)
            param.grad = None


def input_width(module: nn.Module) -> int:
    """The widest ``in_features`` among the linear layers of ``module``."""
    widths = [child.in_features for child in module.modules() if isinstance(child, nn.Linear)]
    if not widths:
        raise ValueError(f"{type(module).__name__} has no linear layer to fine-tune")
    return max(widths)


#: optimizers FT can use, torch's defaults apart from the lr (the reference's FT: AdamW)
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def fine_tune(params: list[nn.Parameter], loss_fn: Callable[[], torch.Tensor], steps: int, lr: float,
              stop_loss: float | None, optimizer: str = "adam") -> int:
    """``optimizer`` on ``params`` for at most ``steps`` steps, stopping once the loss is below
    ``stop_loss`` (None: every step, as the reference's FT); returns the steps taken.

    Adam steps float32 copies of low-precision parameters and writes them back rounded: a bfloat16
    weight of 0.05 cannot move by the reference's lr of 1e-4 (half its spacing is 1.2e-4), so
    stepping it directly would drop the edit. Float32 parameters are stepped in place.
    """
    masters = [param.detach().float().requires_grad_(True) for param in params]
    with trainable(params):
        steps_with = OPTIMIZERS[optimizer](masters, lr=lr)
        for step in range(steps):
            loss = loss_fn()
            if stop_loss is not None and loss.item() < stop_loss:
                return step
            loss.backward()
            with torch.no_grad():
                for param, master in zip(params, masters, strict=True):
                    master.grad = None if param.grad is None else param.grad.float()  # None: Adam skips it
                    param.grad = None
                steps_with.step()
                for param, master in zip(params, masters, strict=True):
                    if master.data_ptr() != param.data_ptr():
                        param.copy_(master)
    return steps


@dataclasses.dataclass
class FineTuneConfig(MethodConfig):
    """At most ``steps`` steps of ``optimizer`` at ``lr`` on one module (preset ``vlkeb``: the
    reference's recipe, see :mod:`editors.presets`).

    The reference lr is for LLaVA-1.5-7B. An Adam step moves every weight by about lr, so its
    effect on the output grows with the module's input width: the lr applied is
    ``lr * reference_width / width`` (None: ``lr`` as is). Training stops once the edit's mean
    answer NLL is below ``stop_loss`` (None: never; the reference takes every step, and 0.5
    already makes the new answer the top token and changes far less, see docs/methods.md).
    ``parameters``: ``module`` trains every parameter of the method's module, ``reference`` the
    weights the reference's FT names (the adapter's ``reference_*_parameters``).
    ``reference_stale_baseline`` reproduces a bug of the reference (``trainer/algs/FT.py``
    restores the weights only when the next edit starts): case i's pre-edit outputs are read from
    the model still edited on case i-1.
    """

    steps: int = 10
    lr: float = 1e-4
    reference_width: int | None = None
    stop_loss: float | None = 0.5
    optimizer: str = "adam"
    parameters: str = "module"
    reference_stale_baseline: bool = False

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
        if self.parameters not in ("module", "reference"):
            raise ValueError(f"parameters {self.parameters!r}: expected module or reference")
        if self.steps < 0 or self.lr <= 0:
            raise ValueError(f"steps must be >= 0 and lr > 0, got steps={self.steps}, lr={self.lr}")


class FineTuneMethod(EditMethod):
    """Fine-tune the module :meth:`trained_module` names on the edit query, then restore it."""

    config: FineTuneConfig

    @abstractmethod
    def trained_module(self, adapter: ModelAdapter) -> nn.Module:
        """The module whose parameters the edit trains."""

    @abstractmethod
    def reference_parameters(self, adapter: ModelAdapter) -> list[nn.Parameter]:
        """The part of :meth:`trained_module` that the reference's FT trains."""

    @abstractmethod
    def edit_forward(self, adapter: ModelAdapter, batch: EncodedBatch) -> Any:
        """An object whose ``logits()`` runs the edit query through the (changing) model."""

    @property
    def stale_baseline(self) -> bool:
        return self.config.reference_stale_baseline

    def apply(self, adapter: ModelAdapter, case: EditCase) -> AppliedEdit:
        module = self.trained_module(adapter)
        if self.config.parameters == "reference":
            params = self.reference_parameters(adapter)
        else:
            params = list(module.parameters())
        snapshot = WeightSnapshot(params)
        batch = adapter.encode([case.edit_query]).to(adapter.device)
        model = self.edit_forward(adapter, batch)
        lr = self.config.lr
        if self.config.reference_width:
            lr *= self.config.reference_width / input_width(module)
        fine_tune(params, lambda: answer_nll_token_mean(model.logits(), batch), self.config.steps, lr, self.config.stop_loss,
                  self.config.optimizer)
        return AppliedEdit(adapter, snapshot)
