"""What every policy update shares: minibatches of whole prompts, a guarded optimizer step, and statistics
averaged over minibatches and processes."""

from __future__ import annotations

import numpy as np
import torch

from rlhf_lens.training.distributed import World


def epoch_seed(seed: int, step: int, epoch: int) -> int:
    """The seed of one epoch's minibatch draw: a function of (seed, step, epoch) only, so resume is exact."""
    return int(np.random.SeedSequence([seed, step + 10, epoch, MINIBATCH_STREAM]).generate_state(1)[0])


MINIBATCH_STREAM = 7_919  # keeps the minibatch draws apart from the sampling seeds (rollout.sample_seed)


def minibatch_rows(n_prompts: int, group_size: int, minibatches: int, *, seed: int, rank: int = 0) -> list[list[int]]:
    """Sample rows of each minibatch of one epoch, drawn afresh per epoch (`seed` = `epoch_seed(...)`), as
    CleanRL and TRL permute their batch every epoch; a prompt's whole group goes with it.

    Every aligned block of `minibatches` consecutive prompts (by global index; this process holds prompts
    rank * n_prompts ...) sends one prompt to each minibatch, in an order drawn per block, and the
    minibatches are visited in a drawn order. The draw depends on global indices only, so minibatch m is
    the same set of prompts whether a step's prompts sit in one process or are split contiguously over
    several, and every process holds n_prompts / minibatches prompts of every minibatch.
    """
    if n_prompts % minibatches:
        raise ValueError(
            f"{n_prompts} prompts per process cannot form {minibatches} equal minibatches; make batch_size / processes a multiple of minibatches"
        )
    generator = torch.Generator().manual_seed(seed)
    visit_order = torch.randperm(minibatches, generator=generator).tolist()
    blocks_before, blocks = rank * n_prompts // minibatches, n_prompts // minibatches
    # Draw every block up to this process's last, so a block's draw does not depend on the process count.
    draws = [torch.randperm(minibatches, generator=generator).tolist() for _ in range(blocks_before + blocks)][blocks_before:]
    rows: list[list[int]] = [[] for _ in range(minibatches)]
    for p in range(n_prompts):
        rows[draws[p // minibatches][p % minibatches]].extend(p * group_size + j for j in range(group_size))
    return [rows[m] for m in visit_order]


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
