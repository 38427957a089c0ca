"""A generated multimodal knowledge graph (the "world") and the KEBench data built from it."""

from .build import SCALES, build_world

__all__ = ["SCALES", "build_world"]
