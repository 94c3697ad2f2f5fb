"""Policy-outcome analyses on tiny runs with planted truth: paired gold changes and their SEMs worked out by hand,
planted reward hacking, EOS collapse and length shifts, per-token KL heatmaps that carry their values and escape
hostile text, and results that come back from the analysis cache unchanged."""

from __future__ import annotations

import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rlhf_lens.analyses import get_analysis, run_task  # noqa: E402
from rlhf_lens.analyses.core.cache import Task  # noqa: E402
from rlhf_lens.analyses.policy_outcome import (  # noqa: E402
    analyze_policy_outcome,
    analyze_policy_trends,
    analyze_sample_completions,
    choose_samples,
)
from rlhf_lens.runs import Run, RunWriter  # noqa: E402

HOSTILE = "</script><img src=x onerror=alert(1)>"
VOCAB = ["<eos>", "<unk>", HOSTILE] + [f"w{i}" for i in range(20)]


def eval_rows(gold, proxy=None, *, length=None, finished=None, kl=None, order=None, completion_ids=None, completions=None):
    """One eval row per prompt p0, p1, ...: gold and proxy rewards as given, per-token KL `kl[i]` (default zeros)."""
    n = len(gold)
    proxy = proxy if proxy is not None else [0.5] * n
    length = length if length is not None else [4] * n
    finished = finished if finished is not None else [True] * n
    rows = []
    for i in order if order is not None else range(n):
        ids = completion_ids[i] if completion_ids is not None else [3 + (j % 20) for j in range(length[i])]
        per_token = kl[i] if kl is not None else [0.0] * len(ids)
        rows.append(
            {
                "sample_id": i,
                "prompt_id": f"p{i}",
                "prompt": f"prompt {i}",
                "completion": completions[i] if completions is not None else " ".join(VOCAB[t] for t in ids),
                "prompt_ids": [3, 4],
                "completion_ids": ids,
                "logprobs": [-1.0 + v for v in per_token],
                "ref_logprobs": [-1.0] * len(ids),
                "kl_per_token": per_token,
                "seq_kl": float(sum(per_token)),
                "reward": float(proxy[i]),
                "reward_components": {"score": float(proxy[i]), "missing_eos_penalty": 0.0},
                "gold_reward": None if gold[i] is None else float(gold[i]),
                "length": len(ids),
                "finished": bool(finished[i]),
            }
        )
    return rows


def make_run(tmp_path, evaluations: dict[int, list[dict]], *, checkpoint: bool = False) -> Run:
    """A run with one policy stage whose evaluations at each step are `evaluations[step]`."""
    writer = RunWriter.create(tmp_path / "run", name="run", task="sentiment", seed=0, config={})
    writer.add_stage("policy", "policy")
    for step, rows in evaluations.items():
        writer.write_eval_rollouts("policy", step, rows)
    if checkpoint:
        writer.save_checkpoint("policy", "final", model=tiny_lm(), tokenizer=tiny_tokenizer(), step=max(evaluations), metrics={})
    return Run.open(writer.path)


def tiny_lm():
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=len(VOCAB), n_positions=16)
    return transformers.GPT2LMHeadModel(config)


