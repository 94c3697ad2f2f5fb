"""Policy diff (rlhf_lens.analyses.policy_diff) on tiny GPT-2, Llama and GPT-NeoX models: the weight diff of a model
with itself is 0 and a planted rank-1 update has one dominant singular value; the logit lens at the last layer is the
model's own output; patching plumbing (the aligned model's last residual read out through its own head reproduces
it, patching nothing reproduces the reference)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from rlhf_lens import models
from rlhf_lens.analyses.policy_diff.diversity import distinct_n, diversity_diff, ngram_overlap
from rlhf_lens.analyses.policy_diff.logit_lens import lens_logprobs, logit_lens_diff, residual_after_blocks
from rlhf_lens.analyses.policy_diff.patching import activation_patching, capture, patch_positions, patched_logprobs
from rlhf_lens.analyses.policy_diff.weights import weight_diff
from rlhf_lens.runs.weights import read_weights
from tests.tiny_models import ARCHITECTURES, tiny_model

PROMPTS = ["The food was", "I", "Terrible service, and the waiter", "Great"]
COMPLETIONS = [" great.", " loved it, truly a fine place", " was rude.", " value for money"]


def aligned_copy(model: torch.nn.Module, seed: int = 1, scale: float = 0.05) -> torch.nn.Module:
    """`model` with every weight nudged: a stand-in for a policy after alignment."""
    out = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in out.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return out


def batch(tokenizer):
    parts = [
        (models.encode_prompts(tokenizer, [p])[0], tokenizer(c, add_special_tokens=False)["input_ids"])
        for p, c in zip(PROMPTS, COMPLETIONS)
    ]
    ids, mask = models.pad_right([p + c for p, c in parts], tokenizer.pad_token_id)
    return ids, mask


# --------------------------------------------------------------------------- weights


def test_the_weight_diff_of_a_model_with_itself_is_zero(tiny_tokenizer, tmp_path):
    model = tiny_model("gpt2", tiny_tokenizer)
    model.save_pretrained(tmp_path)
    result = weight_diff(tmp_path, tmp_path)
    assert (result.df["delta_norm"] == 0).all() and (result.df["relative"] == 0).all()
    assert result.meta["relative_total"] == 0 and result.df["top1_share"].isna().all()  # no update, no spectrum
    saved = read_weights(tmp_path)
    assert result.meta["parameters"] == sum(t.numel() for t in saved.values() if t.is_floating_point())
    assert result.meta["tensors"] == len(result.df) > 10


def test_a_planted_rank_one_update_has_one_dominant_singular_value(tiny_tokenizer):
    model = tiny_model("llama", tiny_tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    after = {k: v.clone() for k, v in before.items()}
    name = "model.layers.1.mlp.down_proj.weight"
    rows, cols = after[name].shape
    u, v = torch.randn(rows, generator=torch.Generator().manual_seed(0)), torch.randn(cols, generator=torch.Generator().manual_seed(1))
    after[name] += 0.3 * torch.outer(u, v)
    result = weight_diff(before, after)
    top = result.df.iloc[0]
    assert top["name"] == name and (result.df["delta_norm"].iloc[1:] == 0).all()
    assert top["top1_share"] > 0.9999 and abs(top["effective_rank"] - 1.0) < 1e-3
    assert top["sv_1"] == pytest.approx(0.3 * float(u.norm() * v.norm()), rel=1e-5) and top["sv_2"] < 1e-5 * top["sv_1"]
    isotropic = {k: t.clone() for k, t in before.items()}
    isotropic[name] += 0.01 * torch.randn(rows, cols, generator=torch.Generator().manual_seed(2))
    spread = weight_diff(before, isotropic).df.iloc[0]
    assert spread["top1_share"] < 0.2 and spread["effective_rank"] > 0.5 * spread["full_rank"]  # a diffuse update
    assert result.plot() is not None and name in str(result.to_html())


def test_the_weight_diff_refuses_checkpoints_of_different_shapes(tiny_tokenizer):
    model = tiny_model("gpt2", tiny_tokenizer)
    before = model.state_dict()
    with pytest.raises(ValueError, match="hold different tensors"):
        weight_diff(before, {k: v for k, v in before.items() if "ln_f" not in k})
    after = dict(before)
    after["lm_head.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="'lm_head.weight' has shape"):
        weight_diff(before, after)


# --------------------------------------------------------------------------- logit lens


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_logit_lens_at_the_last_layer_is_the_models_own_output(arch, tiny_tokenizer):
    model = tiny_model(arch, tiny_tokenizer)
    ids, mask = batch(tiny_tokenizer)
    residual = residual_after_blocks(model, ids, mask)  # (layer, batch, seq, d_model)
    assert residual.shape[:3] == (len(model.base_model.layers if arch != "gpt2" else model.transformer.h), *ids.shape)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=models.position_ids(mask)).logits
    lens = lens_logprobs(model, residual[-1])
    real = mask.bool()
    torch.testing.assert_close(lens[real], torch.log_softmax(logits.float(), -1)[real], atol=1e-5, rtol=1e-5)
    earlier = lens_logprobs(model, residual[0])
    assert (earlier[real] - lens[real]).abs().max() > 1e-2  # an earlier layer reads differently


def test_the_logit_lens_of_a_model_against_itself_is_zero_and_against_a_nudged_copy_grows(tiny_tokenizer):
    model = tiny_model("gpt2", tiny_tokenizer)
    same = logit_lens_diff(model, model, tiny_tokenizer, PROMPTS, COMPLETIONS)
    assert same.df["kl"].abs().max() < 1e-6 and (same.df["logprob"] == same.df["ref_logprob"]).all()
    n_tokens = sum(len(tiny_tokenizer(c, add_special_tokens=False)["input_ids"]) for c in COMPLETIONS)
    assert len(same.df) == n_tokens * 3  # every completion token at each of 3 layers
    last = same.df[same.df["layer"] == 2]
    assert last["kl_to_final"].abs().max() < 1e-6
    nudged = logit_lens_diff(aligned_copy(model), model, tiny_tokenizer, PROMPTS, COMPLETIONS)
    assert nudged.meta["final_kl"] > 1e-3 and (nudged.df["kl"] > -1e-6).all()
    # the lens log-prob at the last layer is the model's own log-prob of the completion
    lp, completion_mask = models.completion_logprobs(
        model,
        models.encode_prompts(tiny_tokenizer, PROMPTS),
        tiny_tokenizer(COMPLETIONS, add_special_tokens=False)["input_ids"],
        tiny_tokenizer.pad_token_id,
    )
    np.testing.assert_allclose(np.sort(last["logprob"].to_numpy()), np.sort(lp[completion_mask].detach().numpy()), atol=1e-5)
    assert nudged.plot() is not None and "Logit lens" in nudged.title


# --------------------------------------------------------------------------- patching


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_patching_plumbing_reproduces_the_aligned_model_and_nothing_reproduces_the_reference(arch, tiny_tokenizer):
    reference = tiny_model(arch, tiny_tokenizer)
    policy = aligned_copy(reference)
    ids, mask = batch(tiny_tokenizer)
    real = mask.bool()
    with torch.no_grad():
        own = torch.log_softmax(policy(input_ids=ids, attention_mask=mask, position_ids=models.position_ids(mask)).logits.float(), -1)
        ref = torch.log_softmax(reference(input_ids=ids, attention_mask=mask, position_ids=models.position_ids(mask)).logits.float(), -1)
    last = len(capture(policy, ids, mask, "resid_post")) - 1
    final_residual = capture(policy, ids, mask, "resid_post")[last]
    patched = patched_logprobs(reference, ids, mask, readout_model=policy, patch=("resid_post", last, final_residual, None))
    torch.testing.assert_close(patched[real], own[real], atol=1e-5, rtol=1e-5)
    unpatched = patched_logprobs(reference, ids, mask, readout_model=reference)
    torch.testing.assert_close(unpatched[real], ref[real], atol=1e-5, rtol=1e-5)
    # patching the reference's own activation back in changes nothing
    own_resid = capture(reference, ids, mask, "resid_pre")[1]
    same = patched_logprobs(reference, ids, mask, readout_model=reference, patch=("resid_pre", 1, own_resid, None))
    torch.testing.assert_close(same[real], ref[real], atol=1e-5, rtol=1e-5)


def test_patching_the_whole_stream_restores_everything_and_the_components_add_up(tiny_tokenizer):
    reference = tiny_model("gpt2", tiny_tokenizer)
    policy = aligned_copy(reference, scale=0.02)
    result = activation_patching(policy, reference, tiny_tokenizer, PROMPTS, COMPLETIONS, readout="policy")
    rows = result.df.set_index(["site", "layer"])["restored"]
    assert rows[("resid_post", 2)] == pytest.approx(1.0, abs=1e-4)  # the aligned last residual, read by the aligned head
    assert abs(result.meta["gain"]) > 1e-3
    by_ref = activation_patching(policy, reference, tiny_tokenizer, PROMPTS, COMPLETIONS, sites=["resid_pre"])
    assert by_ref.df["restored"].notna().all() and set(by_ref.df["layer"]) == {0, 1, 2}
    positions = patch_positions(policy, reference, tiny_tokenizer, PROMPTS, COMPLETIONS, before=2, after=3)
    assert set(positions.df["offset"]) == {-2, -1, 0, 1, 2} and positions.df["texts"].max() == len(PROMPTS)
    assert result.plot() is not None and positions.plot() is not None
    with pytest.raises(ValueError, match="unknown site"):
        activation_patching(policy, reference, tiny_tokenizer, PROMPTS, COMPLETIONS, sites=["nowhere"])


# --------------------------------------------------------------------------- diversity


def test_distinct_n_and_overlap_by_hand():
    assert distinct_n(["a b a b", "c"], 1) == 3 / 5  # a, b, c unique of a b a b c
    assert distinct_n(["a b a b"], 2) == 2 / 3  # (a b), (b a), (a b)
    assert np.isnan(distinct_n(["a"], 2))
    assert ngram_overlap(["a b c", "a b d", "x y"], 2) == pytest.approx((1 / 3 + 0 + 0) / 3)  # {ab, bc} vs {ab, bd}: 1 of 3
    assert np.isnan(ngram_overlap(["only one"], 2))


def test_diversity_of_a_model_against_itself_does_not_change_and_a_nudged_one_is_measured(tiny_tokenizer):
    model = tiny_model("gpt2", tiny_tokenizer)
    prompts = PROMPTS * 2
    same = diversity_diff(model, model, tiny_tokenizer, prompts, samples_per_prompt=3, max_new_tokens=8)
    assert (same.df["change"] == 0).all() and set(same.df["metric"]) == {
        "distinct-2 within",
        "overlap-2 within",
        "distinct-1 across",
        "distinct-2 across",
        "overlap-2 across",
    }
    nudged = diversity_diff(aligned_copy(model, scale=0.3), model, tiny_tokenizer, prompts, samples_per_prompt=3, max_new_tokens=8)
    assert (nudged.df["change"] != 0).any() and (nudged.df["ci_low"] <= nudged.df["ci_high"]).all()
    assert nudged.plot() is not None and len(nudged.meta["examples"]) == 3
    with pytest.raises(ValueError, match="at least 2"):
        diversity_diff(model, model, tiny_tokenizer, prompts, samples_per_prompt=1)


def test_token_shifts_rank_a_planted_rise_and_fall_and_leave_rare_tokens_out():
    from rlhf_lens.analyses.policy_diff.behaviour import token_shifts

    rng = np.random.default_rng(0)
    ids = [rng.integers(3, 10, size=12) for _ in range(40)]  # tokens 3..9, plus planted ones
    ids = [np.concatenate([c, [1, 2]]) for c in ids] + [np.array([11])]  # 1 rises, 2 falls; 11 is seen once
    ratios = [np.where(c == 1, 2.0, np.where(c == 2, -1.0, 0.0)) + rng.normal(0, 0.1, size=len(c)) for c in ids]
    shifts = token_shifts(ids, ratios)
    assert shifts["token_id"].iloc[0] == 1 and shifts["token_id"].iloc[-1] == 2
    assert shifts["mean"].iloc[0] == pytest.approx(2.0, abs=0.05) and shifts["count"].iloc[0] == 40
    assert 11 not in set(shifts["token_id"])
    with pytest.raises(ValueError, match="must pair up"):
        token_shifts(ids, ratios[:-2])


def test_the_behaviour_diff_compares_the_first_and_last_evaluation(tiny_tokenizer):
    import pandas as pd

    from rlhf_lens.analyses.policy_diff.behaviour import behaviour_diff

    rows = []
    for step, gold in ((0, -0.5), (10, 0.0), (20, 0.5)):
        for _ in range(8):
            ids = [5, 6, 7, 8, 9, 10]
            rows.append(
                {
                    "step": step,
                    "completion_ids": ids,
                    "kl_per_token": [step / 10.0] + [0.0] * 5,
                    "length": 6 + step,
                    "gold_reward": gold,
                    "reward": gold * 2,
                }
            )
    result = behaviour_diff(pd.DataFrame(rows), tiny_tokenizer, meta={"stage": "policy"})
    assert result.meta["start_step"] == 0 and result.meta["final_step"] == 20
    assert result.df.iloc[0]["token_id"] == 5 and result.df.iloc[0]["mean"] == pytest.approx(2.0)
    assert np.mean(result.meta["distributions"]["gold_final"]) == pytest.approx(0.5)
    assert np.mean(result.meta["distributions"]["length_start"]) == 6
    with pytest.raises(ValueError, match="one evaluation"):
        behaviour_diff(pd.DataFrame(rows[:8]), tiny_tokenizer)
