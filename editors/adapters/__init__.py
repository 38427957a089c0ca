"""Model adapters, one file per family, selected from ``model.config.model_type``.

To add a family: write ``editors/adapters/<family>.py`` with a :class:`ModelAdapter` subclass
(usually a :class:`~editors.adapters.chat.ChatTemplateAdapter` naming its modules) and add it to
``ADAPTERS`` below; or, outside this repository, publish it as a plugin: an entry point of group
``kebench.adapters`` naming the class (``[project.entry-points."kebench.adapters"]``). A model_type
with neither is served by the generic adapter (:mod:`editors.adapters.generic`) when it is an
image-text-to-text model of transformers whose parts it can find.
"""

from __future__ import annotations

import hashlib
import logging
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch
from torch import nn

from editors.adapters.base import EncodedBatch, ModelAdapter, Query
from editors.adapters.blip2 import Blip2Adapter
from editors.adapters.gemma3 import Gemma3Adapter
from editors.adapters.generic import HOW_TO_ADD, GenericAdapter, generic_adapter
from editors.adapters.idefics3 import Idefics3Adapter
from editors.adapters.llava import LlavaAdapter
from editors.adapters.llava_next import LlavaNextAdapter
from editors.adapters.llava_onevision import LlavaOnevisionAdapter
from editors.adapters.minigpt4 import MiniGPT4Adapter
from editors.adapters.qwen2_vl import Qwen2VLAdapter
from editors.adapters.qwen3_vl import Qwen3VLAdapter

logger = logging.getLogger(__name__)

#: the entry-point group through which installed packages add adapters
PLUGIN_GROUP = "kebench.adapters"

ADAPTERS: dict[str, type[ModelAdapter]] = {
    adapter.family: adapter
    for adapter in (LlavaAdapter, Blip2Adapter, Qwen2VLAdapter, Idefics3Adapter, LlavaNextAdapter,
                    LlavaOnevisionAdapter, Qwen3VLAdapter, Gemma3Adapter, MiniGPT4Adapter)
}


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, or a ``ValueError`` saying why this machine cannot use it."""
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {str(device)!r}; e.g. cpu, cuda, cuda:1, mps") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: no CUDA device here (torch {torch.__version__}); use cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r}: MPS is not available here; use cpu")
    return resolved


def plugin_adapters() -> dict[str, type[ModelAdapter]]:
    """The adapters installed packages register in the ``kebench.adapters`` entry-point group, by
    family (a plugin may not replace a family of ours; one that fails to load is a one-line error)."""
    found: dict[str, type[ModelAdapter]] = {}
    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            adapter = entry.load()
        except Exception as error:  # noqa: BLE001 - a broken plugin is named, whatever it raised
            raise ValueError(f"adapter plugin {entry.name!r} ({entry.value}) does not load: {error}") from None
        if not (isinstance(adapter, type) and issubclass(adapter, ModelAdapter)):
            raise ValueError(f"adapter plugin {entry.name!r} ({entry.value}) is not a ModelAdapter subclass")
        if adapter.family in ADAPTERS:
            logger.warning("adapter plugin %r: family %r is built in; the plugin is ignored", entry.name, adapter.family)
            continue
        found[adapter.family] = adapter
    return found


def _image_text_to_text_types() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def adapter_class(model_type: str, config: Any = None) -> type[ModelAdapter]:
    """The adapter handling ``config.model_type`` ``model_type``: ours, a plugin's, or the generic one
    for transformers' other image-text-to-text models. With the ``config``, families sharing a
    model_type (BLIP-2 and MiniGPT-4) are told apart; without it the first registered is taken."""
    registered = {**plugin_adapters(), **ADAPTERS}
    for adapter in registered.values():
        if model_type in adapter.model_types and (config is None or adapter.handles(config)):
            return adapter
    if model_type in _image_text_to_text_types():
        return generic_adapter(model_type)
    known = sorted(t for adapter in registered.values() for t in adapter.model_types)
    raise ValueError(f"no model adapter for model_type {model_type!r} (and it is not an image-text-to-text model "
                     f"of transformers); known model types: {', '.join(known)}; {HOW_TO_ADD}")


def adapter_for(model: nn.Module, processor: Any) -> ModelAdapter:
    """Wrap a loaded model and its processor in the adapter of the model's family."""
    config = getattr(model, "config", None)
    if config is None or not getattr(config, "model_type", None):
        raise ValueError(f"{type(model).__name__} has no config.model_type to choose a model adapter from")
    return adapter_class(config.model_type, config)(model, processor)