def tiny_tokenizer():
    """A word-level tokenizer over VOCAB: decoding token 2 gives the hostile string verbatim."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")


def levels(result) -> dict[str, str]:
    return {v.check: v.level for v in result.verdicts}


# --------------------------------------------------------------------------- outcome


def test_paired_change_and_sems_match_a_hand_computation(tmp_path):
    # start gold 0, 1, 2; final 1, 1, 4 (rows written in another order: pairing is by prompt, not position).
    # start: mean 1, sd 1, sem 1/sqrt(3); final: mean 2, sd sqrt((1 + 1 + 4) / 2) = sqrt(3), sem 1;
    # change 1, 0, 2: mean 1, sd 1, sem 1/sqrt(3), z = sqrt(3) < 2: not significant.
    run = make_run(
        tmp_path,
        {
            0: eval_rows([0.0, 1.0, 2.0]),
            5: eval_rows([9.0, 9.0, 9.0]),  # a middle evaluation: neither start nor final
            10: eval_rows([1.0, 1.0, 4.0], order=[2, 0, 1]),
        },
    )
    result = analyze_policy_outcome(run, "policy")
    assert result.value("start", "gold") == pytest.approx(1.0)
    assert result.value("start", "gold", "sem") == pytest.approx(1 / math.sqrt(3))
    assert result.value("final", "gold") == pytest.approx(2.0)
    assert result.value("final", "gold", "sem") == pytest.approx(1.0)
    assert result.value("change", "gold") == pytest.approx(1.0)
    assert result.value("change", "gold", "sem") == pytest.approx(1 / math.sqrt(3))
    assert result.value("change", "gold", "n") == 3
    assert set(result.df.loc[result.df["policy"] == "final", "step"]) == {10}
    assert result.meta["z_gold"] == pytest.approx(math.sqrt(3))
    assert levels(result)["gold reward gain"] == "warn"


def test_planted_gold_gain_gives_its_paired_difference_and_an_ok(tmp_path):
    rng = np.random.default_rng(1)
    start = rng.normal(0.0, 1.0, 40)
    final = start + 0.3 + rng.normal(0.0, 0.1, 40)  # gain 0.3, paired noise 0.1: z about 19
    run = make_run(tmp_path, {0: eval_rows(list(start)), 20: eval_rows(list(final))})
    result = analyze_policy_outcome(run, "policy")
    diff = final - start
    mean = sum(diff) / 40
    sem = math.sqrt(sum((d - mean) ** 2 for d in diff) / 39) / math.sqrt(40)
    assert result.value("change", "gold") == pytest.approx(mean, abs=1e-9)
    assert result.value("change", "gold", "sem") == pytest.approx(sem, abs=1e-9)
    verdict = next(v for v in result.verdicts if v.check == "gold reward gain")
    assert verdict.level == "ok" and verdict.value == pytest.approx(mean / sem)
    assert "z ≥ 2" in verdict.threshold
    assert dict(result.headlines())["gold change (paired)"] == f"{mean:+.3g} ± {sem:.2g} (z = {mean / sem:.1f})"


def test_gold_drop_while_the_proxy_rises_is_flagged_as_reward_hacking(tmp_path):
    rng = np.random.default_rng(2)
    gold, proxy = rng.normal(0.5, 0.5, 30), rng.normal(0.0, 0.5, 30)
    run = make_run(
        tmp_path,
        {
            0: eval_rows(list(gold), list(proxy)),
            20: eval_rows(list(gold - 0.4 + rng.normal(0, 0.05, 30)), list(proxy + 1.0 + rng.normal(0, 0.05, 30))),
        },
    )
    result = analyze_policy_outcome(run, "policy")
    verdict = next(v for v in result.verdicts if v.check == "gold reward gain")
    assert verdict.level == "flag"
    assert "reward hacking" in verdict.evidence and verdict.value < -2


@pytest.mark.parametrize(("final_finished", "level"), [(19, "ok"), (16, "warn"), (10, "flag")])
def test_eos_collapse_is_judged_by_the_points_lost(tmp_path, final_finished, level):
    # all 20 start completions end; of the final ones 19 (-5 points), 16 (-20) or 10 (-50) do
    run = make_run(
        tmp_path,
        {0: eval_rows([0.0] * 20), 10: eval_rows([0.0] * 20, finished=[i < final_finished for i in range(20)])},
    )
    result = analyze_policy_outcome(run, "policy")
    verdict = next(v for v in result.verdicts if v.check == "EOS rate")
    assert verdict.level == level
    assert verdict.value == pytest.approx(100 * (20 - final_finished) / 20)
    assert "10 points" in verdict.threshold and "30" in verdict.threshold
    # the thresholds are settings: a direct call with stricter ones flags even the 5-point drop
    strict = analyze_policy_outcome(run, "policy", eos_drop_warn=1.0, eos_drop_flag=2.0)
    verdict = next(v for v in strict.verdicts if v.check == "EOS rate")
    assert verdict.level == "flag" and "1 points, flag above 2" in verdict.threshold
    assert strict.meta["eos_drop_warn"] == 1.0 and levels(strict)["length shift"] == levels(result)["length shift"]


@pytest.mark.parametrize(("final_length", "level"), [(5, "ok"), (7, "warn"), (9, "flag"), (3, "ok"), (2, "warn"), (1, "flag")])
def test_length_shift_is_judged_by_the_ratio_of_mean_lengths(tmp_path, final_length, level):
    # 4 tokens at the start; warn beyond x1.5 either way, flag beyond x2 (x0.5 itself is a warning)
    run = make_run(tmp_path, {0: eval_rows([0.0] * 4, length=[4] * 4), 10: eval_rows([0.0] * 4, length=[final_length] * 4)})
    result = analyze_policy_outcome(run, "policy")
    verdict = next(v for v in result.verdicts if v.check == "length shift")
    assert verdict.level == level and verdict.value == pytest.approx(final_length / 4)


def test_a_stage_without_gold_or_proxy_leaves_them_out(tmp_path):
    # no oracle (gold None) and no reward model (DPO logs a proxy of 0.0)
    run = make_run(tmp_path, {0: eval_rows([None] * 3, [0.0] * 3), 10: eval_rows([None] * 3, [0.0] * 3)})
    result = analyze_policy_outcome(run, "policy")
    assert result.metrics() == ["kl", "length", "eos_rate"]
    assert levels(result)["gold reward gain"] == "warn"
    assert [label for label, _ in result.headlines()] == ["KL to reference, final"]
    assert "gold" not in set(analyze_policy_trends(run, "policy").df["metric"])


# --------------------------------------------------------------------------- trends


def test_trends_give_each_evaluation_and_flag_a_gold_peak_with_a_rising_proxy(tmp_path):
    rng = np.random.default_rng(3)
    base = rng.normal(0.0, 0.3, 30)
    noise = [rng.normal(0.0, 0.05, 30) for _ in range(3)]
    run = make_run(
        tmp_path,
        {
            0: eval_rows(list(base), list(base)),
            10: eval_rows(list(base + 0.5 + noise[0]), list(base + 1.0)),  # gold peaks here ...
            20: eval_rows(list(base + 0.1 + noise[1]), list(base + 2.0 + noise[2])),  # ... and falls while the proxy climbs
        },
    )
    result = analyze_policy_trends(run, "policy")
    gold = result.df[result.df["metric"] == "gold"].set_index("step")
    assert list(gold.index) == [0, 10, 20]
    assert gold.loc[10, "mean"] == pytest.approx(float(np.mean(base + 0.5 + noise[0])))
    assert gold.loc[10, "sem"] == pytest.approx(float(np.std(base + 0.5 + noise[0], ddof=1) / math.sqrt(30)))
    assert gold.loc[20, "n"] == 30
    verdict = result.verdicts[0]
    assert verdict.check == "gold peak before the end" and verdict.level == "flag"
    assert "step 10" in verdict.evidence


def test_trends_of_a_steadily_improving_policy_are_ok(tmp_path):
    base = np.linspace(-1, 1, 20)
    run = make_run(tmp_path, {s: eval_rows(list(base + s / 10)) for s in (0, 10, 20)})
    assert analyze_policy_trends(run, "policy").verdicts[0].level == "ok"


# --------------------------------------------------------------------------- sample completions


def test_samples_choose_the_largest_changes_then_random_ones_deterministically():
    import pandas as pd

    changes = pd.Series([0.1, 2.0, -3.0, 0.0, 1.0, -1.0, 0.2, 0.3], index=[f"p{i}#0" for i in range(8)])
    chosen = choose_samples(changes, 6, seed=0, by="gold")
    assert chosen[:4] == [
        ("p1#0", "largest gold gain"),
        ("p4#0", "largest gold gain"),
        ("p2#0", "largest gold drop"),
        ("p5#0", "largest gold drop"),
    ]
    assert [reason for _, reason in chosen[4:]] == ["random (seed 0)"] * 2
    assert len({key for key, _ in chosen}) == 6
    assert choose_samples(changes, 6, seed=0, by="gold") == chosen
    assert len(choose_samples(changes[:2], 6, seed=0, by="gold")) == 2


def test_sample_heatmap_carries_each_token_kl_and_escapes_hostile_text(tmp_path):
    kl_final = [0.125, -0.5, 1.75, 0.0625]
    ids_final = [3, 2, 4, 0]  # w0, the hostile token, w1, EOS
    run = make_run(
        tmp_path,
        {
            0: eval_rows([0.0, 1.0], completion_ids=[[3, 0], [5, 0]]),
            10: eval_rows(
                [2.0, 1.0],
                kl=[kl_final, [0.25, 0.0]],
                completion_ids=[ids_final, [5, 0]],
                completions=[f"w0 {HOSTILE} w1", "w2"],
            ),
        },
        checkpoint=True,
    )
    result = analyze_sample_completions(run, "policy")
    final = result.df[(result.df["policy"] == "final") & (result.df["prompt_id"] == "p0")].iloc[0]
    assert list(final["tokens"]) == ["w0", " " + HOSTILE, " w1", " <eos>"]
    assert list(final["kl_per_token"]) == kl_final
    assert final["reason"] == "largest gold gain" and final["gold"] == 2.0
    html = str(result.to_html())
    assert HOSTILE not in html and "<img" not in html and "<script" not in html.lower()
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    for text, value in zip(
        ["w0", "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;", "w1", "&lt;eos&gt;"], ["0.125", "-0.5", "1.75", "0.0625"]
    ):
        assert f'title="{text}: KL = {value}"' in html
    assert 'class="side"' in html and "style=" not in html


# --------------------------------------------------------------------------- registry and cache


def test_all_three_come_back_from_the_cache_unchanged(tmp_path):
    rng = np.random.default_rng(4)
    start = rng.normal(0.0, 1.0, 8)
    run = make_run(
        tmp_path,
        {0: eval_rows(list(start)), 10: eval_rows(list(start + 0.5), kl=[[0.5 * j for j in range(4)]] * 8)},
        checkpoint=True,
    )
    for name in ("policy.outcome", "policy.trends", "policy.samples"):
        task = Task(get_analysis(name), "policy")
        first, second = run_task(run, task), run_task(run, task)
        assert (first.status, second.status) == ("computed", "cached"), name
        assert get_analysis(name).section == "policy"
        assert str(second.result.to_html()) == str(first.result.to_html()), name
        assert second.result.headlines() == first.result.headlines()
        assert [v.level for v in second.result.verdicts] == [v.level for v in first.result.verdicts]


def test_a_policy_stage_without_evaluation_samples_is_skipped_with_the_reason(tmp_path):
    writer = RunWriter.create(tmp_path / "run", name="run", task="sentiment", seed=0, config={})
    writer.add_stage("policy", "policy")
    outcome = run_task(Run.open(writer.path), Task(get_analysis("policy.outcome"), "policy"))
    assert outcome.status == "skipped" and "logged no evaluation samples" in outcome.reason
