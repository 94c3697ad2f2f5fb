"""Several processes under `torchrun`: who am I, sums over processes, and who writes.

A policy stage under `torchrun --nproc_per_node=N` gives each process a
contiguous slice of every step's prompts (a prompt's whole group stays in one
process). Sampling seeds are per sample, so the slices are exactly the samples
one process would draw. Losses are sums divided by global counts, and
gradients are summed by DDP (which averages, hence the factor `world_size`),
so N processes compute what one process computes for the same global batch.
Only rank 0 writes the run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, items: Sequence) -> list:
        """This process's contiguous slice of `items` (len(items) must divide by the world size)."""
        if len(items) % self.size:
            raise ValueError(
                f"{len(items)} items cannot be split evenly over {self.size} processes; make batch_size a multiple of the process count"
            )
        per = len(items) // self.size
        return list(items[self.rank * per : (self.rank + 1) * per])

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over processes (a copy; the identity in one process)."""
        out = tensor.detach().clone()
        if self.distributed:
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate equal-shaped tensors of all processes along dim 0, in rank order."""
        if not self.distributed:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def init_world(device: torch.device) -> World:
    """The process group torchrun describes in the environment (gloo on CPU, NCCL on CUDA), or one process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives run on this process's GPU
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size())


def current_world() -> World:
    """The world of an already initialised process group, else one process."""
    if dist.is_available() and dist.is_initialized():
        return World(rank=dist.get_rank(), size=dist.get_world_size())
    return World()


def local_device(requested: str) -> torch.device:
    """auto -> this process's CUDA device when there is one, else CPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError('device = "cuda" was requested but torch sees no CUDA device; set the stage\'s device to "auto" or "cpu"')
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def masked_moments(x: torch.Tensor, mask: torch.Tensor, world: World) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of x over mask == 1 across all processes."""
    stats = world.sum(torch.stack([(x * mask).sum(), (x * x * mask).sum(), mask.sum()]).double())
    mean = stats[0] / stats[2].clamp(min=1)
    var = stats[1] / stats[2].clamp(min=1) - mean**2
    return mean.to(x.dtype), var.clamp(min=0).to(x.dtype)


def whiten_global(x: torch.Tensor, mask: torch.Tensor, world: World, eps: float = 1e-8) -> torch.Tensor:
    """`losses.whiten` with statistics over every process's batch."""
    mean, var = masked_moments(x, mask, world)
    return (x - mean) * torch.rsqrt(var + eps) * mask


class NullWriter:
    """What processes other than rank 0 write to: nothing. Mirrors the RunWriter methods stages call."""

    def __init__(self, path):
        self.path = path

    def save_checkpoint(self, stage, tag, **_):
        from rlhf_lens.runs.layout import checkpoint_dir

        return checkpoint_dir(self.path, stage, tag)

    def __getattr__(self, name):  # log_metrics, log_event, write_rollouts, write_data, set_stage_status, ...
        return lambda *args, **kwargs: None
