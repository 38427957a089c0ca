"""The registry of editing methods: name -> ``"module:Class"``, imported on first use.

Adding a method = one module with a config dataclass + an :class:`EditMethod` subclass, and one
line here.
"""

from __future__ import annotations

import importlib
from typing import Any

from editors.methods.base import AppliedEdit, EditMethod, MethodConfig

METHODS: dict[str, str] = {
    "none": "editors.methods.none:NoEdit",
    "ft-vision": "editors.methods.ft_vision:FTVision",
    "ft-llm": "editors.methods.ft_llm:FTLLM",
    "ike": "editors.methods.ike:IKE",
    "ke": "editors.methods.ke:KE",
    "serac": "editors.methods.serac:SERAC",
    "mend": "editors.methods.mend:MEND",
    "lora": "editors.methods.lora:LoRA",
    "grace": "editors.methods.grace:GRACE",
    "wise": "editors.methods.wise:WISE",
}


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> type[EditMethod]:
    """The method class registered as ``name``; unknown names are a one-line error."""
    if name not in METHODS:
        raise ValueError(f"unknown editing method {name!r}; known methods: {', '.join(METHODS)}")
    module, _, attribute = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def make_method(name: str, options: dict[str, Any]) -> EditMethod:
    """The method ``name`` with ``options`` over its config's defaults (values may be ``--set`` text)."""
    cls = get_method(name)
    return cls(cls.config_class.from_dict(options) if options else None)


__all__ = ["METHODS", "AppliedEdit", "EditMethod", "MethodConfig", "get_method", "make_method", "method_names"]
