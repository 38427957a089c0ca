"""Model adapters, one file per family, selected from ``model.config.model_type``.

To add a family: write ``editors/adapters/<family>.py`` with a :class:`ModelAdapter` subclass
(usually a :class:`~editors.adapters.chat.ChatTemplateAdapter` naming its modules) and add it to
``ADAPTERS`` below.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from editors.adapters.base import EncodedBatch, ModelAdapter, Query
from editors.adapters.blip2 import Blip2Adapter
from editors.adapters.idefics3 import Idefics3Adapter
from editors.adapters.llava import LlavaAdapter
from editors.adapters.llava_next import LlavaNextAdapter
from editors.adapters.qwen2_vl import Qwen2VLAdapter

ADAPTERS: dict[str, type[ModelAdapter]] = {
    adapter.family: adapter
    for adapter in (LlavaAdapter, Blip2Adapter, Qwen2VLAdapter, Idefics3Adapter, LlavaNextAdapter)
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


def adapter_class(model_type: str) -> type[ModelAdapter]:
    """The adapter handling ``config.model_type`` ``model_type``."""
    for adapter in ADAPTERS.values():
        if model_type in adapter.model_types:
            return adapter
    known = sorted(t for adapter in ADAPTERS.values() for t in adapter.model_types)
    raise ValueError(f"no model adapter for model_type {model_type!r}; known model types: {', '.join(known)}")


def adapter_for(model: nn.Module, processor: Any) -> ModelAdapter:
    """Wrap a loaded model and its processor in the adapter of the model's family."""
    config = getattr(model, "config", None)
    if config is None or not getattr(config, "model_type", None):
        raise ValueError(f"{type(model).__name__} has no config.model_type to choose a model adapter from")
    return adapter_class(config.model_type)(model, processor)


def model_family(model: str | Path) -> str:
    """The adapter family of the model at ``model``, read from its config (no weights loaded)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(model))
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"model {str(model)!r}: cannot load its config ({error})") from None
    return adapter_class(config.model_type).family


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
    device_map: str | dict[str, Any] | None = None, max_memory: dict[int | str, int | str] | None = None,
) -> ModelAdapter:
    """Load a model and its processor (local directory or hub id) and wrap them in their adapter.

    ``device_map`` (``"auto"`` or accelerate's ``{module name: device}``, ``max_memory`` bounding
    each device) spreads a model larger than one device over the GPUs, the CPU and the disk; the
    adapter's :attr:`~ModelAdapter.device` is then where the input embeddings live."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    device = check_device(device)
    source = str(path_or_hub_id)
    is_hub_id = source.count("/") == 1 and not source.startswith((".", "/"))
    if not Path(source).exists() and not is_hub_id:
        raise FileNotFoundError(f"model {source!r}: no such directory, and not a hub id (owner/name)")
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"model {source!r}: cannot load its config ({error})") from None
    # Refuse an unknown family before loading any weights.
    adapter = adapter_class(config.model_type)
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; e.g. float32, bfloat16, float16")
        dtype = getattr(torch, dtype)
    if device_map is None:
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype or torch.float32)
        model.to(device)
    else:
        from kebench_hf.paths import cache_dir

        offload = cache_dir() / "offload" / hashlib.sha256(source.encode()).hexdigest()[:16]
        model = AutoModelForImageTextToText.from_pretrained(
            source, dtype=dtype or torch.float32, device_map=device_map, max_memory=max_memory, offload_folder=str(offload)
        )
    model.eval()
    load_processor = getattr(adapter, "load_processor", AutoProcessor.from_pretrained)
    return adapter(model, load_processor(source))


__all__ = ["ADAPTERS", "EncodedBatch", "ModelAdapter", "Query", "adapter_class", "adapter_for", "load_adapter", "model_family",
           "parse_max_memory"]
