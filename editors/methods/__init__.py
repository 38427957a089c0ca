"""The registry of editing methods: name -> :class:`MethodSpec`, read without importing torch.

A spec says what the CLI, the main job and the benchmarks need to know about a method (trained or
not, sequential or not, its config class, a one-line summary) and where its class is; the class is
imported on first use (:func:`get_method`). Adding a method = one module with a config dataclass +
an :class:`~editors.methods.base.EditMethod` subclass, and one line in :data:`METHODS`. A method
outside this repository registers itself with :func:`register_method`, or from its package's
metadata: an entry point in the group ``kebench.methods`` naming its :class:`MethodSpec`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from editors.methods.base import EditMethod, MethodConfig
    from editors.presets import Preset

#: the entry-point group through which installed packages add methods
ENTRY_POINT_GROUP = "kebench.methods"


@dataclass(frozen=True)
class MethodSpec:
    """A registered method, described without importing it."""

    #: registry key, e.g. "ft-llm" (the class's ``name``)
    name: str
    #: ``"package.module:Class"`` of its :class:`~editors.methods.base.EditMethod` subclass
    method: str
    #: ``"package.module:Class"`` of its config dataclass (the class's ``config_class``)
    config: str
    #: one line: what the method does
    summary: str
    #: whether ``prepare`` trains an editor on the train split, or loads one given with ``--editor``
    #: (``kebench train-editor`` trains it on its own)
    trained: bool = False
    #: whether the method's edits can accumulate (``--sequential N``, ``--sequential-gap G``): the
    #: class's ``supports_sequential``
    sequential: bool = True

    def config_class(self) -> type[MethodConfig]:
        """The method's config dataclass, imported now (without the method's module's own imports
        when the config lives elsewhere)."""
        return _import(self.config)

    def load(self) -> type[EditMethod]:
        """The method's class, imported now; a spec that disagrees with its class is refused."""
        cls = _import(self.method)
        config = self.config_class()
        differences = [f"{field} {ours!r} != class {theirs!r}" for field, ours, theirs in (
            ("name", self.name, getattr(cls, "name", None)),
            ("config", config, getattr(cls, "config_class", None)),
            ("trained", self.trained, getattr(cls, "requires_training", None)),
            ("sequential", self.sequential, getattr(cls, "supports_sequential", None)),
        ) if ours != theirs]
        if differences:
            raise ValueError(f"method {self.name!r}: its registry entry and {self.method} differ: "
                             + "; ".join(differences))
        return cls


def _import(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("none", "editors.methods.none:NoEdit", "editors.methods.none:NoEditConfig",
               "no edit: the unedited model's scores, the baseline"),
    MethodSpec("ft-vision", "editors.methods.ft_vision:FTVision", "editors.methods.ft_vision:FTVisionConfig",
               "fine-tune the vision-side module (projector, Q-Former) on the edit query"),
    MethodSpec("ft-llm", "editors.methods.ft_llm:FTLLM", "editors.methods.ft_llm:FTLLMConfig",
               "fine-tune the MLP of the language model's last decoder layer on the edit query"),
    MethodSpec("ike", "editors.methods.ike:IKE", "editors.methods.ike:IKEConfig",
               "in-context editing: the new fact and retrieved demonstrations in the prompt",
               sequential=False),
    MethodSpec("ke", "editors.methods.ke:KE", "editors.methods.ke:KEConfig",
               "Knowledge Editor: a hypernetwork turns the edit gradient into a weight update", trained=True),
    MethodSpec("serac", "editors.methods.serac:SERAC", "editors.methods.serac:SERACConfig",
               "edit memory, scope classifier and counterfactual model; the base model unchanged", trained=True),
    MethodSpec("mend", "editors.methods.mend:MEND", "editors.methods.mend:MENDConfig",
               "a learned low-rank transform of the edit gradient", trained=True),
    MethodSpec("lora", "editors.methods.lora:LoRA", "editors.methods.lora:LoRAConfig",
               "a low-rank adapter (peft) on the top MLPs, trained on the edit, unloaded on restore"),
    MethodSpec("grace", "editors.methods.grace:GRACE", "editors.methods.grace:GRACEConfig",
               "a key-value codebook with deferral radii at one layer's MLP output"),
    MethodSpec("wise", "editors.methods.wise:WISE", "editors.methods.wise:WISEConfig",
               "a side memory beside one FFN, routed by activation, sharded and merged"),
)}


#: whether the entry points of ENTRY_POINT_GROUP were read into METHODS
_discovered = False


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to the registry (a method defined outside this repository); registering the same
    spec twice is harmless, another spec under a taken name is an error."""
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"register_method expects a MethodSpec, got {type(spec).__name__}")
    known = METHODS.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"method name {spec.name!r} is taken by {known.method}")
    METHODS[spec.name] = spec
    return spec


def _registry() -> dict[str, MethodSpec]:
    """:data:`METHODS`, with the methods of installed packages (entry points) read in once."""
    global _discovered
    if not _discovered:
        _discovered = True
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            spec = entry.load()
            if not isinstance(spec, MethodSpec) or spec.name != entry.name:
                raise ValueError(f"entry point {entry.name} = {entry.value} (group {ENTRY_POINT_GROUP}): "
                                 f"expected the MethodSpec of a method named {entry.name!r}")
            register_method(spec)
    return METHODS


def method_names() -> list[str]:
    """Every registered method, in registry order (the main job runs them all)."""
    return list(_registry())


def trained_method_names() -> list[str]:
    """The methods whose editor is trained (``kebench train-editor``, ``--editor``)."""
    return [name for name, spec in _registry().items() if spec.trained]


def method_spec(name: str) -> MethodSpec:
    """The spec registered as ``name``; unknown names are a one-line error."""
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown editing method {name!r}; known methods: {', '.join(registry)}")
    return registry[name]


def get_method(name: str) -> type[EditMethod]:
    """The method class registered as ``name`` (imported now)."""
    return method_spec(name).load()


def make_method(name: str, options: dict[str, Any]) -> EditMethod:
    """The method ``name`` with ``options`` over its config's defaults (values may be ``--set`` text)."""
    cls = get_method(name)
    return cls(cls.config_class.from_dict(options) if options else None)


def preset_method(preset: Preset, name: str, family: str, options: dict[str, Any]) -> EditMethod:
    """The method ``name`` as ``preset`` runs it on ``family``: the preset's settings, then ``options``
    (``--set``), over the method's defaults. The benchmark and ``editors.edit`` both build their method
    here, so an edit for use gets the hyper-parameters the benchmark scores."""
    return make_method(name, {**preset.settings(name, family), **options})


__all__ = ["ENTRY_POINT_GROUP", "METHODS", "MethodSpec", "get_method", "make_method", "method_names", "method_spec", "preset_method",
           "register_method", "trained_method_names"]
