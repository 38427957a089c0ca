"""Errors the ``kebench`` command line reports in one line.

Kept free of imports so that ``kebench_hf.cli`` can catch them without loading ``huggingface_hub``.
"""

from __future__ import annotations


class HubError(RuntimeError):
    """A hub operation failed for a reason the user can act on (token, network, permissions)."""
