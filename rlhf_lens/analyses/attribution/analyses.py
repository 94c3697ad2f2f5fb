"""The attribution analyses a run gets from `rlhf-lens analyze` and the report (built on `attribution.reward`)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
from markupsafe import Markup

from rlhf_lens import views
from rlhf_lens.analyses._heldout import feedback_records, missing_heldout
from rlhf_lens.analyses.attribution.reward import RewardAttributionResult, reward_integrated_gradients
from rlhf_lens.analyses.attribution.words import mean_word_attributions, word_attributions
from rlhf_lens.analyses.core.registry import Needs, analysis, register_section
from rlhf_lens.analyses.core.result import Result
from rlhf_lens.analyses.core.verdict import Verdict
from rlhf_lens.runs import FINAL_TAG, Run

register_section(
    "attribution",
    "Attribution",
    order=45,
    intro="Which words drive each reward model's reward: integrated gradients of the reward (as the policy stage reads "
    "it) on the token embeddings of held-out texts, summed over each word's BPE pieces and averaged over its "
    "occurrences. On the built-in task the word ranking is compared with VADER's human valence ratings.",
)

TEXTS = 128
"""Held-out texts attributed per reward stage (a deterministic sample)."""
MIN_COUNT = 5
"""A word must occur this often among the attributed completions to be ranked."""
COMPLETE_SHARE = 0.95
"""Share of texts whose completeness error must be within tolerance (integrated gradients' own check)."""


class RewardWordsResult(Result):
    """Words of held-out completions ranked by their mean attribution to the reward model's reward. Columns:
    word_text (lower-cased, without punctuation), mean_attribution (reward units: the words' attributions sum,
    with the prompt's, to reward(text) - reward(all-pad baseline)), count (occurrences), valence (VADER's human
    rating in [-4, 4] on the built-in sentiment task, NaN for words it does not rate).
    `meta`: stage, tag, texts, within_tolerance (share of texts meeting completeness), mean_steps, valence_spearman
    (rank correlation of mean attribution with valence over the rated words), rated_words."""

    columns = ("word_text", "mean_attribution", "count", "valence")
    heading = "Words that drive the reward"

    def headlines(self) -> list[tuple[str, str]]:
        top = ", ".join(self.df["word_text"].head(5))
        out = [(f"top reward words ({self.meta.get('stage')})", top)]
        rho = self.meta.get("valence_spearman")
        if rho is not None and math.isfinite(rho):
            out.append(("word attribution vs VADER valence (Spearman)", f"{rho:.2f}"))
        return out

    def plot(self, ax=None, n: int = 12):
        """The `n` highest and `n` lowest words by mean attribution."""
        if ax is None:
            _, ax = views.new_figure(6.0, 0.22 * 2 * n + 1.2)
        shown = pd.concat([self.df.head(n), self.df.tail(n)]).drop_duplicates("word_text")
        y = np.arange(len(shown))[::-1]
        colours = ["tab:red" if v > 0 else "tab:blue" for v in shown["mean_attribution"]]
        ax.barh(y, shown["mean_attribution"], color=colours)
        ax.set_yticks(y, list(shown["word_text"]), fontsize=7)
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.set_xlabel("mean attribution to the reward (integrated gradients)")
        ax.set_title(f"highest and lowest words, {self.meta.get('stage')} ({self.meta.get('tag')})", fontsize=9)
        return ax

    def figures_html(self) -> Markup:
        return views.figure_html(self.plot().figure, f"words with the highest and lowest attribution, {self.meta.get('stage')}")

    def table_html(self) -> Markup:
        facts = views.key_values(
            [
                ("texts attributed", self.meta.get("texts")),
                ("within completeness tolerance", self.meta.get("within_tolerance")),
                ("mean interpolation steps", self.meta.get("mean_steps")),
                ("Spearman with VADER valence", self.meta.get("valence_spearman")),
                ("words VADER rates", self.meta.get("rated_words")),
            ]
        )
        return facts + views.details(f"All {len(self.df)} ranked words", views.table(self.df, max_rows=None))


def _generative(run: Run, stage: str | None) -> str | None:
    """Attribution reads scalar reward heads; the generative kind's verdict log-odds are not attributed yet."""
    missing = missing_heldout(run, stage)
    if missing:
        return missing
    if run.checkpoint(stage, _final(run, stage)).meta.get("reward_kind") == "generative":
        return "attribution of a generative reward model's verdict is not built yet (scalar reward heads only)"
    return None


def _final(run: Run, stage: str) -> str:
    tags = [c.tag for c in run.checkpoints(stage)]
    return FINAL_TAG if FINAL_TAG in tags else tags[-1]


@analysis(
    "attribution.reward_words",
    result=RewardWordsResult,
    section="attribution",
    needs=Needs(stage_kind="reward", checkpoints=True, data=("feedback",), requires=_generative),
    order=1,
)
def analyze_reward_words(run: Run, stage: str) -> RewardWordsResult:
    """Integrated gradients of the final reward checkpoint on up to 128 held-out texts of reward stage `stage`,
    summed per word; the words ranked by mean attribution, with VADER's valence beside them on the built-in task."""
    tag = _final(run, stage)
    prompts, completions = heldout_texts(run, stage, TEXTS)
    attributions = reward_integrated_gradients(run.load_model(stage, tag), run.load_tokenizer(stage, tag), prompts, completions)
    words = mean_word_attributions(word_attributions(attributions), min_count=MIN_COUNT, part="completion")
    valence = _valence(run)
    words["valence"] = [valence.get(w, math.nan) for w in words["word_text"]]
    texts = attributions.texts
    tolerance = 0.01 * (texts["reward"] - texts["baseline_reward"]).abs() + 1e-3
    within = float((texts["delta"].abs() <= tolerance).mean())
    rated = words.dropna(subset=["valence"])
    rho = float(rated["mean_attribution"].rank().corr(rated["valence"].rank())) if len(rated) >= 3 else math.nan
    meta = {"stage": stage, "tag": tag, "texts": len(texts), "within_tolerance": within, "mean_steps": float(texts["steps"].mean())}
    meta |= {"valence_spearman": rho, "rated_words": len(rated)}
    verdict = Verdict(
        "attribution completeness",
        "ok" if within >= COMPLETE_SHARE else "warn",
        f"{within:.0%} of {len(texts)} texts: the attributions sum to reward(text) - reward(baseline) within tolerance",
        f"warn when fewer than {COMPLETE_SHARE:.0%} of texts have |delta| <= 1% of the reward difference + 1e-3",
        value=within,
    )
    return RewardWordsResult(df=words.reset_index(drop=True), meta=meta, verdicts=(verdict,))


def heldout_texts(run: Run, stage: str, n: int) -> tuple[list[str], list[str]]:
    """Up to `n` distinct held-out (prompt, completion) texts of reward stage `stage`, a fixed sample."""
    texts = sorted(
        {
            (r["prompt"], c)
            for r in feedback_records(run)
            if r["stage"] == stage and r["split"] == "eval"
            for c in (r.get("chosen"), r.get("rejected"), r.get("completion"))
            if isinstance(c, str)
        }
    )
    if len(texts) > n:
        picked = np.random.default_rng(0).choice(len(texts), size=n, replace=False)
        texts = [texts[i] for i in sorted(picked)]
    return [p for p, _ in texts], [c for _, c in texts]


def _valence(run: Run) -> dict[str, float]:
    if run.task != "sentiment":
        return {}
    from rlhf_lens.tasks.sentiment import word_valence

    return word_valence()


# --------------------------------------------------------------------------- the policy's own completions

SAMPLES = 6
"""Completions of the final evaluation attributed per policy stage."""


def _reward_of_policy(run: Run, stage: str) -> tuple[str | None, str]:
    """(this run's reward stage the policy stage trained against, or None, and its recorded `reward_from`)."""
    reward_from = str(run.checkpoint(stage, _final(run, stage)).meta.get("reward_from", ""))
    parts = reward_from.replace("\\", "/").split("/")
    named = parts[-2] if len(parts) >= 2 else ""
    reward_stages = {s.name for s in run.stages("reward")}
    return (named if named in reward_stages else None), reward_from


def _policy_reward_missing(run: Run, stage: str | None) -> str | None:
    if not run.checkpoints(stage):
        return f"stage {stage!r} has no complete checkpoint"
    reward_stage, reward_from = _reward_of_policy(run, stage)
    if reward_stage is None:
        what = "the task's oracle" if reward_from == "gold" else (reward_from or "no reward model (DPO or best-of-n)")
        return f"stage {stage!r} trained against {what}, not a reward stage of this run"
    return _generative(run, reward_stage)


@analysis(
    "attribution.policy_samples",
    result=RewardAttributionResult,
    section="attribution",
    needs=Needs(stage_kind="policy", eval_rollouts=True, reward_stages=True, requires=_policy_reward_missing),
    order=2,
)
def analyze_policy_sample_attribution(run: Run, stage: str) -> RewardAttributionResult:
    """Integrated gradients of the reward model a policy stage trained against, on the final policy's own
    completions of the first eval prompts: which of the words it learned to write earn its reward."""
    reward_stage, _ = _reward_of_policy(run, stage)
    samples = run.eval_rollouts(stage)
    final = samples[samples["step"] == samples["step"].max()].sort_values("prompt_id").head(SAMPLES)
    tag = _final(run, reward_stage)
    result = reward_integrated_gradients(
        run.load_model(reward_stage, tag), run.load_tokenizer(reward_stage, tag), list(final["prompt"]), list(final["completion"])
    )
    return replace(result, meta={**result.meta, "stage": stage, "reward_stage": reward_stage})
