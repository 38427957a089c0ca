"""``none``: no edit at all. The unedited model's scores, the baseline every method is read against.

As the reference's ``test_base_portability.py`` (``multihop_and_sequential`` branch) asks the unedited
model the portability questions, this method leaves the model alone and scores every query: the
edited queries (reliability, T-/I-generality) against the *old* answer, so they say how well the model
knows the fact that the edit replaces; portability (and edit-one-hop) against their usual answers,
so they say how much of it the model answers without any edit; locality is 100 by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from editors.adapters.base import ModelAdapter
from editors.cases import EditCase
from editors.methods.base import AppliedEdit, EditMethod, MethodConfig


@dataclass
class NoEditConfig(MethodConfig):
    """Nothing to set."""


class NoEdit(EditMethod):
    name = "none"
    config_class = NoEditConfig

    def apply(self, adapter: ModelAdapter, case: EditCase) -> AppliedEdit:
        return AppliedEdit(adapter)

    def target_case(self, case: EditCase) -> EditCase:
        return replace(case, alt=case.pred)
