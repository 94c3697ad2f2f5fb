"""Did alignment make the policy's outputs less diverse? (Kirk et al., 2024, "Understanding the effects of RLHF on
LLM generalisation and diversity".)

Both policies sample `samples_per_prompt` completions of each prompt with the same per-sample seeds
(`decoding.sample`, as `models.sample`: a sample depends only on its prompt and seed). Embedding-free measures on words:

    distinct-n        unique n-grams / all n-grams in a set of texts (1: no n-gram repeats)
    overlap           mean Jaccard similarity of the n-gram sets of every pair of texts (0: nothing shared);
                      a simple stand-in for self-BLEU

"within" a prompt: over that prompt's samples, averaged over prompts (how varied the answers to one question are);
"across" prompts: over the first sample of every prompt (how alike the answers to different questions are).
Each change (aligned - reference) gets an interval over prompts (95% by default): a percentile bootstrap within
prompts, the jackknife across them (a bootstrap resample repeats texts, which would bias distinct-n).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
from markupsafe import Markup

from rlhf_lens import decoding, models, views
from rlhf_lens.analyses.core.result import Result

__all__ = ["DiversityResult", "distinct_n", "diversity_diff", "ngram_overlap"]


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Unique n-grams over all n-grams of `texts` (words, lower-cased); NaN when they hold no n-gram."""
    grams = [g for text in texts for g in _ngrams(text, n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def ngram_overlap(texts: Sequence[str], n: int = 2) -> float:
    """Mean Jaccard similarity of the n-gram sets of every pair of `texts`; NaN for fewer than two texts."""
    sets = [set(_ngrams(text, n)) for text in texts]
    pairs = [len(a & b) / len(a | b) for a, b in itertools.combinations(sets, 2) if a | b]
    return float(np.mean(pairs)) if pairs else float("nan")


def _sample_texts(model, tokenizer, prompt_ids, k: int, seed: int, max_new_tokens: int) -> list[list[str]]:
    """k completions of each prompt, sample j of prompt i with seed `seed + i * k + j`: (prompts, k) texts."""
    repeated = [ids for ids in prompt_ids for _ in range(k)]
    seeds = [seed + i for i in range(len(repeated))]
    texts = list(decoding.sample(model, tokenizer, repeated, seeds, max_new_tokens=max_new_tokens).texts)
    return [texts[i * k : (i + 1) * k] for i in range(len(prompt_ids))]


def _per_prompt(samples: list[list[str]]) -> dict[str, np.ndarray]:
    return {
        "distinct-2 within": np.array([distinct_n(s, 2) for s in samples]),
        "overlap-2 within": np.array([ngram_overlap(s, 2) for s in samples]),
    }


def _across(samples: list[list[str]], index: np.ndarray) -> dict[str, float]:
    firsts = [samples[i][0] for i in index]
    return {
        "distinct-1 across": distinct_n(firsts, 1),
        "distinct-2 across": distinct_n(firsts, 2),
        "overlap-2 across": ngram_overlap(firsts, 2),
    }


def diversity_diff(
    policy,
    reference,
    tokenizer,
    prompts: Sequence[str],
    *,
    samples_per_prompt: int = 4,
    max_new_tokens: int = 32,
    seed: int = 0,
    bootstrap: int = 1000,
    ci_level: float = 0.95,
    meta: dict | None = None,
) -> DiversityResult:
    """Diversity of `policy`'s samples against `reference`'s on the same prompts and seeds; see the module docstring.
    The intervals cover `ci_level`: within a prompt over `bootstrap` resamples of the prompts, across prompts by the
    jackknife."""
    if samples_per_prompt < 2:
        raise ValueError(f"samples_per_prompt must be at least 2 to measure diversity within a prompt, got {samples_per_prompt}")
    if len(prompts) < 2:
        raise ValueError(f"pass at least two prompts to measure diversity across prompts, got {len(prompts)}")
    if not 0 < ci_level < 1:
        raise ValueError(f"ci_level must be in (0, 1), got {ci_level}")
    prompt_ids = models.encode_prompts(tokenizer, prompts)
    was = policy.training, reference.training
    policy.eval(), reference.eval()
    try:
        texts = {
            name: _sample_texts(m, tokenizer, prompt_ids, samples_per_prompt, seed, max_new_tokens)
            for name, m in (("reference", reference), ("policy", policy))
        }
    finally:
        policy.train(was[0]), reference.train(was[1])
    within = {name: _per_prompt(t) for name, t in texts.items()}
    everyone = np.arange(len(prompts))
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, len(prompts), size=(bootstrap, len(prompts)))  # (boot, prompts)
    tail = 100 * (1 - ci_level) / 2
    rows = []
    for metric in within["policy"]:
        ref, pol = within["reference"][metric], within["policy"][metric]
        boot = np.nanmean(pol[resamples], axis=1) - np.nanmean(ref[resamples], axis=1)
        rows.append(_row(metric, float(np.nanmean(ref)), float(np.nanmean(pol)), boot, tail))
    # Across prompts, a bootstrap resample repeats texts, which biases distinct-n (a repeated text adds no new n-gram):
    # the interval is the jackknife's instead, leaving one prompt out at a time (normal approximation).
    across = {name: _across(t, everyone) for name, t in texts.items()}
    leave_one_out = [np.delete(everyone, i) for i in everyone]
    from scipy.special import ndtri

    z = float(ndtri(1 - (1 - ci_level) / 2))  # the normal quantile: 1.96 for 0.95
    for metric in across["policy"]:
        change = across["policy"][metric] - across["reference"][metric]
        jack = np.array([_across(texts["policy"], keep)[metric] - _across(texts["reference"], keep)[metric] for keep in leave_one_out])
        n = len(jack)
        se = float(np.sqrt((n - 1) / n * np.sum((jack - jack.mean()) ** 2)))
        rows.append(
            {
                "metric": metric,
                "reference": across["reference"][metric],
                "policy": across["policy"][metric],
                "change": change,
                "ci_low": change - z * se,
                "ci_high": change + z * se,
            }
        )
    facts = {
        "prompts": len(prompts),
        "samples_per_prompt": samples_per_prompt,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "bootstrap": bootstrap,
        "ci_level": ci_level,
        "examples": [
            {"prompt": p, "reference": texts["reference"][i][:2], "policy": texts["policy"][i][:2]} for i, p in enumerate(prompts[:3])
        ],
    }
    return DiversityResult(df=pd.DataFrame(rows), meta={**(meta or {}), **facts})


def _row(metric: str, reference: float, policy: float, boot: np.ndarray, tail: float) -> dict:
    low, high = np.nanpercentile(boot, [tail, 100 - tail]) if np.isfinite(boot).any() else (np.nan, np.nan)
    return {
        "metric": metric,
        "reference": reference,
        "policy": policy,
        "change": policy - reference,
        "ci_low": float(low),
        "ci_high": float(high),
    }


@dataclass(frozen=True, eq=False)
class DiversityResult(Result):
    """Diversity of the aligned policy's samples against its reference's, one row per measure.

    Columns: metric ("distinct-2 within", "overlap-2 within", "distinct-1 across", "distinct-2 across",
    "overlap-2 across"), reference, policy, change (policy - reference), ci_low and ci_high (at `meta["ci_level"]`, 95%
    by default, over prompts: bootstrap within, jackknife across). Higher distinct-n and lower overlap mean more
    diverse. `meta`: prompts, samples_per_prompt, max_new_tokens, seed, bootstrap, ci_level, examples (a few prompts
    with two samples of each model), and what was compared.
    """

    columns: ClassVar[tuple[str, ...]] = ("metric", "reference", "policy", "change", "ci_low", "ci_high")
    heading: ClassVar[str] = "Diversity before and after alignment"

    def headlines(self) -> list[tuple[str, str]]:
        rows = self.df.set_index("metric")
        if "distinct-2 within" not in rows.index:
            return []
        row = rows.loc["distinct-2 within"]
        return [
            (
                f"diversity ({self.meta.get('stage')}): distinct-2 within a prompt",
                f"{row['reference']:.2f} → {row['policy']:.2f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]",
            )
        ]

    def plot(self, ax=None):
        if ax is None:
            _, ax = views.new_figure(6.0, 3.0)
        y = np.arange(len(self.df))[::-1]
        change = self.df["change"].to_numpy(dtype=float)
        errors = [change - self.df["ci_low"].to_numpy(dtype=float), self.df["ci_high"].to_numpy(dtype=float) - change]
        ax.errorbar(change, y, xerr=errors, fmt="o", capsize=3, color="tab:purple")
        ax.axvline(0.0, color="grey", linewidth=0.6)
        ax.set_yticks(y, list(self.df["metric"]), fontsize=8)
        ax.set_xlabel(f"aligned - reference ({self.meta['ci_level']:.0%} interval over prompts)")
        ax.set_title("diversity change (distinct-n up / overlap down: more diverse)", fontsize=9)
        ax.figure.tight_layout()
        return ax

    def figures_html(self) -> Markup:
        return views.figure_html(self.plot().figure, "change of each diversity measure with its bootstrap interval")

    def table_html(self) -> Markup:
        examples = pd.DataFrame(
            [
                {"prompt": e["prompt"], "reference": " | ".join(e["reference"]), "aligned": " | ".join(e["policy"])}
                for e in self.meta.get("examples", [])
            ]
        )
        return views.table(self.df, caption="Diversity of the two policies' samples (same prompts and seeds)") + views.details(
            "Samples of a few prompts", views.table(examples)
        )
