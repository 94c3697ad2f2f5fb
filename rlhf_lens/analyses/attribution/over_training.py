"""The same texts attributed under every checkpoint of a stage, as one tidy table, to watch attributions form.

A reward stage's checkpoints (`save_every`) are attributed with a reward method (integrated gradients of the
scalar reward, or of a generative model's verdict log-odds); a policy stage's with an alignment method (the
attribution of its log-ratio against the reference policy the stage started from).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
from markupsafe import Markup

from rlhf_lens import views
from rlhf_lens.analyses.attribution.words import mean_word_attributions, word_attributions
from rlhf_lens.analyses.core.result import Result
from rlhf_lens.runs import Run

__all__ = ["OverTrainingResult", "attribution_over_training", "policy_reference"]

TRACKED_WORDS = 8
"""Words `plot` follows across checkpoints: those with the largest |mean attribution| at the last one."""
TRACKED_MIN_COUNT = 3
"""Occurrences a word needs among the texts to be followed (fewer: a mean of one or two texts)."""


@dataclass(frozen=True, eq=False)
class OverTrainingResult(Result):
    """Attributions of the same texts under each checkpoint of one stage, one row per (checkpoint, text, token).

    Columns:
        tag: the checkpoint ("step-000128", ..., "final").
        step: its optimizer step.
        text: index of the (prompt, completion) pair in the inputs.
        position, token_id, token, word, part: the token, as in `RewardAttributionResult` (the same at every
            checkpoint).
        attribution: the token's attribution under that checkpoint.

    `meta`: stage, kind (reward/policy), method, tags, and per checkpoint its texts' summaries (`meta["checkpoints"]`:
    tag, step, mean target (reward or log-ratio), share within the completeness tolerance).
    """

    columns: ClassVar[tuple[str, ...]] = ("tag", "step", "text", "position", "token_id", "token", "word", "part", "attribution")
    heading: ClassVar[str] = "Attributions over training"

    def word_table(self, *, min_count: int = 2, part: str | None = "completion") -> pd.DataFrame:
        """Mean attribution of each word at each checkpoint: columns tag, step, word_text, mean_attribution, count."""
        frames = []
        for (tag, step), rows in self.df.groupby(["tag", "step"], sort=False):
            words = mean_word_attributions(word_attributions(_Rows(rows)), min_count=min_count, part=part)
            frames.append(words.assign(tag=tag, step=step))
        if not frames:
            return pd.DataFrame({c: [] for c in ("tag", "step", "word_text", "mean_attribution", "count")})
        return pd.concat(frames, ignore_index=True)[["tag", "step", "word_text", "mean_attribution", "count"]]

    def headlines(self) -> list[tuple[str, str]]:
        return [("checkpoints attributed", str(len(self.meta.get("tags", [])))), ("texts", str(self.df["text"].nunique()))]

    def plot(self, ax=None, *, words: Sequence[str] | None = None):
        """Mean attribution of the tracked words at each checkpoint step (by default the `TRACKED_WORDS` words
        with the largest |mean attribution| at the last checkpoint)."""
        if ax is None:
            _, ax = views.new_figure(7.0, 3.6)
        table = self.word_table(min_count=TRACKED_MIN_COUNT)
        if table.empty:
            ax.axis("off")
            return ax
        last = table[table["step"] == table["step"].max()]
        if words is None:
            words = list(last.reindex(last["mean_attribution"].abs().sort_values(ascending=False).index)["word_text"].head(TRACKED_WORDS))
        for word in words:
            rows = table[table["word_text"] == word].sort_values("step")
            count = int(rows["count"].max()) if len(rows) else 0
            ax.plot(rows["step"], rows["mean_attribution"], marker="o", label=f"{word} (n={count})")
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_xlabel(f"{self.meta.get('stage')} step (checkpoint)")
        ax.set_ylabel("mean attribution")
        ax.set_title(f"word attributions over training, stage {self.meta.get('stage')}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.figure.tight_layout()
        return ax

    def figures_html(self) -> Markup:
        texts = self.df["text"].nunique()
        return views.figure_html(
            self.plot().figure,
            f"mean attribution of the {TRACKED_WORDS} completion words (seen at least {TRACKED_MIN_COUNT} times in the same "
            f"{texts} texts) with the largest |attribution| at the last checkpoint, at each checkpoint of stage "
            f"{self.meta.get('stage')} ({self.meta.get('method')})",
        )

    def table_html(self) -> Markup:
        table = pd.DataFrame(self.meta.get("checkpoints", []))
        if "within tolerance" in table:
            table["within tolerance"] = [f"{v:.0%}" for v in table["within tolerance"]]
        target = "reward" if self.meta.get("kind") == "reward" else "log-ratio"
        return views.table(
            table, caption=f"Per checkpoint: the texts' mean {target} and the share whose attributions add up (1% tolerance)"
        )


@dataclass(frozen=True, eq=False)
class _Rows:
    """A stand-in with a `.df`, for `word_attributions` on one checkpoint's rows."""

    df: pd.DataFrame


