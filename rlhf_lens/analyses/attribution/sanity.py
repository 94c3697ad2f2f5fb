"""Model-randomisation sanity check of a reward attribution method (Adebayo et al., 2018, "Sanity checks for
saliency maps", the model parameter randomisation test, cascading from the top).

An attribution method that explains a reward model must give different maps when the model's learned weights are
replaced by random ones. The check attributes the same texts on the trained model, then on one copy whose layers are
re-initialised one at a time from the top: the score head, then the top block (with the final norm), then each block
below it, and last the embeddings. After each step it compares the copy's maps with the trained model's by Spearman
rank correlation per text, of the signed attributions and of their absolute values (Adebayo report both: a map whose
signs flip but whose salient tokens stay salient is unchanged in the second). A method whose maps still correlate
with the trained model's once every weight is random does not explain the model; the verdict flags it.

Shape glossary: text, step (one row per cascade step).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from markupsafe import Markup

from rlhf_lens import models, views
from rlhf_lens.analyses.attribution.reward import RewardAttributionResult, reward_integrated_gradients
from rlhf_lens.analyses.core.result import Result
from rlhf_lens.analyses.core.verdict import Verdict

__all__ = ["SanityCheckResult", "attribution_rank_correlations", "randomisation_sanity_check"]

Method = Callable[..., RewardAttributionResult]
"""An attribution method with the calling shape of `reward_integrated_gradients`:
method(reward_model, tokenizer, prompts, completions) -> RewardAttributionResult."""


@dataclass(frozen=True, eq=False)
class SanityCheckResult(Result):
    """How much an attribution method's maps change under cascading randomisation of the reward model, one row per
    cascade step (the trained model itself is the reference, correlation 1, and has no row).

    Columns:
        randomised: what is random at this step, cumulatively: "score head", "+ block 3, ln_f", "+ block 2", ...,
            "+ embeddings (wte, wpe)" (module names as the model has them).
        layers_randomised: how many cascade steps are random (1 = the score head alone).
        spearman: Spearman rank correlation of the per-token attributions, randomised copy vs trained model, per
            text, averaged over texts.
        spearman_abs: the same on |attribution|.
        spearman_sd, spearman_abs_sd: their standard deviation over texts.
        texts: texts with a defined correlation (at least 3 compared tokens, neither map constant).

    `meta`: method (its name), texts (number of texts attributed), threshold, seed, init_std (the std of the random
    weights), embeddings (whether the cascade ends with them), model_type, final_spearman, final_spearman_abs (at
    full randomisation), first_changed (the step from which on both |correlations| stay below the threshold, or
    None), examples (per example text: its tokens and its map on the trained model and at every step).
    """

    columns: ClassVar[tuple[str, ...]] = (
        "randomised",
        "layers_randomised",
        "spearman",
        "spearman_abs",
        "spearman_sd",
        "spearman_abs_sd",
        "texts",
    )
    heading: ClassVar[str] = "Attribution sanity check (model randomisation)"

    def headlines(self) -> list[tuple[str, str]]:
        rho, rho_abs = self.meta.get("final_spearman", math.nan), self.meta.get("final_spearman_abs", math.nan)
        return [
            (f"rank correlation at full randomisation ({self.meta.get('method')})", f"{rho:.2f} (|attribution|: {rho_abs:.2f})"),
            ("maps stay changed from step", str(self.meta.get("first_changed") or "never")),
        ]

    def plot(self, ax=None):
        """Rank correlation with the trained model's maps along the cascade (signed and absolute), as in Adebayo et al.'s
        cascading-randomisation plots: the trained model at the left (1 by definition), then each step; bands are
        +- 1 sd over texts; dashed lines at +- the threshold."""
        if ax is None:
            _, ax = views.new_figure(width=max(6.0, 0.7 * (len(self.df) + 1) + 2.0), height=3.6)
        x = np.arange(len(self.df) + 1)
        labels = ["trained model", *self.df["randomised"]]
        for column, colour, name in (("spearman", "tab:blue", "Spearman"), ("spearman_abs", "tab:orange", "Spearman of |attribution|")):
            y = np.concatenate([[1.0], self.df[column].to_numpy(dtype=float)])
            sd = np.concatenate([[0.0], self.df[f"{column}_sd"].to_numpy(dtype=float)])
            ax.plot(x, y, marker="o", color=colour, label=f"{name} (band: ±1 sd over texts)")
            ax.fill_between(x, y - sd, y + sd, color=colour, alpha=0.15, linewidth=0)
        threshold = float(self.meta["threshold"])
        for level in (threshold, -threshold):
            ax.axhline(level, color="grey", linestyle="--", linewidth=0.8)
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel("rank correlation with\nthe trained model's maps")
        ax.set_title(f"Cascading randomisation from the top: {self.meta.get('method')}", fontsize=10)
        ax.legend(fontsize=8, loc="lower left")
        return ax

    def figures_html(self) -> Markup:
        """The correlation curves, then the first example text's map at every step (each map on its own colour
        scale: the ranks are compared, and a random model's rewards are on another scale)."""
        curves = views.figure_html(
            self.plot().figure, f"rank correlation of {self.meta.get('method')} maps along the randomisation cascade"
        )
        examples = self.meta.get("examples") or []
        if not examples:
            return curves
        example = examples[0]
        rows = [
            (
                label,
                views.format_value(max((abs(v) for v in values), default=0.0)),
                views.token_heatmap(example["tokens"], values, label="attribution"),
            )
            for label, values in [("trained model", example["original"]), *zip(self.df["randomised"], example["randomised"])]
        ]
        maps = views.render(
            '<p class="legend">Each row on its own colour scale (its largest |attribution| gets the strongest colour): the '
            "check compares ranks, and a random model's rewards are on another scale. Red raises the reward, blue lowers it.</p>"
            "<table><thead><tr><th>weights randomised</th><th>largest |attribution|</th><th>map</th></tr></thead><tbody>"
            "{% for label, largest, heat in rows %}<tr><th>{{ label }}</th><td>{{ largest }}</td><td>{{ heat }}</td></tr>{% endfor %}"
            "</tbody></table>",
            rows=rows,
        )
        return curves + views.details(f"Maps of text {example['text']} along the cascade", maps)

    def table_html(self) -> Markup:
        facts = views.key_values(
            [
                ("method", self.meta.get("method")),
                ("texts attributed", self.meta.get("texts")),
                ("randomisation seed", self.meta.get("seed")),
                ("std of the random weights", self.meta.get("init_std")),
                ("threshold on |rank correlation|", self.meta.get("threshold")),
            ]
        )
        return facts + views.table(self.df, caption="Rank correlation with the trained model's maps after each cascade step")


