"""Which context tokens drive a policy's completions, and where alignment changed the model's mind.

Three questions about a (prompt, completion) pair, the completion being token ids of the policy's own text
(`tokenizer(completion, add_special_tokens=False)`) after BOS + prompt (`models.encode_prompts`):

- `policy_attribution`: which prompt tokens drive log pi(y | x), in total and for each completion token
  y_t, through Captum's LLM API (`LLMGradientAttribution` over `LayerIntegratedGradients`, or
  `LLMAttribution` over `FeatureAblation`). As in Captum, the earlier completion tokens y_<t are held fixed
  (teacher forcing): the attributed inputs are the prompt tokens; BOS is fixed too.
- `alignment_log_ratio`: the per-token log-ratio log pi(y_t | .) - log pi_ref(y_t | .) of the aligned policy
  against its reference (the SFT checkpoint its stage started from), batched and without gradients.
- `alignment_attribution`: integrated gradients of the summed log-ratio over every context token, prompt and
  earlier completion tokens alike. Captum's LLM API does not fit (two models, two embedding tables, one text
  and one target token per call), so this uses Captum's `IntegratedGradients` on a per-token interpolation
  coefficient alpha (batch, seq): token i enters each model as alpha_i * E[x_i] + (1 - alpha_i) * E[b_i], each
  model with its own table E, and the gradient of the log-ratio with respect to alpha_i is the sum of the two
  models' embedding-space gradients, so completeness holds for the difference:
  sum over tokens = log_ratio(x) - log_ratio(baseline) + delta.

Baselines are one token id (`baseline_id`, the pad id by default) at every attributed position. On HF Llama the
pad row of the embedding table is zero (`padding_idx`), and a path from the zero vector through RMSNorm jumps at
its start, so integrated gradients misses completeness at any step count; pass another `baseline_id` there.

Shape glossary: batch, seq, gen_len, vocab, d_model.
"""

from __future__ import annotations

import string
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from markupsafe import Markup

from rlhf_lens import models, views
from rlhf_lens.analyses.attribution.reward import HEATMAP_TEXTS, _check_adaptive, word_starts
from rlhf_lens.analyses.core.result import Result

__all__ = [
    "completion_parts",
    "AlignmentAttributionResult",
    "AlignmentLogRatioResult",
    "PolicyAttributionResult",
    "alignment_attribution",
    "alignment_log_ratio",
    "mean_word_log_ratios",
    "policy_attribution",
    "word_log_ratios",
]

