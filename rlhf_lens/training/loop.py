"""The optimisation loop every supervised stage shares (base, sft, reward).

It reads top to bottom: build the batch of this step, forward, loss, guarded
optimizer step, log, evaluate, checkpoint. What is trained is an `Objective`;
how long and how fast is a `Schedule`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhf_lens.runs import RunWriter, checkpoint_tag
from rlhf_lens.training.data import batch_indices
from rlhf_lens.training.optim import SUPERVISED_MAX_BAD_STEPS, BadStepCounter, make_optimizer, restore_training_state, training_state
from rlhf_lens.training.steps import Cadence, progress


@dataclass(frozen=True)
class Schedule:
    """How a stage optimises: steps, batch size, learning rate and when to evaluate and save."""

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    eval_every: int
    save_every: int

    @classmethod
    def of(cls, stage, steps: int | None = None) -> Schedule:
        """The schedule fields of a stage config (`steps` overrides a stage that derives it)."""
        return cls(
            steps=steps if steps is not None else stage.steps,
            batch_size=stage.batch_size,
            lr=stage.lr,
            warmup_steps=min(stage.warmup_steps, max(0, (steps or stage.steps) - 1)),
            weight_decay=stage.weight_decay,
            grad_clip=stage.grad_clip,
            eval_every=stage.eval_every,
            save_every=getattr(stage, "save_every", 0),
        )

    @property
    def cadence(self) -> Cadence:
        return Cadence(self.steps, eval_every=self.eval_every, save_every=self.save_every)


@dataclass(frozen=True)
class Objective:
    """What a stage trains on: a loss over a batch of item indices and a held-out evaluation."""

    n_items: int
    train_loss: Callable[[list[int]], torch.Tensor]
    evaluate: Callable[[], dict[str, float]]
    batch_size: int | None = None
    """Items per batch when an item is not one record (e.g. a prompt with all its comparisons);
    None: the schedule's batch size."""


@dataclass(frozen=True)
class FitResult:
    metrics: dict[str, float]
    """The last step's metrics, including the final evaluation."""
    state: dict
    """Optimizer, scheduler and RNG state at the end (for the final checkpoint)."""


def fit(
    stage_name: str,
    schedule: Schedule,
    model: torch.nn.Module,
    tokenizer,
    objective: Objective,
    writer: RunWriter,
    *,
    seed: int,
    quiet: bool = False,
    resume_state: dict | None = None,
    step_meta: dict | None = None,
) -> FitResult:
    """Train `model` in place; log every step; save `step-N` checkpoints (the caller saves `final`); with `step_meta`
    they carry it in meta.json instead of a training state (stages that cannot resume from them: reward)."""
    optimizer, scheduler = make_optimizer(model, schedule.lr, schedule.weight_decay, schedule.warmup_steps, schedule.steps)
    start = restore_training_state(resume_state, optimizer, scheduler) if resume_state else 0
    cadence, bad = schedule.cadence, BadStepCounter(stage_name, SUPERVISED_MAX_BAD_STEPS)
    model.train()
    metrics: dict[str, float] = {}
    bar = progress(cadence, start, stage_name, quiet=quiet)
    for step in bar:
        indices = batch_indices(objective.n_items, objective.batch_size or schedule.batch_size, seed, step)
        loss = objective.train_loss(indices)
        if not torch.isfinite(loss.detach()).all():
            writer.log_event("nan_skip", stage=stage_name, step=step, what="loss")
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            bad.bad(step, "losses")  # raises after SUPERVISED_MAX_BAD_STEPS in a row
            continue
        bad.ok()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), schedule.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        metrics = {"loss": loss.item(), "grad_norm": float(grad_norm), "learning_rate": scheduler.get_last_lr()[0]}
        if cadence.is_eval_step(step):
            model.eval()
            metrics.update(objective.evaluate())
            model.train()
        writer.log_metrics(stage_name, step, metrics)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}")
        if cadence.is_save_step(step):
            save_step(writer, stage_name, step, model, tokenizer, metrics, optimizer, scheduler, step_meta)
    model.eval()
    return FitResult(metrics=metrics, state=training_state(optimizer, scheduler, schedule.steps))


def save_step(writer: RunWriter, stage_name: str, step: int, model, tokenizer, metrics: dict, optimizer, scheduler, step_meta) -> None:
    """The `step-N` checkpoint: with the training state for exact resume, or, with `step_meta`, that meta instead."""
    state = training_state(optimizer, scheduler, step) if step_meta is None else None
    writer.save_checkpoint(
        stage_name, checkpoint_tag(step), model=model, tokenizer=tokenizer, step=step, metrics=metrics, state=state, extra_meta=step_meta
    )


@torch.no_grad()
def mean_over_batches(loss_fn: Callable[[list[int]], torch.Tensor], n_items: int, batch_size: int) -> float:
    """Item-weighted mean of `loss_fn` over all items, in batches."""
    total = 0.0
    for start in range(0, n_items, batch_size):
        indices = list(range(start, min(n_items, start + batch_size)))
        total += loss_fn(indices).item() * len(indices)
    return total / n_items
