"""Language-modelling objectives: `base` (next-token loss on packed corpus blocks)
and `sft` (loss on the completion of prompt -> completion pairs only)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rlhf_lens.decoding import sample
from rlhf_lens.models import completion_logprobs, encode_prompts
from rlhf_lens.training.data import PromptCompletions
from rlhf_lens.training.loop import Objective, mean_over_batches


def block_loss(model: torch.nn.Module, blocks: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over token blocks (batch, seq)."""
    logits = model(input_ids=blocks, attention_mask=torch.ones_like(blocks)).logits  # (batch, seq, vocab)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), blocks[:, 1:].flatten())


def completion_nll(model: torch.nn.Module, pairs: PromptCompletions, pad_id: int) -> torch.Tensor:
    """Mean negative log-likelihood of completion tokens only (prompt tokens carry no loss)."""
    logprobs, completion_mask = completion_logprobs(model, pairs.prompt_ids, pairs.completion_ids, pad_id)
    return -(logprobs.sum() / completion_mask.sum().clamp(min=1))


def perplexity_metrics(loss: float) -> dict[str, float]:
    return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50.0))}


def corpus_objective(model: torch.nn.Module, blocks: torch.Tensor, heldout_blocks: torch.Tensor, batch_size: int) -> Objective:
    """Pretraining on packed corpus blocks (n_blocks, seq)."""
    return Objective(
        n_items=len(blocks),
        train_loss=lambda idx: block_loss(model, blocks[idx]),
        evaluate=lambda: perplexity_metrics(
            mean_over_batches(lambda idx: block_loss(model, heldout_blocks[idx]), len(heldout_blocks), batch_size)
        ),
    )


def completion_objective(
    model: torch.nn.Module, train: PromptCompletions, heldout: PromptCompletions, pad_id: int, batch_size: int
) -> Objective:
    """Supervised fine-tuning on prompt -> completion pairs."""
    return Objective(
        n_items=len(train),
        train_loss=lambda idx: completion_nll(model, train.select(idx), pad_id),
        evaluate=lambda: perplexity_metrics(
            mean_over_batches(lambda idx: completion_nll(model, heldout.select(idx), pad_id), len(heldout), batch_size)
        ),
    )


@torch.no_grad()
def heldout_perplexity(model: torch.nn.Module, heldout_blocks: torch.Tensor, batch_size: int) -> float:
    """exp(mean next-token loss) on held-out blocks."""
    was_training = model.training
    model.eval()
    loss = mean_over_batches(lambda idx: block_loss(model, heldout_blocks[idx]), len(heldout_blocks), batch_size)
    model.train(was_training)
    return math.exp(min(loss, 50.0))


@torch.no_grad()
def eos_rate(model: torch.nn.Module, tokenizer, prompts: list[str], *, seed: int, max_new_tokens: int) -> dict[str, float]:
    """Share of sampled continuations that end with EOS within `max_new_tokens`, and their mean length."""
    samples = sample(
        model, tokenizer, encode_prompts(tokenizer, prompts), [seed + i for i in range(len(prompts))], max_new_tokens=max_new_tokens
    )
    lengths = [len(c) for c in samples.completion_ids]
    return {"eos_rate": sum(samples.finished) / len(prompts), "mean_length": sum(lengths) / len(lengths)}