def policy_reference(run: Run, stage: str):
    """The reference policy of policy stage `stage`: the checkpoint it started from (run.json's `policy_from`),
    read from this run when it is one of its checkpoints, else from the recorded folder. -> (model, description)."""
    from rlhf_lens.analyses._reference import policy_reference_folder
    from rlhf_lens.models import load_causal_lm

    reference = policy_reference_folder(run, stage)
    if reference.stage is not None:
        return run.load_model(reference.stage, reference.tag), reference.description
    return load_causal_lm(reference.path).eval(), reference.description


def attribution_over_training(
    run: Run,
    stage: str,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    method: Callable | None = None,
    tags: Sequence[str] | None = None,
) -> OverTrainingResult:
    """Attribute the same (prompt, completion) texts under each checkpoint of `stage` (all complete ones, or `tags`).

    Reward stages: `method(model, tokenizer, prompts, completions)`, by default `reward_integrated_gradients`
    (`generative_integrated_gradients`, critique-free, for a generative reward stage). Policy stages:
    `method(policy, reference, tokenizer, prompts, completions)`, by default `alignment_attribution`, with the
    reference the stage started from (`policy_reference`). Returns an `OverTrainingResult`.
    """
    from tqdm.auto import tqdm

    info = run.stage(stage)
    if info.kind not in ("reward", "policy"):
        raise ValueError(f"stage {stage!r} is a {info.kind} stage; attributions over training read reward or policy stages")
    checkpoints = run.checkpoints(stage)
    if tags is not None:
        unknown = sorted(set(tags) - {c.tag for c in checkpoints})
        if unknown:
            raise ValueError(f"stage {stage!r} has no complete checkpoint(s) {unknown}; available: {[c.tag for c in checkpoints]}")
        checkpoints = [c for c in checkpoints if c.tag in set(tags)]
    method = method or _default_method(info.kind, checkpoints)
    reference = policy_reference(run, stage)[0] if info.kind == "policy" else None
    frames, summaries = [], []
    for cp in tqdm(checkpoints, desc=f"attribution over {stage} checkpoints", unit="checkpoint"):
        model, tokenizer = run.load_model(stage, cp.tag), run.load_tokenizer(stage, cp.tag)
        args = (model, tokenizer) if reference is None else (model, reference, tokenizer)
        result = method(*args, list(prompts), list(completions))
        frames.append(result.df.assign(tag=cp.tag, step=cp.step))
        summaries.append({"tag": cp.tag, "step": cp.step, **_summary(result)})
    df = (
        pd.concat(frames, ignore_index=True)[list(OverTrainingResult.columns)]
        if frames
        else pd.DataFrame({c: [] for c in OverTrainingResult.columns})
    )
    meta = {
        "stage": stage,
        "kind": info.kind,
        "method": _method_name(method),
        "tags": [c.tag for c in checkpoints],
        "checkpoints": summaries,
    }
    return OverTrainingResult(df=df, meta=meta)


def _default_method(kind: str, checkpoints) -> Callable:
    from rlhf_lens.analyses.attribution.generative import generative_integrated_gradients
    from rlhf_lens.analyses.attribution.policy import alignment_attribution
    from rlhf_lens.analyses.attribution.reward import reward_integrated_gradients

    if kind == "policy":
        return alignment_attribution
    generative = any(c.meta.get("reward_kind") == "generative" for c in checkpoints)
    return generative_integrated_gradients if generative else reward_integrated_gradients


def _method_name(method: Callable) -> str:
    """The name of `method`, or of the function a `functools.partial` of it calls."""
    func = getattr(method, "func", method)
    return getattr(func, "__name__", type(func).__name__)


def _summary(result) -> dict:
    """Mean target and share of texts within the completeness tolerance of one checkpoint's attributions."""
    texts = pd.DataFrame(list(result.meta.get("texts", [])))
    if texts.empty or "delta" not in texts:
        return {}
    target, base = ("reward", "baseline_reward") if "reward" in texts else ("log_ratio", "baseline_log_ratio")
    tolerance = result.meta.get("tolerance") or 0.01
    slack = result.meta.get("abs_tolerance")
    slack = 1e-3 if slack is None else slack
    within = texts["delta"].abs() <= tolerance * (texts[target] - texts[base]).abs() + slack
    return {f"mean {target}": float(texts[target].mean()), "within tolerance": float(np.mean(within))}
