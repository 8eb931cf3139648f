"""One process, or many under ``torchrun``: torch.distributed with NCCL on GPUs and gloo on CPU.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; without
them the run is one process and nothing here talks to another. Only rank 0 writes files; every rank
computes the same loss (all-reduced) so that all stop together on a bad one. If a rank dies, torchrun
stops the others and names the failed rank; ``--resume`` continues from the last checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class Processes:
    """This process's place among the run's processes."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Whether this process writes (rank 0)."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of ``value`` over processes."""
        return self.sum(value) / self.world

    def sum(self, value: float) -> float:
        if self.world == 1:
            return float(value)
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self._reduce_device())
        dist.all_reduce(tensor)
        return float(tensor)

    def gather(self, value) -> list:
        """Every process's ``value`` (picklable plain data), in rank order."""
        if self.world == 1:
            return [value]
        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def broadcast(self, value):
        """Rank 0's ``value`` on every process."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _reduce_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def start(device: str = "auto") -> Processes:
    """Join the process group ``torchrun`` describes (gloo on CPU, NCCL on CUDA), or run alone.

    ``device``: ``auto`` (this process's CUDA device, ``LOCAL_RANK``, where CUDA is available; else CPU),
    ``cpu`` or ``cuda``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError(f"device must be cpu or auto on a machine without CUDA, got {device!r}")
    target = torch.device("cuda", local % max(torch.cuda.device_count(), 1)) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(target)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    return Processes(rank, world, target)
