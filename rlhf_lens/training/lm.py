"""Language-modelling stages: `base` (pretraining on the task corpus) and `sft`
(supervised fine-tuning on prompt -> completion pairs, loss on the completion).

The loop reads top to bottom: build the batch of this step, forward, loss,
guarded optimizer step, log, evaluate, checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from rlhf_lens.models import completion_logprobs, encode_prompts, sample
from rlhf_lens.runs import RunWriter, checkpoint_tag
from rlhf_lens.training.config import LMStageConfig
from rlhf_lens.training.data import PromptCompletions, batch_indices
from rlhf_lens.training.optim import NonFiniteGuard, make_optimizer, restore_training_state, training_state

MAX_CONSECUTIVE_BAD_STEPS = 5


# --------------------------------------------------------------------------- losses


def block_loss(model: torch.nn.Module, blocks: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over token blocks (batch, seq)."""
    return model(input_ids=blocks, labels=blocks).loss


def completion_nll(model: torch.nn.Module, pairs: PromptCompletions, pad_id: int) -> torch.Tensor:
    """Mean negative log-likelihood of completion tokens only (prompt tokens carry no loss)."""
    logprobs, completion_mask = completion_logprobs(model, pairs.prompt_ids, pairs.completion_ids, pad_id)
    return -(logprobs.sum() / completion_mask.sum().clamp(min=1))


@torch.no_grad()
def mean_loss(loss_fn: Callable[[list[int]], torch.Tensor], n_items: int, batch_size: int) -> float:
    """Item-weighted mean of `loss_fn` over all items, in batches."""
    total = 0.0
    for start in range(0, n_items, batch_size):
        indices = list(range(start, min(n_items, start + batch_size)))
        total += loss_fn(indices).item() * len(indices)
    return total / n_items


def eval_metrics(loss: float) -> dict[str, float]:
    return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50.0))}


# --------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class LMTask:
    """What a language-modelling stage trains on: a train loss and a held-out loss, by item index."""

    n_items: int
    train_loss: Callable[[list[int]], torch.Tensor]
    heldout_loss: Callable[[], float]


def train_lm(
    stage: LMStageConfig,
    model: torch.nn.Module,
    tokenizer,
    task: LMTask,
    writer: RunWriter,
    *,
    seed: int,
    quiet: bool = False,
    resume_state: dict | None = None,
) -> dict[str, float]:
    """Train `model` in place for `stage.steps` optimizer steps; return the final metrics."""
    optimizer, scheduler = make_optimizer(model, stage.lr, stage.weight_decay, stage.warmup_steps, stage.steps)
    start = restore_training_state(resume_state, optimizer, scheduler) if resume_state else 0
    guard = NonFiniteGuard(MAX_CONSECUTIVE_BAD_STEPS, where=f"stage {stage.name}")
    model.train()
    metrics: dict[str, float] = {}
    bar = tqdm(range(start + 1, stage.steps + 1), desc=stage.name, disable=quiet, initial=start, total=stage.steps)
    for step in bar:
        indices = batch_indices(task.n_items, stage.batch_size, seed, step)
        loss = task.train_loss(indices)
        if not guard.check(loss.detach()):
            writer.log_event("nan_skip", stage=stage.name, step=step, what="loss")
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            continue
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), stage.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        metrics = {"loss": loss.item(), "grad_norm": float(grad_norm), "learning_rate": scheduler.get_last_lr()[0]}
        if (stage.eval_every and step % stage.eval_every == 0) or step == stage.steps:
            model.eval()
            metrics.update(eval_metrics(task.heldout_loss()))
            model.train()
        writer.log_metrics(stage.name, step, metrics)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}")
        if stage.save_every and step % stage.save_every == 0 and step != stage.steps:
            state = training_state(optimizer, scheduler, step)
            writer.save_checkpoint(stage.name, checkpoint_tag(step), model=model, tokenizer=tokenizer, step=step, metrics=metrics, state=state)
    model.eval()
    state = training_state(optimizer, scheduler, stage.steps)
    writer.save_checkpoint(stage.name, "final", model=model, tokenizer=tokenizer, step=stage.steps, metrics=metrics, state=state)
    return metrics


# --------------------------------------------------------------------------- what base and sft train on


def corpus_task(model: torch.nn.Module, blocks: torch.Tensor, heldout_blocks: torch.Tensor, batch_size: int) -> LMTask:
    """Pretraining on packed corpus blocks (n_blocks, seq)."""
    return LMTask(
        n_items=len(blocks),
        train_loss=lambda idx: block_loss(model, blocks[idx]),
        heldout_loss=lambda: mean_loss(lambda idx: block_loss(model, heldout_blocks[idx]), len(heldout_blocks), batch_size),
    )


def sft_task(model: torch.nn.Module, train: PromptCompletions, heldout: PromptCompletions, pad_id: int, batch_size: int) -> LMTask:
    """Supervised fine-tuning on prompt -> completion pairs."""
    return LMTask(
        n_items=len(train),
        train_loss=lambda idx: completion_nll(model, train.select(idx), pad_id),
        heldout_loss=lambda: mean_loss(lambda idx: completion_nll(model, heldout.select(idx), pad_id), len(heldout), batch_size),
    )


@torch.no_grad()
def heldout_perplexity(model: torch.nn.Module, heldout_blocks: torch.Tensor, batch_size: int) -> float:
    """exp(mean next-token loss) on held-out blocks."""
    was_training = model.training
    model.eval()
    loss = mean_loss(lambda idx: block_loss(model, heldout_blocks[idx]), len(heldout_blocks), batch_size)
    model.train(was_training)
    return math.exp(min(loss, 50.0))


@torch.no_grad()
def eos_rate(model: torch.nn.Module, tokenizer, prompts: list[str], *, seed: int, max_new_tokens: int) -> dict[str, float]:
    """Share of sampled continuations that end with EOS within `max_new_tokens`, and their mean length."""
    samples = sample(model, tokenizer, encode_prompts(tokenizer, prompts), [seed + i for i in range(len(prompts))], max_new_tokens=max_new_tokens)
    lengths = [len(c) for c in samples.completion_ids]
    return {"eos_rate": sum(samples.finished) / len(prompts), "mean_length": sum(lengths) / len(lengths)}


