"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): LLaVA with any-resolution image tiles.

Same prompt format and modules as LLaVA-1.5; the processor adds ``image_sizes`` and a variable
number of image tokens per image, which the shared encoding handles as it comes.
"""

from __future__ import annotations

from editors.adapters.llava import LlavaAdapter


class LlavaNextAdapter(LlavaAdapter):
    family = "llava-next"
    model_types = ("llava_next",)
