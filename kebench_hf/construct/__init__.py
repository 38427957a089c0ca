"""The KEBench construction pipeline (paper §3.3) over any knowledge graph in MMKG's layout."""

from .mmkg import KnowledgeGraph, read_mmkg
from .pipeline import ConstructConfig, construct

__all__ = ["ConstructConfig", "KnowledgeGraph", "construct", "read_mmkg"]