def load_config(source: str, trust_remote_code: bool = False) -> Any:
    """The model's config; one that needs its repository's own code only with ``trust_remote_code``."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except ValueError as error:
        if "trust_remote_code" in str(error) and not trust_remote_code:
            raise ValueError(f"model {source!r} runs code from its own repository; pass --trust-remote-code "
                             f"(trust_remote_code=True) if you trust it") from None
        raise FileNotFoundError(f"model {source!r}: cannot load its config ({error})") from None
    except OSError as error:
        raise FileNotFoundError(f"model {source!r}: cannot load its config ({error})") from None


def model_family(model: str | Path, trust_remote_code: bool = False) -> str:
    """The adapter family of the model at ``model``, read from its config (no weights loaded)."""
    config = load_config(str(model), trust_remote_code)
    return adapter_class(config.model_type, config).family


def parse_max_memory(text: str) -> dict[int | str, int | str]:
    """``--max-memory 0=20GiB,1=20GiB,cpu=60GiB`` -> accelerate's ``max_memory`` (GPU indices and plain
    byte counts as ints)."""
    limits: dict[int | str, int | str] = {}
    for part in text.split(","):
        device, sep, size = part.partition("=")
        device, size = device.strip(), size.strip()
        if not sep or not device or not size:
            raise ValueError(f"--max-memory expects DEVICE=SIZE[,DEVICE=SIZE...] (e.g. 0=20GiB,cpu=60GiB), got {text!r}")
        limits[int(device) if device.isdigit() else device] = int(size) if size.isdigit() else size
    return limits


def load_adapter(
    path_or_hub_id: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False, device_map: str | dict[str, Any] | None = None,
    max_memory: dict[int | str, int | str] | None = None,
) -> ModelAdapter:
    """Load a model and its processor (local directory or hub id) and wrap them in their adapter.

    ``trust_remote_code`` lets a model whose repository ships its own code (``auto_map``) run it.
    ``device_map`` (``"auto"`` or accelerate's ``{module name: device}``, ``max_memory`` bounding
    each device) spreads a model larger than one device over the GPUs, the CPU and the disk; the
    adapter's :attr:`~ModelAdapter.device` is then where the input embeddings live."""
    from kebench_hf.hub import is_hub_id

    device = check_device(device)
    source = str(path_or_hub_id)
    if not Path(source).exists() and not is_hub_id(source):
        raise FileNotFoundError(f"model {source!r}: no such directory, and not a hub id (owner/name)")
    config = load_config(source, trust_remote_code)
    # Refuse an unknown family before loading any weights.
    adapter = adapter_class(config.model_type, config)
    adapter.check_model(config)
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; e.g. float32, bfloat16, float16")
        dtype = getattr(torch, dtype)
    if device_map is None:
        model = adapter.load_model(source, dtype or torch.float32, trust_remote_code)
        model.to(device)
    else:
        from kebench_hf.paths import cache_dir

        offload = cache_dir() / "offload" / hashlib.sha256(source.encode()).hexdigest()[:16]
        model = adapter.load_model(source, dtype or torch.float32, trust_remote_code, device_map=device_map,
                                   max_memory=max_memory, offload_folder=str(offload))
    model.eval()
    return adapter(model, adapter.load_processor(source, trust_remote_code))


__all__ = ["ADAPTERS", "PLUGIN_GROUP", "EncodedBatch", "GenericAdapter", "ModelAdapter", "Query", "adapter_class",
           "adapter_for", "load_adapter", "load_config", "model_family", "parse_max_memory", "plugin_adapters"]
