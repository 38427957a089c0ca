"""Editing methods for vision-language models, and the benchmark loop that scores them.

``editors.edit(model, processor, edits, method=...)`` edits a model for use (:mod:`editors.editing`);
the names below are imported on first use, so that ``import editors`` does not load torch.
"""

_LAZY = ("edit", "restore", "save_edited", "read_facts", "EditedModel", "EditRecord", "Fact")


def __getattr__(name: str):
    if name in _LAZY:
        from editors import editing

        return getattr(editing, name)
    raise AttributeError(f"module 'editors' has no attribute {name!r}")
