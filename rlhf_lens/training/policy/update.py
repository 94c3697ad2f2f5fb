"""What every policy update shares: minibatches of whole prompts, a guarded optimizer step, and statistics
averaged over minibatches and processes."""

from __future__ import annotations

import torch

from rlhf_lens.training.distributed import World


def minibatch_rows(n_prompts: int, group_size: int, minibatches: int) -> list[list[int]]:
    """Sample rows of each minibatch: prompt p goes to minibatch p % minibatches with its whole group.

    Striding (not slicing) makes minibatch m the same set of prompts whether a step's
    prompts sit in one process or are split contiguously over several.
    """
    if n_prompts % minibatches:
        raise ValueError(f"{n_prompts} prompts per process cannot form {minibatches} equal minibatches; make batch_size / processes a multiple of minibatches")
    return [[p * group_size + j for p in range(m, n_prompts, minibatches) for j in range(group_size)] for m in range(minibatches)]


def apply_gradients(loss: torch.Tensor, optimizer: torch.optim.Optimizer, grad_clip: float, world: World) -> bool:
    """Backward, clip and step; a non-finite loss (in any process) or gradient skips the step (returns False):
    no NaN reaches the weights."""
    optimizer.zero_grad(set_to_none=True)
    if float(world.sum((~torch.isfinite(loss.detach())).float())) > 0:
        return False
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if not torch.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return True


class UpdateStats:
    """Means of per-minibatch statistics (each already a global mean) and whether every step was applied."""

    def __init__(self, world: World):
        self.world = world
        self.sums: dict[str, float] = {}
        self.n = 0
        self.all_applied = True

    def add(self, values: dict[str, torch.Tensor], applied: bool) -> None:
        # Every statistic was divided by a global count, so a sum over processes is the global value.
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(self.world.sum(value.detach().float()))
        self.n += 1
        self.all_applied &= applied

    def means(self) -> dict[str, float]:
        return {key: total / max(self.n, 1) for key, total in self.sums.items()}
