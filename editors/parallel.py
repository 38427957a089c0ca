"""Data-parallel runs on ``accelerate``: which process edits which cases, on which device.

``accelerate launch -m kebench_hf.cli run ...`` (or ``kebench run --processes N``, which starts the
same through accelerate's launcher) runs one ``kebench run`` per process. :class:`ProcessGroup`
reads the launch from accelerate's ``PartialState`` (gloo on the CPU); each process edits every
N-th case of the split (case ``i`` goes to process ``i mod N``: per-case seeds make each edit the
same as in a one-process run), on ``cuda:LOCAL_RANK`` or the CPU. Writing the shards and merging
them is :class:`editors.run_dir.Run`'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)


@dataclass
class ProcessGroup:
    """This process's place among the run's processes (one process: index 0 of 1)."""

    index: int = 0
    count: int = 1
    local_index: int = 0
    state: Any = None

    @classmethod
    def current(cls, device: str) -> ProcessGroup:
        """The launch this process is part of: accelerate's, when launched with several processes."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from accelerate import PartialState

        state = PartialState(cpu=not device.startswith("cuda"))
        return cls(state.process_index, state.num_processes, state.local_process_index, state)

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def device(self, device: str) -> str:
        """This process's device: ``cuda:LOCAL_RANK`` for a CUDA run of several processes, else ``device``."""
        if self.count > 1 and device.startswith("cuda"):
            # more processes than GPUs: they share them in turn
            return f"cuda:{self.local_index % max(1, torch.cuda.device_count())}"
        return device

    def share(self, case_ids: Sequence[str]) -> list[str]:
        """The cases this process edits: every ``count``-th, from its index."""
        return list(case_ids[self.index :: self.count])

    def wait(self) -> None:
        """Every process reaches this point before any goes on."""
        if self.state is not None:
            self.state.wait_for_everyone()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """The main process runs the block first (e.g. trains and caches an editor), the others after
        it (loading what it left)."""
        if self.state is None:
            yield
            return
        with self.state.main_process_first():
            yield


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(processes: int, arguments: list[str]) -> int:
    """``accelerate launch`` of ``python -m kebench_hf ARGUMENTS`` (the CLI) in ``processes`` processes on
    this machine (torch's elastic launcher underneath); a free port for the gloo / NCCL rendezvous."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    if processes < 1:
        raise ValueError(f"--processes must be >= 1, got {processes}")
    options = ["--multi_gpu", "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--num_cpu_threads_per_process", os.environ.get("OMP_NUM_THREADS", "1"),
               "--main_process_port", str(_free_port()), "--module", "kebench_hf", *arguments]
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        # --multi_gpu names torch's launcher; without CUDA each process joins a gloo group on the CPU
        launch_command(launch_command_parser().parse_args(options))
    except ChildFailedError as error:
        failed = ", ".join(f"process {rank} (exit {failure.exitcode})" for rank, failure in error.failures.items())
        logger.error("kebench run: %s failed; --resume continues the run where each process stopped", failed)
        return 1
    return 0