# --------------------------------------------------------------------------- the cascade


def _cascade(reward_model: torch.nn.Module, embeddings: bool) -> list[tuple[str, list[torch.nn.Module]]]:
    """(label, modules) of each cascade step, top first: score head; top block with the backbone's other top-level
    modules that hold weights (the final norm); each block below; the embeddings (when `embeddings`)."""
    models.require_score_head(reward_model)
    base = getattr(reward_model, "base_model", None)
    model_type = getattr(getattr(reward_model, "config", None), "model_type", None)
    where = f"{type(reward_model).__name__} (model_type {model_type!r})"
    if not isinstance(base, torch.nn.Module) or base is reward_model:
        raise TypeError(
            f"{where} has no `base_model` backbone under its score head; the randomisation check needs a HF "
            "*ForSequenceClassification decoder (GPT-2, Llama, GPT-NeoX, ...), as the reward stage makes them."
        )
    children = [(name, module) for name, module in base.named_children() if any(True for _ in module.parameters())]
    lists = [(name, module) for name, module in children if isinstance(module, torch.nn.ModuleList)]
    if len(lists) != 1 or len(lists[0][1]) == 0:
        raise TypeError(
            f"{where}: the randomisation check finds the transformer blocks as the one non-empty torch.nn.ModuleList "
            "directly under `reward_model.base_model` (GPT-2's transformer.h, Llama's model.layers, GPT-NeoX's "
            f"gpt_neox.layers), but {type(base).__name__} has {len(lists)} ({', '.join(n for n, _ in lists) or 'none'}) "
            f"among its children {[n for n, _ in base.named_children()]}. Pass a model of a supported layout."
        )
    blocks_name, blocks = lists[0]
    embedding = [(name, m) for name, m in children if isinstance(m, torch.nn.Embedding)]
    top = [(name, m) for name, m in children if name != blocks_name and not isinstance(m, torch.nn.Embedding)]
    last = len(blocks) - 1
    steps = [("score head", [reward_model.score])]
    steps.append((", ".join([f"+ block {last}", *(n for n, _ in top)]), [blocks[last], *(m for _, m in top)]))
    steps += [(f"+ block {i}", [blocks[i]]) for i in range(last - 1, -1, -1)]
    if embeddings and embedding:
        steps.append((f"+ embeddings ({', '.join(n for n, _ in embedding)})", [m for _, m in embedding]))
    return steps


def _init_std(reward_model: torch.nn.Module) -> float:
    std = getattr(getattr(reward_model, "config", None), "initializer_range", None)
    return float(std) if std else 0.02


