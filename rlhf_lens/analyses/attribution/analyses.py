"""The attribution analyses a run gets from `rlhf-lens analyze` and the report (built on `attribution.reward`)."""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import pandas as pd
from markupsafe import Markup

from rlhf_lens import views
from rlhf_lens.analyses._heldout import feedback_records, missing_heldout
from rlhf_lens.analyses._reference import final_tag, reference_missing
from rlhf_lens.analyses.attribution.generative import generative_integrated_gradients
from rlhf_lens.analyses.attribution.over_training import OverTrainingResult, _default_method, attribution_over_training, policy_reference
from rlhf_lens.analyses.attribution.policy import AlignmentLogRatioResult, alignment_log_ratio, mean_word_log_ratios
from rlhf_lens.analyses.attribution.reward import RewardAttributionResult, reward_integrated_gradients
from rlhf_lens.analyses.attribution.sanity import SanityCheckResult, randomisation_sanity_check
from rlhf_lens.analyses.attribution.words import mean_word_attributions, word_attributions
from rlhf_lens.analyses.core.registry import Needs, analysis, register_section
from rlhf_lens.analyses.core.result import Result
from rlhf_lens.analyses.core.verdict import Verdict
from rlhf_lens.models import critique_length
from rlhf_lens.runs import Run

register_section(
    "attribution",
    "Attribution",
    order=45,
    intro="Which words drive each reward model's reward: integrated gradients of the reward (as the policy stage reads "
    "it) on the token embeddings of held-out texts, summed over each word's BPE pieces and averaged over its "
    "occurrences; on the built-in task the word ranking is compared with VADER's human valence ratings. Then the reward "
    "attribution of the policy's own completions; a sanity check of the method (Adebayo et al., 2018: do the maps change "
    "when the model's weights are randomised?); the word attributions at each checkpoint of the reward stage; and where "
    "alignment changed the policy: the log-ratio of each token of its completions against the policy it started from.",
)


class RewardWordsResult(Result):
    """Words of held-out completions ranked by their mean attribution to the reward model's reward. Columns:
    word_text (lower-cased, without punctuation), mean_attribution (reward units: the words' attributions sum,
    with the prompt's, to reward(text) - reward(all-pad baseline)), count (occurrences), valence (VADER's human
    rating in [-4, 4] on the built-in sentiment task, NaN for words it does not rate).
    `meta`: stage, tag, texts, within_tolerance (share of texts meeting completeness), mean_steps, valence_spearman
    (rank correlation of mean attribution with valence over the rated words), rated_words, and the settings used:
    min_count, complete_share, first_steps, abs_tolerance."""

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
        return views.figure_html(
            self.plot().figure,
            f"the 12 words with the highest and the 12 with the lowest mean attribution (words seen at least {self.meta.get('min_count')} times "
            f"in {self.meta.get('texts')} held-out completions), stage {self.meta.get('stage')}",
        )

    def table_html(self) -> Markup:
        facts = views.key_values(
            [
                ("texts attributed", self.meta.get("texts")),
                ("within completeness tolerance", _percent(self.meta.get("within_tolerance"))),
                ("mean interpolation steps", self.meta.get("mean_steps")),
                ("Spearman with VADER valence", self.meta.get("valence_spearman")),
                ("words VADER rates", self.meta.get("rated_words")),
            ]
        )
        return facts + views.details(
            f"All {len(self.df)} ranked words (seen at least {self.meta.get('min_count')} times)", views.table(self.df, max_rows=None)
        )


def _short(x: float) -> str:
    """1e-3 as "1e-3", other numbers as %g."""
    one_digit = format(x, ".0e")
    return one_digit.replace("e-0", "e-") if 0 < x < 1e-2 and float(one_digit) == x else format(x, "g")


def _percent(share: float | None) -> str | None:
    return None if share is None else f"{share:.0%}"


def _is_generative(run: Run, stage: str) -> bool:
    return run.checkpoint(stage, final_tag(run, stage)).meta.get("reward_kind") == "generative"


def _scalar_heldout(run: Run, stage: str | None) -> str | None:
    """The sanity check randomises a score head: scalar reward stages with held-out feedback only."""
    missing = missing_heldout(run, stage)
    if missing:
        return missing
    if _is_generative(run, stage):
        return "the randomisation check cascades from a score head; a generative reward model has none"
    return None


