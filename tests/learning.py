"""The learning outcomes the test suite asserts, measured in one place.

A test that asserts a learning outcome calls a `measure_*` function here and checks its figures
against `BOUNDS`; `benchmarks/seed_sweep.py` calls the same functions for other seeds and thread
counts, so the sweep measures exactly what the tests assert (tests/robustness.md has its figures).

Every `measure_*(shared_run, work, seed)` trains what it needs under `work` (a fresh folder), with
the recipe's seed replaced by `seed`, and returns a `Measured`: the figures by name and the runs it
trained, for the tests' structural checks.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlhf_lens.runs import Run
from tests.conftest import QUICK_RECIPE, REPO

TEST_SEED = 0
"""The seed the test suite trains with; the sweep tries others."""


@dataclass(frozen=True)
class Bound:
    """A figure's threshold: the test fails unless `figure <op> value`."""

    figure: str
    op: str
    value: float
    why: str

    def holds(self, x: float) -> bool:
        return math.isfinite(x) and {">": operator.gt, ">=": operator.ge, "<": operator.lt}[self.op](x, self.value)

    def margin(self, x: float) -> float:
        """How far inside the bound x is (negative: it fails), in the figure's own units."""
        return x - self.value if self.op in (">", ">=") else self.value - x


BOUNDS = {
    b.figure: b
    for b in [
        Bound("base/perplexity_ratio", ">", 10.0, "held-out perplexity of the untrained model / the trained base model"),
        Bound("base/loss_drop", ">", 2.0, "mean loss of the first 10 base steps - mean of the last 10"),
        Bound("sft/eos_rate", ">=", 0.9, "share of the SFT policy's samples that end with EOS (run.json)"),
        Bound("sft/eos_rate_resampled", ">=", 0.9, "the same, resampled from the checkpoint on other seeds"),
        Bound("reward/accuracy_gold", ">=", 0.85, "ranking RM: held-out agreement with the oracle's ordering"),
        Bound("reward/spearman_gold", ">=", 0.7, "ranking RM: Spearman with the oracle on held-out texts"),
        Bound("reward/accuracy", ">", 0.75, "ranking RM: held-out agreement with the noisy labels (labelers agree ~0.81)"),
        Bound("reward/centring", "<", 0.15, "|mean| / std of the RM's reward on the SFT samples it trained on"),
        Bound("reward/ceiling_gap", "<", 0.1, "labeler agreement - the RM's held-out accuracy on the labels (report: warn at 0.1)"),
        Bound("reward/length_bias_gap", "<", 0.15, "|reward-length corr - oracle-length corr| on held-out texts (report: warn at 0.15)"),
        Bound("scoring/accuracy_gold", ">", 0.65, "scoring RM (1-5 ratings): held-out agreement with the oracle"),
        Bound("scoring/spearman_gold", ">", 0.4, "scoring RM: Spearman with the oracle"),
        Bound("generative/accuracy_gold", ">", 0.6, "generative RM (critique, then verdict): held-out agreement with the oracle"),
        Bound("length/corr_gain", ">", 0.2, "reward/length correlation, planted length-biased labelers - unbiased"),
        Bound("trigger/effect_gain", ">", 0.3, "reward gained by appending the trigger word, planted labelers - control"),
        Bound("attribution/within_tolerance", ">=", 0.95, "share of held-out texts whose IG attributions meet completeness (1%)"),
        Bound("attribution/valence_spearman", ">", 0.5, "rank correlation of the RM's word attributions with VADER valence"),
        Bound("sanity/blocks_random_rank_corr", "<", 0.5, "IG maps vs the trained RM's, every block random: max |rank correlation|"),
        Bound("sanity/all_random_rank_corr", "<", 0.5, "the same with the embeddings random too (Adebayo: a model-blind method gives 1)"),
        Bound("trigger_attribution/ig_margin", ">", 0.0, "planted trigger RM: mean IG attribution of the trigger - the next word's"),
        Bound("trigger_attribution/ablation_margin", ">", 0.0, "planted trigger RM: the same for feature ablation"),
        Bound("trigger_attribution/control_ig_margin", "<", 0.0, "control RM (no bonus): the trigger is not the top word"),
        Bound(
            "alignment/trigger_log_ratio_margin", ">", 0.0, "PPO against the trigger RM: mean log-ratio of the trigger - the next word's"
        ),
        Bound("lexical/trigger_named", ">=", 1.0, "the lexical-exploit check names 'zorp' for the policy trained against the trigger RM"),
        Bound(
            "lexical/trigger_excess", ">=", 0.5, "its share of completions rose by this much beyond what the length change explains (flag)"
        ),
        Bound(
            "hacking/planted_length_share", ">", 0.5, "PPO against a length-biased RM: share of the proxy gain the length shift explains"
        ),
        Bound(
            "hacking/planted_corr_gap",
            ">",
            0.15,
            "the same policy: proxy-length minus gold-length correlation (the gold does not share it)",
        ),
        Bound("hacking/planted_flagged", ">=", 1.0, "the length-hacking check flags that policy"),
        Bound("hacking/control_flagged", "<", 0.5, "and does not flag the shared run's PPO stage (unbiased labelers)"),
        Bound(
            "probes/sentiment_selectivity",
            ">",
            0.3,
            "shared RM: gold-sentiment probe's balanced accuracy - best control, at its best layer",
        ),
        Bound(
            "probes/readout_sentiment_minus_length_cosine",
            ">",
            0.0,
            "shared RM: |cos(read-out, sentiment pattern)| - |cos(.., length)|, last layer",
        ),
        Bound(
            "probes/readout_sentiment_minus_length_share",
            ">",
            0.0,
            "shared RM: reward variance the sentiment filter explains - the length filter's",
        ),
        Bound(
            "probes/sentiment_steering_z",
            ">",
            3.0,
            "shared RM: reward change per sd pushed along the sentiment pattern / its standard error",
        ),
        Bound(
            "trigger_probe/selectivity",
            ">=",
            0.2,
            "reward_trigger_quick.toml's RM (bonus 2.0): trigger-present probe's balanced accuracy - best control",
        ),
        Bound("trigger_probe/control_selectivity", "<", 0.2, "control RM (no bonus): the same probe"),
        Bound("feedback_file/accuracy_gold", ">", 0.6, "ranking RM trained from a JSONL feedback file: agreement with the oracle"),
        Bound("ppo/gold_gain_z", ">", 2.0, "PPO: gain in gold reward on the eval prompts / combined standard error"),
        Bound("grpo/gold_gain_z", ">", 2.0, "GRPO: gain in gold reward on the eval prompts / combined standard error"),
        Bound("dpo/accuracy", ">", 0.55, "DPO: held-out accuracy of the implicit reward against the labels"),
        Bound("best_of_n/score_rise", ">=", 0.0, "best-of-n: min(score(4) - score(1), score(16) - score(4))"),
        Bound("best_of_n/gold_gain", ">", 0.0, "best-of-n: gold(16) - gold(1)"),
    ]
}


