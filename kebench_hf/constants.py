"""Values shared by the library and the ``kebench`` parser.

They live in this import-free module rather than next to the code that uses them so that building
the parser (``kebench --help``, and every command before it runs) imports neither ``datasets`` nor
``huggingface_hub``. ``kebench_hf.schema``, ``kebench_hf.export`` and ``kebench_hf.hub`` re-export them.
"""

from __future__ import annotations

CONFIGS: dict[str, dict[str, str]] = {
    # config -> {split: release file}
    "edit": {"train": "train.json", "test": "eval.json"},
    "multihop": {"test": "eval_multihop.json"},
    "edit_onehop": {"test": "eval_edit_onehop.json"},
}
DEFAULT_CONFIG = "edit"

#: release records per Parquet shard written by ``kebench export``
DEFAULT_SHARD_SIZE = 1000
#: license an exported dataset card declares unless told otherwise
DEFAULT_LICENSE = "apache-2.0"

#: hub repository types that ``kebench push`` can create
REPO_TYPES = ("dataset", "space", "model")

#: model dtypes ``kebench run`` / ``train-editor`` / ``bench`` load a model in
MODEL_DTYPES = ("float32", "bfloat16", "float16")