def reward_attribution(
    run: Run, stage: str, tag: str, prompts: list[str], completions: list[str], *, first_steps: int = 16, abs_tolerance: float = 1e-3
) -> RewardAttributionResult:
    """Integrated gradients of a reward checkpoint's reward as its stage reads it: the scalar head, or a generative
    model's verdict log-odds after its own critique (when the stage critiques first), the critique teacher-forced.
    `first_steps`, `abs_tolerance`: of the adaptive steps (`reward_integrated_gradients`)."""
    model, tokenizer = run.load_model(stage, tag), run.load_tokenizer(stage, tag)
    checkpoint = run.checkpoint(stage, tag)
    adaptive = {"first_steps": first_steps, "abs_tolerance": abs_tolerance}
    if checkpoint.meta.get("reward_kind") != "generative":
        return reward_integrated_gradients(model, tokenizer, prompts, completions, **adaptive)
    critique_first = bool(checkpoint.meta.get("critique_first", True))
    return generative_integrated_gradients(
        model,
        tokenizer,
        prompts,
        completions,
        critiques="model" if critique_first else None,
        critique_max_tokens=critique_length(checkpoint.meta, checkpoint.path),
        **adaptive,
    )


@analysis(
    "attribution.reward_words",
    result=RewardWordsResult,
    section="attribution",
    needs=Needs(stage_kind="reward", checkpoints=True, data=("feedback",), requires=missing_heldout),
    order=1,
)
def analyze_reward_words(
    run: Run,
    stage: str,
    *,
    texts: int = 128,
    min_count: int = 5,
    complete_share: float = 0.95,
    first_steps: int = 16,
    abs_tolerance: float = 1e-3,
) -> RewardWordsResult:
    """Integrated gradients of the final reward checkpoint on up to `texts` held-out texts of reward stage `stage`,
    summed per word; the words ranked by mean attribution, with VADER's valence beside them on the built-in task.

    texts: held-out texts attributed (a deterministic sample).
    min_count: occurrences a word needs among the attributed completions to be ranked.
    complete_share: the verdict warns when fewer texts than this share meet integrated gradients' completeness test.
    first_steps: Gauss-Legendre steps of the first adaptive pass (doubled for the texts that miss completeness).
    abs_tolerance: absolute slack of the completeness test, |delta| <= 1% of |reward - baseline reward| + this.
    """
    tag = final_tag(run, stage)
    prompts, completions = heldout_texts(run, stage, texts)
    attributions = reward_attribution(run, stage, tag, prompts, completions, first_steps=first_steps, abs_tolerance=abs_tolerance)
    words = mean_word_attributions(word_attributions(attributions), min_count=min_count, part="completion")
    valence = _valence(run)
    words["valence"] = [valence.get(w, math.nan) for w in words["word_text"]]
    per_text = attributions.texts
    tolerance = 0.01 * (per_text["reward"] - per_text["baseline_reward"]).abs() + abs_tolerance
    within = float((per_text["delta"].abs() <= tolerance).mean())
    rated = words.dropna(subset=["valence"])
    rho = float(rated["mean_attribution"].rank().corr(rated["valence"].rank())) if len(rated) >= 3 else math.nan
    meta = {"stage": stage, "tag": tag, "texts": len(per_text), "within_tolerance": within, "mean_steps": float(per_text["steps"].mean())}
    meta |= {"valence_spearman": rho, "rated_words": len(rated)}
    meta |= {"min_count": min_count, "complete_share": complete_share, "first_steps": first_steps, "abs_tolerance": abs_tolerance}
    verdict = Verdict(
        "attribution completeness",
        "ok" if within >= complete_share else "warn",
        f"{within:.0%} of {len(per_text)} texts: the attributions sum to reward(text) - reward(baseline) within tolerance",
        f"warn when fewer than {complete_share:.0%} of texts have |delta| <= 1% of the reward difference + {_short(abs_tolerance)}",
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


def _reward_of_policy(run: Run, stage: str) -> tuple[str | None, str]:
    """(this run's reward stage the policy stage trained against, or None, and its recorded `reward_from`)."""
    reward_from = str(run.checkpoint(stage, final_tag(run, stage)).meta.get("reward_from", ""))
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
    return missing_heldout(run, reward_stage)


@analysis(
    "attribution.policy_samples",
    result=RewardAttributionResult,
    section="attribution",
    needs=Needs(stage_kind="policy", eval_rollouts=True, reward_stages=True, requires=_policy_reward_missing),
    order=2,
)
def analyze_policy_sample_attribution(
    run: Run, stage: str, *, samples: int = 5, first_steps: int = 16, abs_tolerance: float = 1e-3
) -> RewardAttributionResult:
    """Integrated gradients of the reward model a policy stage trained against, on the final policy's own
    completions of the first eval prompts: which of the words it learned to write earn its reward.

    samples: completions of the final evaluation attributed (all shown as heatmaps).
    first_steps: Gauss-Legendre steps of the first adaptive pass (doubled for the texts that miss completeness).
    abs_tolerance: absolute slack of the completeness test, |delta| <= 1% of |reward - baseline reward| + this.
    """
    reward_stage, _ = _reward_of_policy(run, stage)
    rollouts = run.eval_rollouts(stage)
    final = rollouts[rollouts["step"] == rollouts["step"].max()].sort_values("prompt_id").head(samples)
    result = reward_attribution(
        run, reward_stage, final_tag(run, reward_stage), list(final["prompt"]), list(final["completion"]),
        first_steps=first_steps, abs_tolerance=abs_tolerance,
    )  # fmt: skip
    return replace(result, meta={**result.meta, "stage": stage, "reward_stage": reward_stage})


# --------------------------------------------------------------------------- the sanity check


@analysis(
    "attribution.sanity",
    result=SanityCheckResult,
    section="attribution",
    needs=Needs(stage_kind="reward", checkpoints=True, data=("feedback",), requires=_scalar_heldout),
    order=3,
)
def analyze_attribution_sanity(
    run: Run,
    stage: str,
    *,
    texts: int = 16,
    max_steps: int = 32,
    threshold: float = 0.5,
    examples: int = 2,
    first_steps: int = 16,
    abs_tolerance: float = 1e-3,
) -> SanityCheckResult:
    """Adebayo et al.'s cascading randomisation check of integrated gradients on the final reward checkpoint of
    `stage`: attributions that barely change as the weights are randomised do not explain this model.

    texts: held-out texts attributed (each attributed on the model and after every cascade step).
    max_steps: integration steps allowed: the check compares the ranks of the maps, and a random model's reward is
        rough enough to take 128 steps to 1% completeness.
    threshold: largest |rank correlation| with the trained model's maps at full randomisation that passes
        (`randomisation_sanity_check` says why 0.5).
    examples: texts whose maps at every cascade step are kept and shown as heatmaps.
    first_steps: Gauss-Legendre steps of the first adaptive pass (doubled for the texts that miss completeness).
    abs_tolerance: absolute slack of the completeness test that decides which texts get more steps.
    """
    tag = final_tag(run, stage)
    prompts, completions = heldout_texts(run, stage, texts)
    method = functools.partial(reward_integrated_gradients, max_steps=max_steps, first_steps=first_steps, abs_tolerance=abs_tolerance)
    model, tokenizer = run.load_model(stage, tag), run.load_tokenizer(stage, tag)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*miss completeness.*")  # random models: ranks, not sums, are compared
        result = randomisation_sanity_check(model, tokenizer, prompts, completions, method=method, threshold=threshold, examples=examples)
    return replace(result, meta={**result.meta, "stage": stage, "tag": tag})


# --------------------------------------------------------------------------- over training


def _several_checkpoints(run: Run, stage: str | None) -> str | None:
    missing = missing_heldout(run, stage)
    if missing:
        return missing
    if len(run.checkpoints(stage)) < 2:
        return f"stage {stage!r} has one checkpoint; set save_every on the stage to watch attributions form"
    return None


@analysis(
    "attribution.reward_over_training",
    result=OverTrainingResult,
    section="attribution",
    needs=Needs(stage_kind="reward", checkpoints=True, data=("feedback",), requires=_several_checkpoints),
    order=4,
)
def analyze_reward_over_training(
    run: Run, stage: str, *, texts: int = 24, first_steps: int = 16, abs_tolerance: float = 1e-3
) -> OverTrainingResult:
    """The same held-out texts attributed under every checkpoint of reward stage `stage` (integrated gradients; a
    generative stage's verdict log-odds without critique), to watch its word attributions form.

    texts: held-out texts attributed at each checkpoint.
    first_steps: Gauss-Legendre steps of the first adaptive pass (doubled for the texts that miss completeness).
    abs_tolerance: absolute slack of the completeness test, |delta| <= 1% of |reward - baseline reward| + this.
    """
    prompts, completions = heldout_texts(run, stage, texts)
    default = _default_method("reward", run.checkpoints(stage))
    method = functools.partial(default, first_steps=first_steps, abs_tolerance=abs_tolerance)
    return attribution_over_training(run, stage, prompts, completions, method=method)


# --------------------------------------------------------------------------- where alignment changed the policy

WORDS_SHOWN = 12
"""Words shown at each end of the alignment word table (all of them in a folded table)."""


@dataclass(frozen=True, eq=False)
class PolicyAlignmentResult(AlignmentLogRatioResult):
    """The log-ratio log pi(y_t|.) - log pi_ref(y_t|.) of a policy stage's own final completions (its sampled tokens)
    against the policy it started from.

    Columns: as `AlignmentLogRatioResult` (text, position, token_id, token, word, logprob, ref_logprob, log_ratio). `meta["words"]`: the completion words by mean log-ratio
    (word_text, mean_log_ratio, count; `mean_word_log_ratios`), `meta["reference"]`: the reference checkpoint,
    `meta["min_count"]`: the occurrences a word needed to be listed."""

    heading: ClassVar[str] = "Where alignment changed the policy"

    @property
    def words(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.meta.get("words", [])), columns=["word_text", "mean_log_ratio", "count"])

    def headlines(self) -> list[tuple[str, str]]:
        words = self.words
        top = ", ".join(words["word_text"].head(5))
        return super().headlines() + ([(f"words alignment made likelier ({self.meta.get('stage')})", top)] if top else [])

    def plot_words(self, ax=None, n: int = 10):
        """The `n` words the policy made most and least likely, by mean log-ratio."""
        words = self.words
        if ax is None:
            _, ax = views.new_figure(6.0, 0.22 * 2 * n + 1.2)
        shown = pd.concat([words.head(n), words.tail(n)]).drop_duplicates("word_text")
        y = np.arange(len(shown))[::-1]
        ax.barh(y, shown["mean_log_ratio"], color=["tab:red" if v > 0 else "tab:blue" for v in shown["mean_log_ratio"]])
        ax.set_yticks(y, list(shown["word_text"]), fontsize=7)
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.set_xlabel("mean log pi(word) - log pi_ref(word), nats")
        ax.set_title(f"words alignment made likelier and less likely, {self.meta.get('stage')}", fontsize=9)
        return ax

    def figures_html(self) -> Markup:
        chart = views.figure_html(self.plot_words().figure, f"words by mean log-ratio against {self.meta.get('reference')}")
        return views.render("{{ chart }}{{ heatmaps }}", chart=chart, heatmaps=super().figures_html())

    def table_html(self) -> Markup:
        words = self.words
        shown = pd.concat([words.head(WORDS_SHOWN), words.tail(WORDS_SHOWN)]).drop_duplicates("word_text")
        caption = (
            f"Completion words seen at least {self.meta.get('min_count')} times: the {WORDS_SHOWN} alignment made likeliest "
            f"and the {WORDS_SHOWN} least likely"
        )
        per_text = views.details(
            f"Per text ({len(self.texts)}): summed log-probabilities under the policy and its reference", super().table_html()
        )
        return views.table(shown, caption=caption) + views.details(f"All {len(words)} words", views.table(words, max_rows=None)) + per_text