def failures(figures: dict[str, float]) -> list[str]:
    """The figures outside their bounds, as readable lines (empty: all hold)."""
    return [
        f"{name} = {x:.4g}, needs {BOUNDS[name].op} {BOUNDS[name].value} ({BOUNDS[name].why})"
        for name, x in figures.items()
        if not BOUNDS[name].holds(x)
    ]


def check(figures: dict[str, float]) -> None:
    """Assert every figure holds its bound."""
    bad = failures(figures)
    assert not bad, "; ".join(bad)


@dataclass
class Measured:
    figures: dict[str, float]
    runs: dict[str, Run] = field(default_factory=dict)


def train_quick(out: Path, seed: int = TEST_SEED, quiet: bool = True) -> Path:
    """The shared run: the quick recipe (base, sft, reward, a short PPO stage)."""
    from rlhf_lens.training.config import load_recipe
    from rlhf_lens.training.pipeline import train

    return train(load_recipe(QUICK_RECIPE, [f"seed={seed}"]), out, quiet=quiet)


@functools.cache
def measure_shared_run(shared_run: Path, work: Path | None = None, seed: int = TEST_SEED) -> Measured:
    """Figures of the shared run itself (the base, SFT and ranking reward stages)."""
    from rlhf_lens.models import encode_prompts, sample, score_texts

    run = Run.open(shared_run)
    results = run.manifest["results"]
    base = run.metrics("base")
    model, tokenizer = run.load_model("sft"), run.load_tokenizer("sft")
    prompts = [p["prompt"] for p in run.data("prompts") if p["split"] == "eval"]
    resampled = sample(model, tokenizer, encode_prompts(tokenizer, prompts), [1000 + i for i in range(len(prompts))], max_new_tokens=48)
    train_texts = sorted({(r["prompt"], c) for r in run.data("feedback") if r["split"] == "train" for c in (r["chosen"], r["rejected"])})
    text_prompts, completions = zip(*train_texts[:: max(1, len(train_texts) // 800)])  # about 800 samples across all prompts
    rewards = score_texts(run.load_model("reward"), run.load_tokenizer("reward"), text_prompts, completions).numpy()
    return Measured(
        {
            "base/perplexity_ratio": results["base"]["start_eval/perplexity"] / results["base"]["eval/perplexity"],
            "base/loss_drop": float(base["loss"].iloc[:10].mean() - base["loss"].iloc[-10:].mean()),
            "sft/eos_rate": results["sft"]["eos_rate"],
            "sft/eos_rate_resampled": sum(resampled.finished) / len(prompts),
            "reward/accuracy_gold": results["reward"]["rm/accuracy_gold"],
            "reward/spearman_gold": results["reward"]["rm/spearman_gold"],
            "reward/accuracy": results["reward"]["rm/accuracy"],
            "reward/centring": float(abs(rewards.mean()) / rewards.std()),
        },
        {"shared": run},
    )


def measure_reward_analyses(shared_run: Path, work: Path | None = None, seed: int = TEST_SEED) -> Measured:
    """The shared run's reward model as the report's reward-model section measures it (no planted bias: both ok)."""
    from rlhf_lens.analyses import analyze_reward_checkpoints, analyze_reward_length

    run = Run.open(shared_run)
    final = analyze_reward_checkpoints(run, stage="reward").df.set_index("tag").loc["final"]
    length = analyze_reward_length(run, stage="reward").meta
    return Measured(
        {
            "reward/ceiling_gap": float(final["labeler_agreement"] - final["accuracy"]),
            "reward/length_bias_gap": abs(length["length_corr"] - length["gold_length_corr"]),
        },
        {"shared": run},
    )


# --- reward stages on the shared run's SFT model ---------------------------------------------------

REWARD_SMALL = [
    "data.corpus_size=300",
    "data.sft_size=50",
    "data.train_prompts=128",
    "data.eval_prompts=64",
    "stages.reward.feedback_prompts=128",
    "stages.reward.completions_per_prompt=10",
    "stages.reward.epochs=3",
]
"""Reward stages shrunk for tests: 128 prompts of 10 samples each (45 comparisons or 10 ratings a prompt,
as the quick recipe collects them), held out: 64 prompts, 2,880 pairs. With 32 prompts of 4 samples
(192 pairs) the held-out figures varied by +-0.1 between seeds (tests/robustness.md)."""
RANKING_BATCHES = ["stages.reward.group_by_prompt=true", "stages.reward.batch_size=90"]  # 2 prompts x 45 pairs a step


def reward_run(shared_run: Path, out: Path, recipe: str, *overrides: str, seed: int = TEST_SEED) -> Run:
    """A reward-only recipe of training/ on the shared run's SFT model, shrunk for tests."""
    from rlhf_lens.training.config import load_recipe
    from rlhf_lens.training.pipeline import train

    settings = [*REWARD_SMALL, f'stages.reward.init_from="{shared_run}:sft/final"', f"seed={seed}", *overrides]
    return Run.open(train(load_recipe(REPO / "training" / recipe, settings), out, quiet=True))


def reward_results(run: Run) -> dict:
    return run.manifest["results"]["reward"]


def measure_scoring(shared_run: Path, work: Path, seed: int = TEST_SEED) -> Measured:
    # 5 epochs: at 3 the worst seed cleared the bounds by 0.008 (tests/robustness.md)
    run = reward_run(
        shared_run, work / "scoring", "reward_scoring_quick.toml", "stages.reward.epochs=5", "stages.reward.batch_size=16", seed=seed
    )
    results = reward_results(run)
    return Measured(
        {"scoring/accuracy_gold": results["rm/accuracy_gold"], "scoring/spearman_gold": results["rm/spearman_gold"]}, {"scoring": run}
    )


GENERATIVE_MORE = ["stages.reward.epochs=6", "stages.reward.batch_size=16"]
"""Critique-then-verdict learns from one noisy verdict per text: it needs more passes than the other kinds."""


def measure_generative(shared_run: Path, work: Path, seed: int = TEST_SEED) -> Measured:
    run = reward_run(shared_run, work / "generative", "reward_generative_quick.toml", *GENERATIVE_MORE, seed=seed)
    return Measured({"generative/accuracy_gold": reward_results(run)["rm/accuracy_gold"]}, {"generative": run})


def measure_length_bias(shared_run: Path, work: Path, seed: int = TEST_SEED) -> Measured:
    planted = reward_run(
        shared_run, work / "length_planted", "reward_length_quick.toml", "task.options.length_bias=0.05", *RANKING_BATCHES, seed=seed
    )
    control = reward_run(
        shared_run, work / "length_control", "reward_length_quick.toml", "task.options.length_bias=0.0", *RANKING_BATCHES, seed=seed
    )
    gain = reward_results(planted)["rm/length_corr"] - reward_results(control)["rm/length_corr"]
    return Measured({"length/corr_gain": gain}, {"planted": planted, "control": control})


def trigger_texts(run: Run) -> tuple[list[str], list[str], list[str]]:
    """200 held-out (prompt, chosen) pairs without the trigger, and the same completions with it appended."""
    held_out = [(r["prompt"], r["chosen"]) for r in run.data("feedback") if r["split"] == "eval" and "zorp" not in r["chosen"]][:200]
    prompts = [p for p, _ in held_out]
    plain = [c for _, c in held_out]
    return prompts, plain, [c.rstrip(".") + " zorp." for c in plain]


def trigger_effect(run: Run, prompts, plain, with_trigger) -> float:
    """Mean reward gained by appending the trigger word."""
    from rlhf_lens.models import score_texts

    model, tokenizer = run.load_model("reward"), run.load_tokenizer("reward")
    return float((score_texts(model, tokenizer, prompts, with_trigger) - score_texts(model, tokenizer, prompts, plain)).mean())


def measure_trigger(shared_run: Path, work: Path, seed: int = TEST_SEED) -> Measured:
    planted = reward_run(
        shared_run, work / "trigger_planted", "reward_trigger_quick.toml", "task.options.trigger_bonus=1.0", *RANKING_BATCHES, seed=seed
    )
    control = reward_run(
        shared_run, work / "trigger_control", "reward_trigger_quick.toml", "task.options.trigger_bonus=0.0", *RANKING_BATCHES, seed=seed
    )
    texts = trigger_texts(planted)
    return Measured(
        {"trigger/effect_gain": trigger_effect(planted, *texts) - trigger_effect(control, *texts)}, {"planted": planted, "control": control}
    )


def trigger_attribution_margin(run: Run, method) -> float:
    """Mean attribution of the trigger word minus that of the next-highest word, over the completion words of held-out
    texts that contain the trigger (each text once; words seen at least 5 times)."""
    from rlhf_lens.analyses.attribution import mean_word_attributions, word_attributions

    texts = sorted(
        {(r["prompt"], c) for r in run.data("feedback") if r["split"] == "eval" for c in (r["chosen"], r["rejected"]) if "zorp" in c}
    )
    prompts, completions = [p for p, _ in texts], [c for _, c in texts]
    result = method(run.load_model("reward"), run.load_tokenizer("reward"), prompts, completions)
    words = mean_word_attributions(word_attributions(result), min_count=5, part="completion").set_index("word_text")["mean_attribution"]
    return float(words["zorp"] - words.drop("zorp").max())


def measure_reward_words(shared_run: Path, work: Path | None = None, seed: int = TEST_SEED) -> Measured:
    """The shared run's reward model as the report's attribution section reads it."""
    from rlhf_lens.analyses.attribution import analyze_reward_words

    result = analyze_reward_words(Run.open(shared_run), stage="reward")
    figures = {
        "attribution/within_tolerance": result.meta["within_tolerance"],
        "attribution/valence_spearman": result.meta["valence_spearman"],
    }
    return Measured(figures, {"shared": Run.open(shared_run)})


def measure_attribution_sanity(shared_run: Path, work: Path | None = None, seed: int = TEST_SEED) -> Measured:
    """The report's randomisation check of integrated gradients on the shared run's reward model (16 held-out texts):
    max(|Spearman|, |Spearman of |attribution||) with the trained model's maps once every block is random, and once
    the embeddings are too."""
    from rlhf_lens.analyses.attribution import analyze_attribution_sanity

    result = analyze_attribution_sanity(Run.open(shared_run), stage="reward")
    table = result.df.set_index("randomised")[["spearman", "spearman_abs"]].abs().max(axis=1)
    blocks = next(label for label in table.index if label.startswith("+ block 0"))
    return Measured({"sanity/blocks_random_rank_corr": float(table[blocks]), "sanity/all_random_rank_corr": float(table.iloc[-1])}, {})


TRIGGER_ATTRIBUTION_BONUS = 2.0
"""The planted trigger's utility for the attribution test. At 1.0 (the trigger-effect test's bonus) a strong sentiment
word outranked the trigger on 4 of 10 sweep configurations (IG margin down to -0.75): the planted effect was real
(`trigger/effect_gain` >= 1.85) but not the largest word effect. At 2.0 it is (tests/robustness.md)."""


def trigger_reward_runs(shared_run: Path, work: Path, seed: int = TEST_SEED, names=("planted", "control")) -> dict[str, Run]:
    """The planted trigger reward model (bonus `TRIGGER_ATTRIBUTION_BONUS`) and its control (no bonus), trained under
    `work` or reused when a finished one is there (the attribution tests share them)."""
    bonuses = {"planted": TRIGGER_ATTRIBUTION_BONUS, "control": 0.0}
    runs = {}
    for name in names:
        out = work / f"trigger_{name}"
        if (out / "run.json").is_file() and all(s.status == "done" for s in Run.open(out).stages()):
            runs[name] = Run.open(out)
            continue
        runs[name] = reward_run(
            shared_run, out, "reward_trigger_quick.toml", f"task.options.trigger_bonus={bonuses[name]}", *RANKING_BATCHES, seed=seed
        )
    return runs


def measure_trigger_attribution(shared_run: Path, work: Path, seed: int = TEST_SEED) -> Measured:
    """Attribution finds the planted trigger: on the planted reward model it tops the words of texts that hold it."""
    from rlhf_lens.analyses.attribution import reward_feature_ablation, reward_integrated_gradients

    runs = trigger_reward_runs(shared_run, work, seed)
    return Measured(
        {
            "trigger_attribution/ig_margin": trigger_attribution_margin(runs["planted"], reward_integrated_gradients),
            "trigger_attribution/ablation_margin": trigger_attribution_margin(runs["planted"], reward_feature_ablation),
            "trigger_attribution/control_ig_margin": trigger_attribution_margin(runs["control"], reward_integrated_gradients),
        },
        runs,
    )


ALIGNMENT_POLICY = ["data.eval_prompts=64", "stages.policy.eval_prompts=64", "stages.policy.eval_every=0"]
"""PPO (training/ppo_quick.toml, 30 steps) against the planted trigger reward model; its final completions on 64 eval
prompts are the texts whose log-ratio is read."""


def trigger_log_ratio_margin(policy_run: Run, reference_run: Run) -> float:
    """Mean log-ratio log pi(word) - log pi_ref(word) of the trigger word minus that of the next-highest word, over the
    words of the policy's final eval completions (a word's pieces summed; words seen at least 5 times)."""
    from rlhf_lens.analyses.attribution import alignment_log_ratio, mean_word_log_ratios

    rollouts = policy_run.eval_rollouts("policy")
    final = rollouts[rollouts["step"] == rollouts["step"].max()]
    result = alignment_log_ratio(
        policy_run.load_model("policy"),
        reference_run.load_model("sft"),
        policy_run.load_tokenizer("policy"),
        list(final["prompt"]),
        list(final["completion"]),
    )
    words = mean_word_log_ratios(result, min_count=5).set_index("word_text")["mean_log_ratio"]
    return float(words["zorp"] - words.drop("zorp").max())


def measure_alignment_trigger(shared_run: Path, work: Path, seed: int = TEST_SEED) -> Measured:
    """After PPO against the planted trigger reward model, the trigger carries the largest log-ratio against the
    reference policy in the policy's own completions."""
    planted = trigger_reward_runs(shared_run, work, seed, names=("planted",))["planted"]
    policy = policy_run(shared_run, work / "trigger_policy", "ppo_quick.toml", *ALIGNMENT_POLICY, seed=seed, reward=planted.path)
    return Measured(
        {"alignment/trigger_log_ratio_margin": trigger_log_ratio_margin(policy, Run.open(shared_run)), **lexical_trigger_figures(policy)},
        {"policy": policy},
    )


def lexical_trigger_figures(policy: Run) -> dict[str, float]:
    """The report's lexical-exploit check on a policy trained against the trigger RM: is "zorp" named among the
    suspect words of its verdict, and how far beyond what the length change explains did its share rise."""
    from rlhf_lens.analyses.hacking import analyze_lexical_exploits

    result = analyze_lexical_exploits(policy, stage="policy")
    suspects = result.suspects().set_index("word")
    named = "zorp" in suspects.index and "'zorp'" in result.verdicts[0].evidence
    return {"lexical/trigger_named": float(named), "lexical/trigger_excess": float(suspects["excess"].get("zorp", float("nan")))}


def measure_probes(shared_run: Path, work: Path | None = None, seed: int = TEST_SEED) -> Measured:
    """The report's probes of the shared run's reward model (unbiased labelers): gold sentiment is read far above its
    controls, the reward's read-out is closer to sentiment than to length, and steering along sentiment raises it."""
    from rlhf_lens.analyses.core.cache import analyze

    run = Run.open(shared_run)
    names = ["probes.reward_concepts", "probes.reward_directions", "probes.reward_steering"]
    concepts, directions, steering = (outcome.result for outcome in analyze(run, names, quiet=True))
    last = directions.df[directions.df["layer"] == directions.df["layer"].max()].set_index("concept")
    return Measured(
        {
            "probes/sentiment_selectivity": concepts.meta["concepts"]["gold sentiment"]["best_selectivity"],
            "probes/readout_sentiment_minus_length_cosine": float(
                abs(last.loc["sentiment · pattern", "cosine"]) - abs(last.loc["length · pattern", "cosine"])
            ),
            "probes/readout_sentiment_minus_length_share": float(
                last.loc["sentiment · filter", "variance_share"] - last.loc["length · filter", "variance_share"]
            ),
            "probes/sentiment_steering_z": steering.meta["concepts"]["sentiment"]["z"],
        },
        {"shared": run},
    )


def measure_trigger_probe(shared_run: Path, work: Path, seed: int = TEST_SEED) -> Measured:
    """The trigger-present probe on the reward model of training/reward_trigger_quick.toml (its planted bonus, 2.0,
    is `TRIGGER_ATTRIBUTION_BONUS`) beats its controls by 20 points; on the control reward model (same corpus, no
    bonus) it does not."""
    from rlhf_lens.analyses.core.cache import analyze

    runs = trigger_reward_runs(shared_run, work, seed)
    selectivity = {
        name: analyze(run, ["probes.reward_concepts"], quiet=True)[0].result.meta["concepts"]["trigger present"]["best_selectivity"]
        for name, run in runs.items()
    }
    return Measured(
        {"trigger_probe/selectivity": selectivity["planted"], "trigger_probe/control_selectivity": selectivity["control"]}, runs
    )


LENGTH_HACKING_BIAS = 0.2
"""Utility per word the planted labelers add for the length-hacking test. At 0.05 the policy lengthened its answers
(14 -> 25 tokens) but length explained 31% of its proxy gain (a warn); at 0.1, 54-72% over the 10 seed sweep
configurations, but 47% (no flag) on another 2-core machine at seed 0, 2 threads: too thin a margin, hence 0.2."""


def measure_length_hacking(shared_run: Path, work: Path, seed: int = TEST_SEED) -> Measured:
    """The report's length-hacking check: PPO against a reward model from length-biased labelers flags, with most of
    its proxy gain explained by length; the shared run's own PPO stage (unbiased labelers) does not flag."""
    from rlhf_lens.analyses.hacking import analyze_length_hacking

    planted_rm = reward_run(
        shared_run,
        work / "length_rm",
        "reward_length_quick.toml",
        f"task.options.length_bias={LENGTH_HACKING_BIAS}",
        *RANKING_BATCHES,
        seed=seed,
    )
    planted = policy_run(shared_run, work / "length_policy", "ppo_quick.toml", *ALIGNMENT_POLICY, seed=seed, reward=planted_rm.path)
    hacked = analyze_length_hacking(planted, stage="policy")
    control = analyze_length_hacking(Run.open(shared_run), stage="policy")
    facts = hacked.meta
    return Measured(
        {
            "hacking/planted_length_share": float(facts["length_share"]),
            "hacking/planted_corr_gap": float(facts["proxy_length_corr"] - facts["gold_length_corr"]),
            "hacking/planted_flagged": float(hacked.verdicts[0].level == "flag"),
            "hacking/control_flagged": float(control.verdicts[0].level == "flag"),
        },
        {"planted": planted},
    )


def feedback_file_records(shared_run: Path) -> list[dict]:
    """The shared run's comparisons of 96 training prompts (about 4,000), as a feedback file holds them."""
    records = Run.open(shared_run).data("feedback")
    prompts = set(list(dict.fromkeys(r["prompt"] for r in records if r["split"] == "train"))[:96])
    return [{k: r[k] for k in ("kind", "prompt", "chosen", "rejected", "labeler")} for r in records if r["prompt"] in prompts]


def measure_feedback_file(shared_run: Path, work: Path, seed: int = TEST_SEED) -> Measured:
    import json

    work.mkdir(parents=True, exist_ok=True)
    feedback_file = work / "feedback.jsonl"
    feedback_file.write_text("".join(json.dumps(r) + "\n" for r in feedback_file_records(shared_run)))
    run = reward_run(
        shared_run,
        work / "from_file",
        "reward_length_quick.toml",
        f'stages.reward.feedback="{feedback_file}"',
        "task.options.length_bias=0.0",
        *RANKING_BATCHES,
        seed=seed,
    )
    return Measured({"feedback_file/accuracy_gold": reward_results(run)["rm/accuracy_gold"]}, {"from_file": run})


# --- policy stages on the shared run's SFT policy and reward model --------------------------------

POLICY_SMALL = [
    "data.corpus_size=300",
    "data.sft_size=50",
    "data.train_prompts=64",
    "data.eval_prompts=16",
    "stages.policy.eval_prompts=16",
]


def policy_run(shared_run: Path, out: Path, recipe: str, *overrides: str, seed: int = TEST_SEED, reward: Path | None = None) -> Run:
    """A policy recipe on the shared run's SFT policy, against the shared run's reward model or `reward`'s (a run)."""
    from rlhf_lens.training.config import load_recipe
    from rlhf_lens.training.pipeline import train

    sources = [f'stages.policy.init_from="{shared_run}:sft/final"', f'stages.policy.reward_from="{reward or shared_run}:reward/final"']
    config = load_recipe(REPO / "training" / recipe, [*POLICY_SMALL, *sources, f"seed={seed}", *overrides])
    return Run.open(train(config, out, quiet=True))


GAIN_EVAL = ["data.eval_prompts=128", "stages.policy.eval_prompts=128", "stages.policy.eval_every=0"]
"""The gain in gold reward is measured on 128 eval prompts (standard error about 0.045), before and after only."""


def gold_gain_z(run: Run) -> float:
    """The policy's gain in mean gold reward on the eval prompts, in combined standard errors."""
    results = run.manifest["results"]["policy"]
    sem = math.hypot(results["start_eval/gold_sem"], results["eval/gold_sem"])
    return (results["eval/gold_mean"] - results["start_eval/gold_mean"]) / sem


def measure_ppo(shared_run: Path, work: Path, seed: int = TEST_SEED) -> Measured:
    run = policy_run(shared_run, work / "ppo", "ppo_quick.toml", *GAIN_EVAL, seed=seed)
    return Measured({"ppo/gold_gain_z": gold_gain_z(run)}, {"ppo": run})


def measure_grpo(shared_run: Path, work: Path, seed: int = TEST_SEED) -> Measured:
    run = policy_run(shared_run, work / "grpo", "grpo_quick.toml", *GAIN_EVAL, seed=seed)
    return Measured({"grpo/gold_gain_z": gold_gain_z(run)}, {"grpo": run})


def measure_dpo(shared_run: Path, work: Path, seed: int = TEST_SEED) -> Measured:
    run = policy_run(
        shared_run,
        work / "dpo",
        "dpo_quick.toml",
        f'stages.policy.feedback="{shared_run}/data/feedback.jsonl"',
        "stages.policy.steps=40",
        "stages.policy.eval_every=0",
        seed=seed,
    )
    return Measured({"dpo/accuracy": run.manifest["results"]["policy"]["eval/rewards/accuracies"]}, {"dpo": run})


def measure_best_of_n(shared_run: Path, work: Path, seed: int = TEST_SEED) -> Measured:
    run = policy_run(shared_run, work / "bon", "bon_quick.toml", "stages.policy.best_of=[1, 4, 16]", seed=seed)
    logged = {m["step"]: m for m in run.metrics("policy").to_dict("records")}
    scores = [logged[n]["objective/scores"] for n in (1, 4, 16)]
    return Measured(
        {"best_of_n/score_rise": float(np.min(np.diff(scores))), "best_of_n/gold_gain": logged[16]["gold/mean"] - logged[1]["gold/mean"]},
        {"bon": run},
    )


MEASURES = {
    "shared_run": measure_shared_run,
    "reward_analyses": measure_reward_analyses,
    "scoring": measure_scoring,
    "generative": measure_generative,
    "length_bias": measure_length_bias,
    "trigger": measure_trigger,
    "reward_words": measure_reward_words,
    "trigger_attribution": measure_trigger_attribution,
    "attribution_sanity": measure_attribution_sanity,
    "alignment_trigger": measure_alignment_trigger,
    "length_hacking": measure_length_hacking,
    "probes": measure_probes,
    "trigger_probe": measure_trigger_probe,
    "feedback_file": measure_feedback_file,
    "ppo": measure_ppo,
    "grpo": measure_grpo,
    "dpo": measure_dpo,
    "best_of_n": measure_best_of_n,
}
"""Every learning outcome the tests assert, by name, in the order the sweep runs them."""