@torch.no_grad()
def _randomise(modules: Sequence[torch.nn.Module], generator: torch.Generator, std: float) -> None:
    """Re-initialise in place as HF initialises a fresh model: weight matrices ~ N(0, std), biases 0, norm gains 1,
    the padding row of an embedding 0.

    Not `reward_model._init_weights`: transformers 5 marks every loaded parameter `_is_hf_initialized`, and its init
    functions then leave the tensor as it is, so a loaded checkpoint would silently stay trained."""
    for module in modules:
        for name, parameter in module.named_parameters():
            if parameter.ndim >= 2:
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32) * std
                parameter.copy_(noise.to(parameter.device, parameter.dtype))
            elif name.rsplit(".", 1)[-1] == "bias":
                parameter.zero_()
            else:
                parameter.fill_(1.0)
        for sub in module.modules():
            if isinstance(sub, torch.nn.Embedding) and sub.padding_idx is not None:
                sub.weight[sub.padding_idx].zero_()


# --------------------------------------------------------------------------- comparing maps


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN under 3 points or for a constant map."""
    if len(a) < 3:
        return math.nan
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def attribution_rank_correlations(original: RewardAttributionResult, other: RewardAttributionResult) -> pd.DataFrame:
    """Per text, the Spearman rank correlation of two maps of the same texts: -> columns text, tokens, spearman,
    spearman_abs (of |attribution|).

    Tokens whose attribution is exactly 0 in both maps are left out: a token equal to its baseline token gets no
    attribution under any weights, and counting that as agreement would add about 3 / n to the correlation of n
    tokens (both maps rank it last by |attribution|). A text with fewer than 3 compared tokens or a constant map
    gets NaN.
    """
    keys = ["text", "position"]
    a, b = original.df[[*keys, "token_id", "attribution"]], other.df[[*keys, "token_id", "attribution"]]
    merged = a.merge(b, on=keys, how="outer", suffixes=("", "_other"), indicator=True)
    if (merged["_merge"] != "both").any() or (merged["token_id"] != merged["token_id_other"]).any():
        raise ValueError(
            "the two attribution maps are not of the same tokens (text, position, token_id differ); the method must "
            "attribute the same texts with the same tokenizer on every copy of the model"
        )
    rows = []
    for text, group in merged.groupby("text", sort=True):
        x, y = group["attribution"].to_numpy(dtype=float), group["attribution_other"].to_numpy(dtype=float)
        kept = (x != 0) | (y != 0)
        x, y = x[kept], y[kept]
        rows.append(
            {"text": int(text), "tokens": int(kept.sum()), "spearman": _spearman(x, y), "spearman_abs": _spearman(np.abs(x), np.abs(y))}
        )
    return pd.DataFrame(rows, columns=["text", "tokens", "spearman", "spearman_abs"])


# --------------------------------------------------------------------------- the check


def randomisation_sanity_check(
    reward_model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    method: Method = reward_integrated_gradients,
    seed: int = 0,
    threshold: float = 0.5,
    embeddings: bool = True,
    examples: int = 2,
) -> SanityCheckResult:
    """Adebayo et al.'s cascading model-randomisation check of `method` on a reward model.

    `method(model, tokenizer, prompts, completions)` attributes the texts on `reward_model`, then on a copy
    (`copy.deepcopy`; `reward_model` is not changed) after re-initialising, cumulatively and from the top, the score
    head; the top block and the backbone's other top-level weights (the final norm); each block below; and, when
    `embeddings`, the embedding tables. Random weights are N(0, config.initializer_range) (0.02 when unset), biases
    0, norm gains 1, drawn from a generator seeded with `seed`. Blocks are found as the one ModuleList under
    `reward_model.base_model` (GPT-2's transformer.h, Llama's model.layers, GPT-NeoX's gpt_neox.layers).

    To pass other arguments to the method, pass `functools.partial(reward_integrated_gradients, baseline=...)`.

    Verdict: ok when, at full randomisation, both |Spearman| and |Spearman of |attribution|| (mean over texts) are
    below `threshold`; flag otherwise (the maps do not depend on the model's weights); warn when no text has a
    defined correlation. `examples`: how many texts (the first) keep their map at every step in `meta["examples"]`
    (shown as heatmaps). Returns a `SanityCheckResult`.

    Why 0.5: two independent maps of n tokens have rank correlation 0 +- 1/sqrt(n - 1) per text (about 0.2 for the
    ~25-token texts of the built-in task), so a mean over texts near 0 says the maps changed completely; a method
    that ignores the model scores exactly 1. 0.5 is halfway: at or above it, more than a quarter of the variance of a
    map's token ranks is still shared with the trained model's after no trained weight is left. Measured on the
    shared test run's reward model (tests/integration/test_attribution_sanity_trained.py), integrated gradients ends
    at most at 0.18 over randomisation seeds 0-4 (0.28 with the embeddings still trained), feature ablation at 0.06
    (seed 0); a model-blind control at 1.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions; pass one completion per prompt")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1] (a bound on |rank correlation|), got {threshold}")
    if examples < 0:
        raise ValueError(f"examples must be a number of texts (0 or more), got {examples}")
    _cascade(reward_model, embeddings)  # refuse an unsupported layout before any attribution runs
    original = method(reward_model, tokenizer, prompts, completions)
    randomised = copy.deepcopy(reward_model)
    steps = _cascade(randomised, embeddings)
    std = _init_std(reward_model)
    generator = torch.Generator().manual_seed(seed)
    kept = sorted(original.df["text"].unique())[:examples]
    rows, maps = [], []
    for depth, (label, modules) in enumerate(steps, start=1):
        _randomise(modules, generator, std)
        attributed = method(randomised, tokenizer, prompts, completions)
        per_text = attribution_rank_correlations(original, attributed)
        rows.append(
            {
                "randomised": label,
                "layers_randomised": depth,
                "spearman": _mean(per_text["spearman"]),
                "spearman_abs": _mean(per_text["spearman_abs"]),
                "spearman_sd": _sd(per_text["spearman"]),
                "spearman_abs_sd": _sd(per_text["spearman_abs"]),
                "texts": int(per_text[["spearman", "spearman_abs"]].notna().all(axis=1).sum()),
            }
        )
        maps.append(attributed.df)
    df = pd.DataFrame(rows, columns=list(SanityCheckResult.columns))
    final = df.iloc[-1]
    below = ((df["spearman"].abs() < threshold) & (df["spearman_abs"].abs() < threshold)).to_numpy()
    stays = np.flatnonzero(np.logical_and.accumulate(below[::-1])[::-1])  # steps from which every later step is below
    meta = {
        "method": _method_name(method, original),
        "texts": len(prompts),
        "threshold": threshold,
        "seed": seed,
        "init_std": std,
        "embeddings": embeddings,
        "model_type": getattr(reward_model.config, "model_type", None),
        "final_spearman": float(final["spearman"]),
        "final_spearman_abs": float(final["spearman_abs"]),
        "first_changed": str(df["randomised"].iloc[stays[0]]) if len(stays) else None,
        "examples": [_example(original.df, maps, text) for text in kept],
    }
    return SanityCheckResult(df=df, meta=meta, verdicts=(_verdict(df, meta),))


def _mean(values: pd.Series) -> float:
    return float(values.mean()) if values.notna().any() else math.nan


def _sd(values: pd.Series) -> float:
    return float(values.std(ddof=0)) if values.notna().any() else math.nan


def _method_name(method: Method, result: RewardAttributionResult) -> str:
    name = result.meta.get("method")
    if name:
        return str(name)
    func = getattr(method, "func", method)  # a functools.partial
    return str(getattr(func, "__name__", type(func).__name__))


def _example(original: pd.DataFrame, maps: list[pd.DataFrame], text: int) -> dict:
    rows = original[original["text"] == text].sort_values("position")
    return {
        "text": int(text),
        "tokens": [str(t) for t in rows["token"]],
        "original": [float(v) for v in rows["attribution"]],
        "randomised": [[float(v) for v in m[m["text"] == text].sort_values("position")["attribution"]] for m in maps],
    }


def _verdict(df: pd.DataFrame, meta: dict) -> Verdict:
    threshold = meta["threshold"]
    rho, rho_abs = meta["final_spearman"], meta["final_spearman_abs"]
    value = max(abs(rho), abs(rho_abs))
    rule = (
        f"ok when, with every layer random, the rank correlation of the maps with the trained model's maps is within "
        f"±{threshold:g}, for the signed attributions and for their magnitudes; flag otherwise. Unrelated maps correlate "
        "near 0; a method that ignores the model keeps a correlation of 1"
    )
    check = "attribution sanity check: model randomisation (Adebayo et al., 2018)"
    full = str(df["randomised"].iloc[-1]).removeprefix("+ ")
    if math.isnan(value):
        return Verdict(check, "warn", "no text had a defined rank correlation (maps constant or under 3 tokens)", rule, value=value)
    evidence = (
        f"{meta['method']} over {meta['texts']} texts: once every layer down to the {full} is random, the maps' rank "
        f"correlation with the trained model's is {rho:.2f} (of their magnitudes: {rho_abs:.2f})"
    )
    if value < threshold:
        evidence += f"; both stay below {threshold:g} from step '{meta['first_changed']}' on"
        return Verdict(check, "ok", evidence, rule, value=value)
    evidence += ": the method's maps do not depend on the model's weights: they fail the Adebayo sanity check"
    return Verdict(check, "flag", evidence, rule, value=value)
