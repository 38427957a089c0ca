"""KEBench for the Hugging Face ecosystem."""

__version__ = "0.1.0"

# Imported on first use, so that ``import kebench_hf`` does not pay for importing datasets.
_LAZY = {"load_kebench": "kebench_hf.builder", "dataset_fingerprint": "kebench_hf.builder"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kebench_hf' has no attribute {name!r}")
