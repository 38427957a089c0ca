"""The machine a run runs on: seeding, the accelerator's name and the run's peak memory."""

from __future__ import annotations

import platform
import random
import resource

import numpy as np
import torch


def on_cuda(device: str) -> bool:
    return device.startswith("cuda") and torch.cuda.is_available()


def reset_peak_memory(device: str) -> None:
    """Start counting the peak from here (a run's peak, not the process's); CPU: the process's RSS."""
    if on_cuda(device):
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mib(device: str) -> float:
    if on_cuda(device):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_name(device: str) -> str:
    """The accelerator's name (e.g. ``NVIDIA H100 80GB HBM3``), else the CPU architecture."""
    if on_cuda(device):
        return torch.cuda.get_device_name(torch.device(device))
    return platform.machine()


def package_versions() -> dict[str, str]:
    """The versions a result depends on (run.json's and edits.json's ``versions``)."""
    import datasets
    import safetensors
    import transformers

    import kebench_hf

    return {"kebench_hf": kebench_hf.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__, "safetensors": safetensors.__version__,
            "python": platform.python_version()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
