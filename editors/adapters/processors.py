"""Loading a family's processor where its video processor cannot be built.

Many image-text-to-text processors (LLaVA-OneVision, Qwen3-VL, InternVL, ...) also hold a video
processor, which needs torchvision; without it ``AutoProcessor`` fails although images need none of
it. :func:`image_only` makes the same processor class without the video processor (same text and
image processing, saved under the real class name so that ``AutoProcessor`` loads the real one
where it can), and :func:`load_processor` falls back to it.
"""

from __future__ import annotations

import inspect
import json
from functools import cache
from typing import Any

import transformers
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, ProcessorMixin
from transformers.utils import cached_file, is_torchvision_available

#: processor_config.json entries that are sub-processors or bookkeeping, not constructor options
_NOT_OPTIONS = ("processor_class", "image_processor", "video_processor", "auto_map", "chat_template")


@cache
def image_only(processor_class: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """``processor_class`` without its ``video_processor`` (the other arguments unchanged).

    For the processors whose ``__init__`` passes its sub-processors on as ``image_processor,
    tokenizer, video_processor`` (LLaVA-OneVision, Qwen2/3-VL, InternVL, ...): transformers pairs them
    with the sub-processors the signature names, so the trailing ``None`` drops out.
    """

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        processor_class.__init__(self, *args, video_processor=None, **kwargs)

    # transformers reads a processor's sub-processors and saved options from its __init__ signature
    signature = inspect.signature(processor_class.__init__)
    __init__.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for name, p in signature.parameters.items() if name != "video_processor"]
    )
    return type(processor_class.__name__, (processor_class,), {
        "__init__": __init__,
        "__module__": __name__,
        "__doc__": f"{processor_class.__name__} without its video processor (so without torchvision).",
    })


def _processor_config(source: str) -> dict[str, Any]:
    path = cached_file(source, "processor_config.json", _raise_exceptions_for_missing_entries=False)
    if path is None:
        return {}
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def _chat_template(source: str) -> str | None:
    path = cached_file(source, "chat_template.jinja", _raise_exceptions_for_missing_entries=False)
    if path is None:
        return None
    with open(path, encoding="utf-8") as file:
        return file.read()


def load_processor(source: str) -> Any:
    """The processor saved at ``source``: ``AutoProcessor``'s, or where that needs a video processor
    that cannot be built here, the same class without it (:func:`image_only`)."""
    config = _processor_config(source)
    processor_class = getattr(transformers, str(config.get("processor_class")), None)
    needs_video = isinstance(processor_class, type) and "video_processor" in processor_class.get_attributes()
    if is_torchvision_available() or not needs_video:
        return AutoProcessor.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    options = {key: value for key, value in config.items() if key not in _NOT_OPTIONS}
    return image_only(processor_class)(
        image_processor=AutoImageProcessor.from_pretrained(source),
        tokenizer=tokenizer,
        chat_template=_chat_template(source) or tokenizer.chat_template,
        **options,
    )