METHODS = ("integrated_gradients", "feature_ablation")
"""The attribution methods of `policy_attribution`."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class PolicyAttributionResult(Result):
    """Attribution of each completion's log-probability under the policy to the prompt tokens, one row per
    attributed prompt token (BOS, held fixed, has no row).

    Columns:
        text: index of the (prompt, completion) pair in the inputs.
        position: the token's position in the model's input (0 = BOS, so prompt tokens start at 1; a text cut to
            the context starts at its first kept token, which is then attributed).
        token_id: the token id.
        token: the token decoded on its own.
        word: index of the word the token belongs to within its text (`reward.word_starts`).
        attribution: the token's share of log pi(completion | x) - log pi(completion | baseline), summed over
            the completion tokens (Captum's `seq_attr`).

    `token_attr` (a property, from `meta["token_attr"]`): the per-target matrix (Captum's `token_attr`) as a
    table text, target_position, target_token, input_position, attribution: the share of input token
    `input_position` in log pi(y_t | x, y_<t) - log pi(y_t | baseline, y_<t) for the completion token at
    `target_position` (positions in the model's input, as in `.df`).

    `meta["texts"]`: per text, a dict of text, prompt, completion, logprob (log pi(completion | x)),
    baseline_logprob (every attributed prompt token replaced by the baseline id), delta (sum of attributions -
    (logprob - baseline_logprob); for feature ablation the interaction left over), steps (Gauss-Legendre steps,
    or the number of ablations), completion_start (position of the first completion token) and completion_tokens
    (the decoded target tokens).
    """

    columns: ClassVar[tuple[str, ...]] = ("text", "position", "token_id", "token", "word", "attribution")
    heading: ClassVar[str] = "Policy attribution: prompt tokens behind the completion's log-probability"

    @property
    def texts(self) -> pd.DataFrame:
        """`meta["texts"]` as a table, one row per text (without the completion tokens)."""
        return pd.DataFrame(list(self.meta.get("texts", []))).drop(columns=["completion_tokens"], errors="ignore")

    @property
    def token_attr(self) -> pd.DataFrame:
        """Per completion token and prompt token: text, target_position, target_token, input_position, attribution."""
        table = pd.DataFrame(dict(self.meta.get("token_attr", {})))
        if table.empty:
            return pd.DataFrame({c: [] for c in ("text", "target_position", "target_token", "input_position", "attribution")})
        texts = {t["text"]: t for t in self.meta["texts"]}
        target_token = [
            texts[i]["completion_tokens"][p - texts[i]["completion_start"]] for i, p in zip(table["text"], table["target_position"])
        ]
        table.insert(2, "target_token", target_token)
        return table

    def headlines(self) -> list[tuple[str, str]]:
        texts = self.texts
        out = [("texts attributed", str(len(texts)))]
        if texts.empty:
            return out
        if self.meta.get("method") == "integrated_gradients":
            within = _within(texts["delta"], texts["logprob"] - texts["baseline_logprob"], self.meta)
            out += [("completeness within tolerance", f"{within.mean():.0%}"), ("mean integration steps", f"{texts['steps'].mean():.1f}")]
        top = self.df.loc[self.df["attribution"].abs().idxmax()] if not self.df.empty else None
        if top is not None:
            out.append(
                ("largest |attribution|", f"{top['token'].strip() or repr(top['token'])} ({top['attribution']:+.3g}, text {top['text']})")
            )
        return out

    def plot(self, ax=None, *, text: int | None = None):
        """Bars of one text's prompt-token attributions (the first text by default); returns the axes."""
        return _bars(
            self.df, "attribution", ax, text, ylabel="attribution to log pi(completion)", what="policy attribution per prompt token"
        )

    def figures_html(self) -> Markup:
        """Heatmaps of the first texts' prompt tokens (the completion shown uncoloured), one symmetric scale."""
        rows = []
        for entry in self.meta.get("texts", [])[:HEATMAP_TEXTS]:
            prompt = self.df[self.df["text"] == entry["text"]]
            rows.append(
                (
                    list(prompt["token"]) + list(entry["completion_tokens"]),
                    list(prompt["attribution"]) + [float("nan")] * len(entry["completion_tokens"]),
                )
            )
        return _heatmaps(rows, "attribution", "red prompt tokens raise the log-probability of the completion, blue lower it")

    def table_html(self) -> Markup:
        return views.table(self.texts, caption="Per text: log pi(completion), baseline, completeness delta, steps")


@dataclass(frozen=True, eq=False)
class AlignmentLogRatioResult(Result):
    """Per completion token: how much more (or less) likely the aligned policy makes it than its reference.

    Columns:
        text: index of the (prompt, completion) pair in the inputs.
        position: the token's position in the model's input (BOS = 0; the completion starts after the prompt).
        token_id: the token id.
        token: the token decoded on its own.
        word: index of the word the token belongs to within its text (prompt words counted, `reward.word_starts`).
        logprob: log pi(y_t | prompt, y_<t) under the policy.
        ref_logprob: the same under the reference.
        log_ratio: logprob - ref_logprob (the k1 estimate of the per-token KL when the completions are the
            policy's own samples; positive where alignment made the token more likely).

    `meta["texts"]`: per text, a dict of text, prompt, completion, tokens, logprob, ref_logprob and log_ratio
    (sums over the completion).
    """

    columns: ClassVar[tuple[str, ...]] = ("text", "position", "token_id", "token", "word", "logprob", "ref_logprob", "log_ratio")
    heading: ClassVar[str] = "Alignment log-ratio per completion token"

    @property
    def texts(self) -> pd.DataFrame:
        """`meta["texts"]` as a table, one row per text."""
        return pd.DataFrame(list(self.meta.get("texts", [])))

    def headlines(self) -> list[tuple[str, str]]:
        texts = self.texts
        out = [("texts", str(len(texts)))]
        if self.df.empty:
            return out
        top = self.df.loc[self.df["log_ratio"].idxmax()]
        return out + [
            ("mean sequence log-ratio", f"{texts['log_ratio'].mean():.3g}"),
            ("tokens made more likely", f"{(self.df['log_ratio'] > 0).mean():.0%}"),
            ("largest token log-ratio", f"{top['token'].strip() or repr(top['token'])} ({top['log_ratio']:+.3g}, text {top['text']})"),
        ]

    def plot(self, ax=None, *, text: int | None = None):
        """The log-ratio of each token along one completion (the first text by default); returns the axes."""
        return _bars(self.df, "log_ratio", ax, text, ylabel="log pi - log pi_ref", what="log-ratio along the completion")

    def figures_html(self) -> Markup:
        """Heatmaps of the first completions coloured by log-ratio, one symmetric scale, each after its prompt."""
        groups = list(self.df.groupby("text", sort=True))[:HEATMAP_TEXTS]
        shown = [(list(rows["token"]), list(rows["log_ratio"])) for _, rows in groups]
        prompts = {t["text"]: t["prompt"] for t in self.meta.get("texts", [])}
        meaning = "red: the aligned policy makes the token likelier than its reference did, blue: less likely (nats); the prompt in grey"
        return _heatmaps(shown, "log ratio", meaning, prefixes=[prompts.get(text, "") for text, _ in groups])

    def table_html(self) -> Markup:
        return views.table(self.texts, caption="Per text: summed log-probabilities under the policy and its reference")


@dataclass(frozen=True, eq=False)
class AlignmentAttributionResult(Result):
    """Attribution of each completion's summed log-ratio sum_t log pi(y_t | .) - log pi_ref(y_t | .) to its
    context tokens, one row per token of BOS + prompt + completion.

    Columns:
        text: index of the (prompt, completion) pair in the inputs.
        position: the token's position in the model's input (0 = first kept token, BOS unless cut).
        token_id: the token id.
        token: the token decoded on its own.
        word: index of the word the token belongs to within its text (`reward.word_starts`).
        part: "prompt" (BOS + prompt) or "completion".
        attribution: the token's share, as context, of log_ratio(x) - log_ratio(baseline). BOS (held fixed) and
            the last completion token (context of nothing) get 0; a completion token is attributed for its role
            as input to the later tokens, its own log-ratio being part of the target.

    `meta["texts"]`: per text, a dict of text, prompt, completion, log_ratio, baseline_log_ratio (every context
    token but BOS replaced by the baseline id, the scored tokens unchanged), delta (sum of attributions -
    (log_ratio - baseline_log_ratio)) and steps (Gauss-Legendre steps used).
    """

    columns: ClassVar[tuple[str, ...]] = ("text", "position", "token_id", "token", "word", "part", "attribution")
    heading: ClassVar[str] = "Alignment attribution: context tokens behind the policy/reference log-ratio"

    @property
    def texts(self) -> pd.DataFrame:
        """`meta["texts"]` as a table, one row per text."""
        return pd.DataFrame(list(self.meta.get("texts", [])))

    def headlines(self) -> list[tuple[str, str]]:
        texts = self.texts
        if texts.empty:
            return [("texts attributed", "0")]
        within = _within(texts["delta"], texts["log_ratio"] - texts["baseline_log_ratio"], self.meta)
        return [
            ("texts attributed", str(len(texts))),
            ("completeness within tolerance", f"{within.mean():.0%}"),
            ("mean integration steps", f"{texts['steps'].mean():.1f}"),
        ]

    def plot(self, ax=None, *, text: int | None = None):
        """Bars of one text's token attributions (the first text by default); returns the axes."""
        return _bars(self.df, "attribution", ax, text, ylabel="attribution to the log-ratio", what="alignment attribution per token")

    def figures_html(self) -> Markup:
        """Token heatmaps of the first texts, one symmetric scale."""
        shown = [(list(rows["token"]), list(rows["attribution"])) for _, rows in list(self.df.groupby("text", sort=True))[:HEATMAP_TEXTS]]
        return _heatmaps(shown, "attribution", "red context tokens raise the policy/reference log-ratio of what follows, blue lower it")

    def table_html(self) -> Markup:
        return views.table(self.texts, caption="Per text: log-ratio, baseline log-ratio, completeness delta, steps")


def _within(delta: pd.Series, gap: pd.Series, meta: Mapping) -> np.ndarray:
    """Texts meeting the completeness test of the attribution that wrote `meta` (its tolerance and abs_tolerance)."""
    return (delta.abs() <= meta["tolerance"] * gap.abs() + meta.get("abs_tolerance", 1e-3)).to_numpy()


def _bars(df: pd.DataFrame, column: str, ax, text: int | None, *, ylabel: str, what: str):
    if ax is None:
        _, ax = views.new_figure(width=8.0)
    if df.empty:
        ax.axis("off")
        return ax
    text = int(df["text"].iloc[0]) if text is None else text
    rows = df[df["text"] == text]
    values = rows[column].to_numpy()
    ax.bar(np.arange(len(rows)), values, color=["#b2182b" if v > 0 else "#2166ac" for v in values])
    ax.set_xticks(np.arange(len(rows)))
    ax.set_xticklabels([t.replace("\n", "\\n") for t in rows["token"]], rotation=90, fontsize=7)
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_ylabel(ylabel)
    ax.set_title(f"text {text}: {what}")
    return ax


def _heatmaps(rows: list[tuple[list[str], list[float]]], label: str, meaning: str, prefixes: Sequence[str] | None = None) -> Markup:
    """One token heatmap per (tokens, values), all on the largest finite |value| shown, under their key; each after
    its plain `prefixes` text (the prompt) when given."""
    finite = [abs(float(v)) for _, values in rows for v in values if np.isfinite(v)]
    if not finite:
        return Markup("")
    scale = max(finite)
    parts = [views.token_heatmap(tokens, [float(v) for v in values], label=label, scale=scale) for tokens, values in rows]
    legend = views.heatmap_legend(label=label, scale=scale, meaning=meaning)
    shown = list(zip(prefixes or [""] * len(parts), parts))
    return views.render(
        '{{ legend }}{% for prefix, part in shown %}<p><span class="tokens muted">{{ prefix }}</span>{{ part }}</p>{% endfor %}',
        legend=legend,
        shown=shown,
    )


# --------------------------------------------------------------------------- inputs


Completions = Sequence[str] | Sequence[Sequence[int]]
"""Completion texts, or the token ids the policy sampled (a rollout's `completion_ids`: its exact tokens, EOS included,
which re-tokenizing the decoded text need not give back)."""


def _completion_text(tokenizer, completion) -> str:
    return completion if isinstance(completion, str) else tokenizer.decode(list(completion), skip_special_tokens=False)


def completion_parts(
    model: torch.nn.Module, tokenizer, prompts: Sequence[str], completions: Completions
) -> list[tuple[list[int], list[int]]]:
    """(BOS + prompt, completion) ids per text, cut from the left to the model's context (with a warning).
    A completion given as token ids is taken as it is."""
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions; pass one completion per prompt")
    models.check_vocab_fits(model, tokenizer, where="policy")
    if not len(prompts):
        return []
    prefixes = models.encode_prompts(tokenizer, prompts)
    as_text = [i for i, c in enumerate(completions) if isinstance(c, str)]
    if as_text and len(as_text) != len(completions):
        raise TypeError("pass completions either all as texts or all as token-id lists, not a mix")
    if as_text:
        suffixes = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    else:
        suffixes = [[int(t) for t in c] for c in completions]
    empty = [i for i, s in enumerate(suffixes) if not s]
    if empty:
        raise ValueError(f"completion(s) {empty[:5]} have no tokens; there is no log-probability to attribute. Drop them.")
    context = models.context_length(model)
    too_long = sum(len(p) + len(s) > context for p, s in zip(prefixes, suffixes))
    if too_long:
        warnings.warn(
            f"{too_long} prompt+completion sequence(s) exceed the policy's context of {context} tokens; "
            "truncated from the left so the completions survive.",
            stacklevel=3,
        )
    parts = [models.fit_parts_to_context(list(p), list(s), context) for p, s in zip(prefixes, suffixes)]
    for i, (p, _) in enumerate(parts):
        if not p:
            raise ValueError(f"completion {i} alone fills the policy's context of {context} tokens; nothing is left to condition on")
    return parts


def _fixed(prefix: list[int], prompt_ids: list[int]) -> int:
    """How many leading positions are held fixed: BOS when it survived the cut, else none."""
    return 1 if len(prefix) == len(prompt_ids) else 0


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _decode(tokenizer, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]


@torch.no_grad()
def _token_logprobs(model, parts: Sequence[tuple[list[int], list[int]]], pad_id: int, max_batch_tokens: int) -> list[np.ndarray]:
    """log p(completion token | prefix) per text, (gen_len,) each, in length-sorted chunks of <= max_batch_tokens."""
    out: list[np.ndarray] = [np.zeros(0)] * len(parts)
    for chunk in _chunks([len(p) + len(c) for p, c in parts], 1, max_batch_tokens):
        logprobs, _ = models.completion_logprobs(model, [parts[i][0] for i in chunk], [parts[i][1] for i in chunk], pad_id)
        values = logprobs.double().cpu().numpy()  # (batch, gen_len)
        for j, i in enumerate(chunk):
            out[i] = values[j, : len(parts[i][1])]
    return out


def _chunks(lengths: Sequence[int], per_text: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices sorted by length, grouped so that (texts x per_text) x the longest length <= max_batch_tokens
    (a text that alone exceeds it is a chunk of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end + 1 - start) * per_text * lengths[order[end]] <= max_batch_tokens:
            end += 1
        chunks.append(order[start:end])
        start = end
    return chunks


def _progress(items, desc: str):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False, disable=True if len(items) < 4 else None)


class _Evaluating:
    """Puts models in eval mode for a block and restores their modes after it."""

    def __init__(self, *modules: torch.nn.Module):
        self.modules = modules

    def __enter__(self):
        self.modes = [m.training for m in self.modules]
        for m in self.modules:
            m.eval()

    def __exit__(self, *exc):
        for m, mode in zip(self.modules, self.modes):
            m.train(mode)


# --------------------------------------------------------------------------- policy attribution (Captum's LLM API)


def _ids_input(ids: list[int], fixed: int, tokenizer, baseline_id: int):
    """A Captum `TextTokenInput` built from token ids: Captum's own tokenizes a string with the tokenizer's special
    tokens, whereas the policy reads BOS + prompt ids (`models.encode_prompts`). The first `fixed` positions (BOS)
    are not interpretable features: held at their ids and given no attribution."""
    from captum.attr import TextTokenInput

    class _IdsInput(TextTokenInput):
        def __init__(self) -> None:  # sets what TextTokenInput.__init__ sets, from ids instead of text
            self.inp_tensor = torch.tensor([ids], dtype=torch.long)  # (1, seq)
            self.itp_mask = torch.arange(len(ids))[None, :] >= fixed  # (1, seq)
            self.itp_tensor = self.inp_tensor[self.itp_mask].unsqueeze(0)  # (1, n_features)
            self.skip_tokens = None
            self.values = tokenizer.convert_ids_to_tokens(self.itp_tensor[0].tolist())
            self.tokenizer = tokenizer
            self.n_itp_features = len(self.values)
            self.baselines = baseline_id

    return _IdsInput()


def _captum_attr(policy, tokenizer, prefix, suffix, fixed, baseline_id, method: str, n_steps: int, max_batch_tokens: int) -> np.ndarray:
    """Captum's token_attr of one text: (gen_len, n_features) with features the prompt positions after `fixed`."""
    from captum.attr import FeatureAblation, LayerIntegratedGradients, LLMAttribution, LLMGradientAttribution

    inp = _ids_input(prefix, fixed, tokenizer, baseline_id)
    target = torch.tensor(suffix, dtype=torch.long)
    if method == "integrated_gradients":
        explainer = LLMGradientAttribution(LayerIntegratedGradients(policy, policy.get_input_embeddings()), tokenizer)
        rows = max(1, max_batch_tokens // (len(prefix) + len(suffix)))  # interpolation steps per forward pass
        out = explainer.attribute(inp, target=target, n_steps=n_steps, method="gausslegendre", internal_batch_size=rows)
    else:
        # One forward over prompt + completion per ablation (forward_in_tokens=False): the same logits as
        # `models.completion_logprobs`; Captum's token-by-token decoding would recompute them with a cache.
        with torch.no_grad():
            out = LLMAttribution(FeatureAblation(policy), tokenizer).attribute(inp, target=target, forward_in_tokens=False)
    return out.token_attr.detach().double().cpu().numpy()


def policy_attribution(
    policy: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    completions: Completions,
    *,
    method: str = "integrated_gradients",
    baseline_id: int | None = None,
    n_steps: int | None = None,
    tolerance: float = 0.01,
    max_steps: int = 128,
    max_batch_tokens: int = 16384,
    first_steps: int = 16,
    abs_tolerance: float = 1e-3,
) -> PolicyAttributionResult:
    """Attribution of log pi(completion | BOS + prompt), and of each completion token's log-probability, to the
    prompt tokens, with Captum's LLM API, one text at a time.

    method: "integrated_gradients" (`LLMGradientAttribution(LayerIntegratedGradients(policy, input embeddings))`,
        Gauss-Legendre; completeness: a text's attributions sum to logprob - baseline_logprob + delta) or
        "feature_ablation" (`LLMAttribution(FeatureAblation(policy))`: attribution = the log-probability lost
        when that one prompt token is replaced by the baseline id).
    baseline_id: the token id that replaces an attributed prompt token (default: the pad id). BOS is held fixed.
        On HF Llama the pad row is zero (see the module docstring): pass another id for integrated gradients.
    n_steps (integrated gradients): an int uses that many steps for every text; None adapts: `first_steps` steps,
        doubled for a text while |delta| > tolerance * |logprob - baseline_logprob| + `abs_tolerance`, up to `max_steps`.
    max_batch_tokens (integrated gradients): bound on (steps x seq) per forward pass. Feature ablation runs one
        forward per ablated token (Captum's sequence forward takes one row).

    Captum's LLM API holds the earlier completion tokens at their ids while it attributes token y_t (teacher
    forcing), so only prompt tokens are attributed; `alignment_attribution` also attributes completion tokens.
    The policy is put in eval mode for the call (and restored). Returns a `PolicyAttributionResult`.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "feature_ablation" and n_steps is not None:
        raise ValueError("n_steps is for method='integrated_gradients'; feature ablation has no steps. Leave n_steps=None.")
    _check_steps(n_steps, max_steps, max_batch_tokens)
    _check_adaptive(first_steps, abs_tolerance)
    parts = completion_parts(policy, tokenizer, prompts, completions)
    prompt_ids = models.encode_prompts(tokenizer, prompts) if parts else []
    pad_id = _pad_id(tokenizer)
    baseline_id = pad_id if baseline_id is None else int(baseline_id)
    fixed = [_fixed(p, q) for (p, _), q in zip(parts, prompt_ids)]
    base_parts = [([*p[:f]] + [baseline_id] * (len(p) - f), c) for (p, c), f in zip(parts, fixed)]

    attrs: list[np.ndarray] = []
    steps = np.zeros(len(parts), dtype=np.int64)
    with _Evaluating(policy):
        logprob = np.asarray([lp.sum() for lp in _token_logprobs(policy, parts, pad_id, max_batch_tokens)])
        base_logprob = np.asarray([lp.sum() for lp in _token_logprobs(policy, base_parts, pad_id, max_batch_tokens)])
        for i in _progress(range(len(parts)), f"policy attribution ({method})"):
            prefix, suffix = parts[i]
            if len(prefix) == fixed[i]:  # an empty prompt: BOS alone, nothing to attribute
                attrs.append(np.zeros((len(suffix), 0)))
                continue
            current = first_steps if n_steps is None else n_steps
            while True:
                attr = _captum_attr(policy, tokenizer, prefix, suffix, fixed[i], baseline_id, method, current, max_batch_tokens)
                gap = logprob[i] - base_logprob[i]
                missing = abs(attr.sum() - gap) > tolerance * abs(gap) + abs_tolerance
                if method != "integrated_gradients" or n_steps is not None or not missing or current * 2 > max_steps:
                    break
                current *= 2
            attrs.append(attr)
            steps[i] = current if method == "integrated_gradients" else len(prefix) - fixed[i]
    delta = np.asarray([a.sum() for a in attrs]) - (logprob - base_logprob) if attrs else np.zeros(0)
    if method == "integrated_gradients":
        _warn_incomplete(delta, logprob - base_logprob, tolerance, abs_tolerance, steps, n_steps, "log pi(completion)")

    frames, matrix = [], {"text": [], "target_position": [], "input_position": [], "attribution": []}
    texts = []
    for i, ((prefix, suffix), attr, f) in enumerate(zip(parts, attrs, fixed)):
        ids = prefix + suffix
        words = word_starts(tokenizer, ids, len(prefix))
        positions = np.arange(f, len(prefix))
        frames.append(
            pd.DataFrame(
                {
                    "text": np.full(len(positions), i, dtype=np.int64),
                    "position": positions.astype(np.int64),
                    "token_id": np.asarray(prefix[f:], dtype=np.int64),
                    "token": _decode(tokenizer, prefix[f:]),
                    "word": np.asarray(words[f : len(prefix)], dtype=np.int64),
                    "attribution": attr.sum(0) if attr.size else np.zeros(len(positions)),
                }
            )
        )
        targets, inputs = np.meshgrid(np.arange(len(prefix), len(ids)), positions, indexing="ij")  # (gen_len, n_features)
        matrix["text"] += [i] * attr.size
        matrix["target_position"] += targets.ravel().tolist()
        matrix["input_position"] += inputs.ravel().tolist()
        matrix["attribution"] += attr.ravel().tolist()
        texts.append(
            {
                "text": i,
                "prompt": str(prompts[i]),
                "completion": _completion_text(tokenizer, completions[i]),
                "logprob": float(logprob[i]),
                "baseline_logprob": float(base_logprob[i]),
                "delta": float(delta[i]),
                "steps": int(steps[i]),
                "completion_start": len(prefix),
                "completion_tokens": _decode(tokenizer, suffix),
            }
        )
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: [] for c in PolicyAttributionResult.columns})
    meta = {
        "method": method,
        "baseline_id": baseline_id,
        "n_steps": n_steps,
        "tolerance": tolerance if method == "integrated_gradients" else None,
        "max_steps": max_steps if method == "integrated_gradients" else None,
        "first_steps": first_steps if method == "integrated_gradients" else None,
        "abs_tolerance": abs_tolerance if method == "integrated_gradients" else None,
        "texts": texts,
        "token_attr": matrix,
    }
    return PolicyAttributionResult(df=df, meta=meta)


def _check_steps(n_steps: int | None, max_steps: int, max_batch_tokens: int) -> None:
    if n_steps is not None and n_steps < 1:
        raise ValueError(f"n_steps must be a positive int or None (adaptive), got {n_steps}")
    if max_steps < 1 or max_batch_tokens < 1:
        raise ValueError(f"max_steps and max_batch_tokens must be positive, got {max_steps} and {max_batch_tokens}")


def _warn_incomplete(delta, gap, tolerance: float, abs_tolerance: float, steps, n_steps: int | None, target: str) -> None:
    missed = int((np.abs(delta) > tolerance * np.abs(gap) + abs_tolerance).sum())
    if missed:
        warnings.warn(
            f"{missed} of {len(delta)} text(s) miss completeness (|delta| > {tolerance} * |{target} - its baseline| + "
            f"{abs_tolerance}) at {int(np.max(steps))} steps; their attributions do not add up to the difference. "
            f"{'Raise max_steps' if n_steps is None else 'Raise n_steps or pass n_steps=None (adaptive)'}, or, on an "
            "RMSNorm model (Llama) whose pad embedding is zero, pass another baseline_id.",
            stacklevel=3,
        )


# --------------------------------------------------------------------------- alignment log-ratio


def alignment_log_ratio(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    completions: Completions,
    *,
    max_batch_tokens: int = 16384,
) -> AlignmentLogRatioResult:
    """Per completion token, log pi(y_t | BOS + prompt, y_<t) - log pi_ref(y_t | same), with `models.completion_logprobs`
    in length-sorted batches of at most `max_batch_tokens` tokens, without gradients.

    `reference` is the checkpoint the policy's stage started from (its SFT model); both models must share the
    tokenizer. `completions`: texts, or token-id lists such as a rollout's `completion_ids` (the sampled tokens
    exactly, EOS included). Both are put in eval mode for the call (and restored). Returns an `AlignmentLogRatioResult`.
    """
    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be positive, got {max_batch_tokens}")
    parts = completion_parts(policy, tokenizer, prompts, completions)
    models.check_vocab_fits(reference, tokenizer, where="reference")
    pad_id = _pad_id(tokenizer)
    with _Evaluating(policy, reference):
        logprobs = _token_logprobs(policy, parts, pad_id, max_batch_tokens)
        ref_logprobs = _token_logprobs(reference, parts, pad_id, max_batch_tokens)
    frames, texts = [], []
    for i, (prefix, suffix) in enumerate(parts):
        ids = prefix + suffix
        frames.append(
            pd.DataFrame(
                {
                    "text": np.full(len(suffix), i, dtype=np.int64),
                    "position": np.arange(len(prefix), len(ids), dtype=np.int64),
                    "token_id": np.asarray(suffix, dtype=np.int64),
                    "token": _decode(tokenizer, suffix),
                    "word": np.asarray(word_starts(tokenizer, ids, len(prefix))[len(prefix) :], dtype=np.int64),
                    "logprob": logprobs[i],
                    "ref_logprob": ref_logprobs[i],
                    "log_ratio": logprobs[i] - ref_logprobs[i],
                }
            )
        )
        texts.append(
            {
                "text": i,
                "prompt": str(prompts[i]),
                "completion": _completion_text(tokenizer, completions[i]),
                "tokens": len(suffix),
                "logprob": float(logprobs[i].sum()),
                "ref_logprob": float(ref_logprobs[i].sum()),
                "log_ratio": float((logprobs[i] - ref_logprobs[i]).sum()),
            }
        )
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: [] for c in AlignmentLogRatioResult.columns})
    return AlignmentLogRatioResult(df=df, meta={"texts": texts})


def word_log_ratios(result: AlignmentLogRatioResult) -> pd.DataFrame:
    """One row per completion word of each text: the sum of its pieces' log-ratios (the log-ratio of the word).

    Columns: text, word, word_text (the pieces joined, surrounding whitespace stripped), log_ratio.
    """
    df = result.df
    if df.empty:
        return pd.DataFrame({"text": [], "word": [], "word_text": [], "log_ratio": []})
    grouped = df.sort_values(["text", "position"]).groupby(["text", "word"], sort=True)
    out = grouped.agg(word_text=("token", "".join), log_ratio=("log_ratio", "sum")).reset_index()
    out["word_text"] = out["word_text"].str.strip()
    return out[["text", "word", "word_text", "log_ratio"]]


def mean_word_log_ratios(result: AlignmentLogRatioResult, *, min_count: int = 5) -> pd.DataFrame:
    """Mean log-ratio of each distinct completion word over its occurrences, as `words.mean_word_attributions`
    compares words: pieces summed per word first, then words lower-cased and stripped of surrounding punctuation
    ("Great!" and "great" are one word); empty words and words seen fewer than `min_count` times are left out.

    Columns: word_text, mean_log_ratio, count; sorted by mean_log_ratio, highest first.
    """
    rows = word_log_ratios(result)
    special = rows["word_text"].str.match(r"^<\|?[^<>\s]*\|?>$")  # "<|endoftext|>" stays itself: where the policy stops
    stripped = rows["word_text"].str.lower().str.strip(string.punctuation + string.whitespace)
    words = rows.assign(word_text=rows["word_text"].where(special, stripped))
    words = words[words["word_text"] != ""]
    out = words.groupby("word_text").agg(mean_log_ratio=("log_ratio", "mean"), count=("log_ratio", "size")).reset_index()
    out = out[out["count"] >= min_count].sort_values(["mean_log_ratio", "word_text"], ascending=[False, True])
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------- alignment attribution


def _logprobs_of_embeds(model, embeds, mask, positions, predict_at, targets, completion_mask) -> torch.Tensor:
    """log p(target | prefix) at each completion position, from input embeddings: -> (batch, gen_len), 0 on padding."""
    logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits  # (batch, seq, vocab)
    batch, gen_len, vocab = predict_at.shape[0], predict_at.shape[1], logits.shape[-1]
    picked = torch.gather(logits, 1, predict_at[:, :, None].expand(batch, gen_len, vocab))  # (batch, gen_len, vocab)
    logprobs = torch.log_softmax(picked.float(), dim=-1).gather(-1, targets[:, :, None]).squeeze(-1)
    return logprobs * completion_mask


class _LogRatioOfMix(torch.nn.Module):
    """sum_t log pi(y_t | .) - log pi_ref(y_t | .) as a function of per-token mixing coefficients alpha (batch, seq):
    each model reads alpha * E[x] + (1 - alpha) * E[b] with its own embeddings of the input x and baseline b."""

    def __init__(self, policy: torch.nn.Module, reference: torch.nn.Module):
        super().__init__()
        self.policy, self.reference = policy, reference

    def forward(self, alpha, embeds, base, ref_embeds, ref_base, mask, positions, predict_at, targets, completion_mask):
        a = alpha[:, :, None].to(embeds.dtype)  # (batch, seq, 1)
        logprobs = _logprobs_of_embeds(self.policy, a * embeds + (1 - a) * base, mask, positions, predict_at, targets, completion_mask)
        a = a.to(ref_embeds.dtype)
        ref_logprobs = _logprobs_of_embeds(
            self.reference, a * ref_embeds + (1 - a) * ref_base, mask, positions, predict_at, targets, completion_mask
        )
        return (logprobs - ref_logprobs).sum(-1)  # (batch,)


def _alignment_chunk(forward: _LogRatioOfMix, parts, base_seqs, pad_id: int, n_steps: int, max_batch_tokens: int):
    """IG over alpha of several texts in one Captum call -> (per-text attributions (seq,), log-ratio, baseline log-ratio, delta)."""
    from captum.attr import IntegratedGradients

    device = next(forward.policy.parameters()).device
    seqs = [p + c for p, c in parts]
    ids, mask = models.pad_right(seqs, pad_id)
    base_ids, _ = models.pad_right(base_seqs, pad_id)
    ids, base_ids, mask = ids.to(device), base_ids.to(device), mask.to(device)
    positions = models.position_ids(mask)
    predict_at, completion_mask = models.completion_positions([p for p, _ in parts], [c for _, c in parts], ids.shape[1], device)
    targets = torch.gather(ids, 1, (predict_at + 1).clamp(max=ids.shape[1] - 1)) * completion_mask  # (batch, gen_len)
    with torch.no_grad():
        embeds, base = (forward.policy.get_input_embeddings()(t) for t in (ids, base_ids))  # (batch, seq, d_model)
        ref_embeds, ref_base = (forward.reference.get_input_embeddings()(t) for t in (ids, base_ids))
    args = (embeds, base, ref_embeds, ref_base, mask, positions, predict_at, targets, completion_mask.to(embeds.dtype))
    ones = torch.ones(ids.shape, dtype=torch.float32, device=device)  # (batch, seq)
    with torch.no_grad():
        ratio = forward(ones, *args).double().cpu().numpy()
        base_ratio = forward(torch.zeros_like(ones), *args).double().cpu().numpy()
    rows = max(1, max_batch_tokens // ids.shape[1])  # rows of (text, step) per forward pass
    internal = max(len(seqs), (rows // len(seqs)) * len(seqs))
    attributions, delta = IntegratedGradients(forward).attribute(
        ones,
        baselines=torch.zeros_like(ones),
        additional_forward_args=args,
        n_steps=n_steps,
        method="gausslegendre",
        internal_batch_size=internal,
        return_convergence_delta=True,
    )
    per_token = (attributions * mask).detach().double().cpu().numpy()  # (batch, seq)
    return [per_token[i, : len(s)] for i, s in enumerate(seqs)], ratio, base_ratio, delta.detach().double().cpu().numpy()


def _alignment_ig(forward, parts, base_seqs, pad_id: int, n_steps: int, max_batch_tokens: int, indices: Sequence[int]):
    """IG of the texts `indices` at `n_steps`, chunked so that (texts x steps) x seq <= max_batch_tokens where it can."""
    out = {}
    chunks = _chunks([len(parts[i][0]) + len(parts[i][1]) for i in indices], n_steps, max_batch_tokens)
    for chunk in _progress(chunks, f"alignment attribution ({n_steps} steps)"):
        texts = [indices[j] for j in chunk]
        attrs, ratio, base_ratio, delta = _alignment_chunk(
            forward, [parts[i] for i in texts], [base_seqs[i] for i in texts], pad_id, n_steps, max_batch_tokens
        )
        for j, i in enumerate(texts):
            out[i] = (attrs[j], ratio[j], base_ratio[j], delta[j])
    return out


def alignment_attribution(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    completions: Completions,
    *,
    baseline_id: int | None = None,
    n_steps: int | None = None,
    tolerance: float = 0.01,
    max_steps: int = 128,
    max_batch_tokens: int = 16384,
    first_steps: int = 16,
    abs_tolerance: float = 1e-3,
) -> AlignmentAttributionResult:
    """Integrated gradients of each completion's summed log-ratio sum_t log pi(y_t | .) - log pi_ref(y_t | .) over its
    context tokens: which tokens of the prompt and of the completion so far make the aligned policy differ from its
    reference on what follows.

    Attributed positions: every prompt token (BOS is held fixed: it is its own baseline) and every completion token
    in its role as input to the later positions. The scored tokens y_t are the labels and stay y_t along the path,
    so the target at the baseline is the log-ratio of the same completion after an all-baseline context; the last
    completion token is context of nothing and gets 0. The path is per token: token i enters each model as
    alpha * E[x_i] + (1 - alpha) * E[b_i], with each model's own input embeddings E (see the module docstring), and
    integrated gradients runs over alpha from 0 to 1 (Captum's `IntegratedGradients`, Gauss-Legendre).

    baseline_id: the token id of the baseline b at attributed positions (default: the pad id; on HF Llama the pad
        row is zero, pass another id there).
    n_steps: an int uses exactly that many steps for every text. None adapts as `reward_integrated_gradients` does:
        `first_steps` steps, doubled for the texts whose |delta| > tolerance * |log_ratio - baseline_log_ratio| +
        `abs_tolerance`, up to `max_steps`.
    max_batch_tokens: bound on (texts x steps) x seq per forward pass of each model; several texts share a Captum call.

    Both models are put in eval mode for the call (and restored). Returns an `AlignmentAttributionResult`.
    """
    _check_steps(n_steps, max_steps, max_batch_tokens)
    _check_adaptive(first_steps, abs_tolerance)
    parts = completion_parts(policy, tokenizer, prompts, completions)
    models.check_vocab_fits(reference, tokenizer, where="reference")
    prompt_ids = models.encode_prompts(tokenizer, prompts) if parts else []
    pad_id = _pad_id(tokenizer)
    baseline_id = pad_id if baseline_id is None else int(baseline_id)
    fixed = [_fixed(p, q) for (p, _), q in zip(parts, prompt_ids)]
    base_seqs = [p[:f] + [baseline_id] * (len(p) + len(c) - f) for (p, c), f in zip(parts, fixed)]

    n = len(parts)
    forward = _LogRatioOfMix(policy, reference)
    steps = np.full(n, first_steps if n_steps is None else n_steps, dtype=np.int64)
    results: dict[int, tuple] = {}
    with _Evaluating(policy, reference):
        if n:
            results = _alignment_ig(forward, parts, base_seqs, pad_id, int(steps[0]), max_batch_tokens, list(range(n)))
        while n_steps is None and n:
            delta = np.asarray([results[i][3] for i in range(n)])
            gap = np.asarray([results[i][1] - results[i][2] for i in range(n)])
            missing = np.abs(delta) > tolerance * np.abs(gap) + abs_tolerance
            redo = [i for i in range(n) if missing[i] and steps[i] * 2 <= max_steps]
            if not redo:
                break
            next_steps = int(steps[redo[0]] * 2)  # all texts still missing share one step count
            results.update(_alignment_ig(forward, parts, base_seqs, pad_id, next_steps, max_batch_tokens, redo))
            steps[redo] = next_steps
    ratio = np.asarray([results[i][1] for i in range(n)])
    base_ratio = np.asarray([results[i][2] for i in range(n)])
    delta = np.asarray([results[i][3] for i in range(n)])
    _warn_incomplete(delta, ratio - base_ratio, tolerance, abs_tolerance, steps if n else [0], n_steps, "log-ratio")

    frames, texts = [], []
    for i, (prefix, suffix) in enumerate(parts):
        ids = prefix + suffix
        frames.append(
            pd.DataFrame(
                {
                    "text": np.full(len(ids), i, dtype=np.int64),
                    "position": np.arange(len(ids), dtype=np.int64),
                    "token_id": np.asarray(ids, dtype=np.int64),
                    "token": _decode(tokenizer, ids),
                    "word": np.asarray(word_starts(tokenizer, ids, len(prefix)), dtype=np.int64),
                    "part": ["prompt"] * len(prefix) + ["completion"] * len(suffix),
                    "attribution": results[i][0].astype(np.float64),
                }
            )
        )
        texts.append(
            {
                "text": i,
                "prompt": str(prompts[i]),
                "completion": _completion_text(tokenizer, completions[i]),
                "log_ratio": float(ratio[i]),
                "baseline_log_ratio": float(base_ratio[i]),
                "delta": float(delta[i]),
                "steps": int(steps[i]),
            }
        )
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: [] for c in AlignmentAttributionResult.columns})
    meta = {"baseline_id": baseline_id, "n_steps": n_steps, "tolerance": tolerance, "max_steps": max_steps}
    meta |= {"first_steps": first_steps, "abs_tolerance": abs_tolerance, "texts": texts}
    return AlignmentAttributionResult(df=df, meta=meta)
