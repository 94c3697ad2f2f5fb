"""Perturbation attributions of a scalar reward model's reward over its input tokens: occlusion (Captum's
FeatureAblation) and Shapley value sampling (Captum's ShapleyValueSampling).

Both replace whole tokens by the baseline's (in embedding space, through the same forward over embeddings as
`reward.reward_integrated_gradients`, so the target is the reward exactly as `models.score_texts` computes it)
and need no gradient: they also work where a model's gradients mislead (saturated heads, RMSNorm paths through
zero). Texts are batched, sorted by length, so that a forward pass holds about `max_batch_tokens` tokens.

Shape glossary: batch, seq, d_model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from rlhf_lens.analyses.attribution.reward import RewardAttributionResult, _batches, _embed_pair, _prepare, _result, _RewardOfEmbeddings

__all__ = ["reward_feature_ablation", "reward_shapley_sampling"]


def reward_feature_ablation(
    reward_model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    baseline: str = "pad",
    max_batch_tokens: int = 16384,
) -> RewardAttributionResult:
    """Occlusion of each token: attribution = reward(x) - reward(x with that one token replaced by the baseline).

    Same target, inputs and baselines as `reward_integrated_gradients` ("zero" replaces the token's embedding by
    zeros). Attributions need not add up: `delta` = sum of attributions - (reward(x) - reward(all tokens
    replaced)) measures the interactions, and `steps` is the number of ablations (the text's length).
    Returns a `RewardAttributionResult`.
    """
    from captum.attr import FeatureAblation

    def attribute(forward, embeds, base, args, feature_mask, per_eval):
        return FeatureAblation(forward).attribute(
            embeds, baselines=base, additional_forward_args=args, feature_mask=feature_mask, perturbations_per_eval=per_eval
        )

    result = _perturbation(reward_model, tokenizer, prompts, completions, attribute, baseline, max_batch_tokens, evals_per_token=1)
    return _with_meta(result, method="feature_ablation", baseline=baseline, samples=None)


def reward_shapley_sampling(
    reward_model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    baseline: str = "pad",
    n_samples: int = 25,
    seed: int = 0,
    max_batch_tokens: int = 16384,
) -> RewardAttributionResult:
    """Shapley values of the tokens, estimated from `n_samples` random orderings (Castro et al., 2009; 25 is Captum's
    default).

    Each ordering adds the text's tokens one at a time to the all-baseline input and credits each token with the
    reward it adds, so every ordering's credits sum exactly to reward(x) - reward(baseline) (`delta` ~ 0, up to
    float error); the estimate's noise shrinks as 1/sqrt(n_samples). Same target, inputs and baselines as
    `reward_integrated_gradients`; `steps` holds the forward evaluations per text (n_samples x length).
    """
    from captum.attr import ShapleyValueSampling

    if n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples}")

    def attribute(forward, embeds, base, args, feature_mask, per_eval):
        torch.manual_seed(seed)  # Captum draws its orderings from torch's generator
        return ShapleyValueSampling(forward).attribute(
            embeds,
            baselines=base,
            additional_forward_args=args,
            feature_mask=feature_mask,
            n_samples=n_samples,
            perturbations_per_eval=per_eval,
        )

    result = _perturbation(
        reward_model, tokenizer, prompts, completions, attribute, baseline, max_batch_tokens, evals_per_token=n_samples, same_length=True
    )
    return _with_meta(result, method="shapley_value_sampling", baseline=baseline, samples=n_samples)


def _perturbation(
    reward_model,
    tokenizer,
    prompts,
    completions,
    attribute,
    baseline: str,
    max_batch_tokens: int,
    *,
    evals_per_token: int,
    same_length: bool = False,
):
    """Run a Captum perturbation method over texts batched by length -> RewardAttributionResult (meta filled in later).
    `same_length` batches only texts of one length: a sampling method then draws the same orderings for a text
    whichever texts share its batch (Captum draws one ordering of the batch's positions per sample)."""
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions; pass one completion per prompt")
    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be positive, got {max_batch_tokens}")
    parts, seqs, base_seqs, pad_id = _prepare(reward_model, tokenizer, prompts, completions, baseline)
    forward = _RewardOfEmbeddings(reward_model)
    embedding = reward_model.get_input_embeddings()
    n = len(seqs)
    attrs: list[np.ndarray] = [np.zeros(0)] * n
    reward, base_reward, delta = np.zeros(n), np.zeros(n), np.zeros(n)
    was_training = reward_model.training
    reward_model.eval()
    try:
        for chunk in _batches(seqs, 1, max_batch_tokens, same_length=same_length):
            embeds, base, mask, positions = _embed_pair(
                forward, embedding, [seqs[i] for i in chunk], None if base_seqs is None else [base_seqs[i] for i in chunk], pad_id
            )
            width = embeds.shape[1]
            feature_mask = torch.arange(width, device=embeds.device)[None, :, None].expand(1, width, embeds.shape[2]).contiguous()
            per_eval = max(1, max_batch_tokens // (len(chunk) * width))  # perturbed copies of the chunk per forward pass
            with torch.no_grad():
                attributions = attribute(forward, embeds, base, (mask, positions), feature_mask, per_eval)  # (batch, seq, d_model)
                full = forward(embeds, mask, positions).double().cpu().numpy()
                empty = forward(base, mask, positions).double().cpu().numpy()
            per_token = (attributions[:, :, 0] * mask).double().cpu().numpy()  # (batch, seq): one value per token, copied over d_model
            for j, i in enumerate(chunk):
                attrs[i] = per_token[j, : len(seqs[i])]
                reward[i], base_reward[i] = full[j], empty[j]
                delta[i] = attrs[i].sum() - (full[j] - empty[j])
    finally:
        reward_model.train(was_training)
    steps = np.asarray([evals_per_token * len(s) for s in seqs], dtype=np.int64)
    return _result(tokenizer, prompts, completions, parts, attrs, reward, base_reward, delta, steps, {})


def _with_meta(result: RewardAttributionResult, *, method: str, baseline: str, samples: int | None) -> RewardAttributionResult:
    meta = {"method": method, "baseline": baseline, "n_steps": None, "tolerance": None, "max_steps": None, "n_samples": samples}
    return RewardAttributionResult(df=result.df, meta={**meta, "texts": result.meta["texts"]})