@analysis(
    "attribution.alignment",
    result=PolicyAlignmentResult,
    section="attribution",
    needs=Needs(stage_kind="policy", checkpoints=True, eval_rollouts=True, manifest=True, requires=reference_missing),
    order=5,
)
def analyze_alignment(run: Run, stage: str, *, samples: int = 64, min_count: int = 5) -> PolicyAlignmentResult:
    """Per-token log-ratio of the final policy against the policy its stage started from, on its own final eval
    completions (those of the first `samples` prompts): which words alignment made likelier.

    samples: the policy's own final eval completions whose log-ratio against the reference is read.
    min_count: occurrences a completion word needs to be ranked by its mean log-ratio.
    """
    rollouts = run.eval_rollouts(stage)
    final = rollouts[rollouts["step"] == rollouts["step"].max()].sort_values("prompt_id").head(samples)
    tag = final_tag(run, stage)
    reference, described = policy_reference(run, stage)
    result = alignment_log_ratio(
        run.load_model(stage, tag), reference, run.load_tokenizer(stage, tag), list(final["prompt"]), list(final["completion_ids"])
    )
    words = mean_word_log_ratios(result, min_count=min_count)
    meta = {**result.meta, "stage": stage, "tag": tag, "reference": described, "words": words.to_dict("records"), "min_count": min_count}
    return PolicyAlignmentResult(df=result.df, meta=meta)
