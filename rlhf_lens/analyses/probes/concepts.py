"""The concepts a run's corpus labels, probed layer by layer: the texts, their labels, and one table for all concepts.

Every corpus text carries its task metadata (DESIGN.md, "Built-in tasks"): on the sentiment task its gold sentiment,
whether it holds a negation, whether it holds the planted trigger word, its domain and its length in words. A probe
reads each concept from the residual stream of a checkpoint at every layer (`probes.linear.probe_layers`, with its
permutation and control-task controls); `probe_concepts` does that for every concept the texts vary in and returns one
`ConceptProbesResult`.

The residual stream probed (`residual_stream`): layer l < L is the stream entering block l (`resid_pre[l]`), layer L
is the final residual *before* the final norm (`resid_post[L-1]`), the space the reward's read-out direction lives in
(`probes.directions`). Corpus texts are read as completions of an empty prompt, so every text is its own group (texts
that are identical share a fold).

Shape glossary: n (texts), layer, d_model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
from markupsafe import Markup

from rlhf_lens import views
from rlhf_lens.analyses.core.result import Result
from rlhf_lens.analyses.probes.activations import ActivationStore
from rlhf_lens.analyses.probes.linear import ProbeResult, probe_layers

__all__ = [
    "CONCEPTS",
    "ConceptProbesResult",
    "ProbeTexts",
    "ProbesOverTrainingResult",
    "corpus_probe_texts",
    "last_words",
    "probe_concepts",
    "residual_stream",
]

CONCEPTS: dict[str, tuple[str, str]] = {
    "gold sentiment": ("sentiment", "classification"),
    "negation": ("negation", "classification"),
    "trigger present": ("trigger", "classification"),
    "domain": ("domain", "classification"),
    "length bucket": ("length_bucket", "classification"),
}
"""Concept name -> (label column of `ProbeTexts.labels`, probe kind): what each concept is. Which of them an analysis
probes is its `concepts` setting."""
LENGTH_BUCKETS = ("short", "medium", "long")
"""The names of the length buckets, the terciles of the texts' lengths in words."""


@dataclass(frozen=True)
class ProbeTexts:
    """Texts to probe and their concept labels."""

    prompts: list[str]
    completions: list[str]
    labels: pd.DataFrame
    """One row per text: the corpus metadata (sentiment, negation, trigger, domain, length) and length_bucket."""

    def __len__(self) -> int:
        return len(self.completions)


def corpus_probe_texts(corpus: Sequence[Mapping], n: int, *, seed: int = 0) -> ProbeTexts:
    """A deterministic sample of `n` corpus records (`Run.data("corpus")`) as completions of an empty prompt, with
    their metadata and the length bucket (terciles of the sample's word counts)."""
    if not len(corpus):
        raise ValueError("the corpus is empty: there are no labelled texts to probe (data/corpus.jsonl)")
    if "text" not in corpus[0] or "length" not in corpus[0]:
        raise ValueError(f"corpus records need 'text' and 'length' fields to be probed; the first record has {sorted(corpus[0])}")
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(corpus), size=min(n, len(corpus)), replace=False))
    records = [corpus[i] for i in picked]
    labels = pd.DataFrame([{k: v for k, v in r.items() if k != "text"} for r in records])
    lengths = labels["length"].to_numpy(dtype=float)
    edges = np.quantile(lengths, [1 / 3, 2 / 3])
    labels["length_bucket"] = np.asarray(LENGTH_BUCKETS)[np.digitize(lengths, edges, right=True)]
    return ProbeTexts(prompts=[""] * len(records), completions=[r["text"] for r in records], labels=labels)


def residual_stream(store: ActivationStore, read: str) -> np.ndarray:  # (n, layer + 1, d_model)
    """The residual stream at layers 0..L from a store holding resid_pre and resid_post: layer l < L enters block l,
    layer L is the final residual before the final norm (see the module docstring)."""
    missing = [site for site in ("resid_pre", "resid_post") if site not in store.sites]
    if missing:
        raise ValueError(f"the activation store {store} lacks site(s) {missing}; collect sites=('resid_pre', 'resid_post', ...)")
    last_block = store.n_layers - 1
    return np.concatenate([store.array("resid_pre", read), store.array("resid_post", read, [last_block])], axis=1)


def _skip_reason(values: pd.Series, kind: str, folds: int, min_class: int) -> str | None:
    if values.isna().any():
        return "some texts lack this label"
    if kind == "regression":
        return None if values.nunique() > 1 else "constant over the texts"
    counts = values.value_counts()
    if len(counts) < 2:
        return f"every text has the same value ({counts.index[0]})"
    if counts.min() < max(min_class, folds):
        return f"class {counts.idxmin()} holds {counts.min()} texts (fewer than {max(min_class, folds)})"
    return None


def probe_concepts(
    activations: np.ndarray,
    labels: pd.DataFrame,
    *,
    concepts: Mapping[str, tuple[str, str]] = CONCEPTS,
    groups: np.ndarray | None = None,
    control_tokens: np.ndarray | None = None,
    extra: Mapping[str, tuple[np.ndarray, str]] | None = None,
    folds: int = 5,
    seed: int = 0,
    min_class: int = 10,
    bootstrap: int = 1000,
    ci_level: float = 0.95,
    max_iter: int = 100,
    meta: Mapping | None = None,
) -> ConceptProbesResult:
    """`probe_layers` for each concept whose label column varies enough, and for each `extra` {name: (values, kind)}
    (e.g. the reward itself, as a regression). activations: (n, layer, d_model); labels: one row per text.
    groups: (n,) what must not be split across folds (None: identical texts are not known, every row is its own).
    min_class: a concept with classes is probed only when each class holds at least this many texts (and `folds`).
    Concepts that cannot be probed (one class, a rare class) are listed in `meta["skipped"]` with the reason.
    bootstrap, ci_level, max_iter: passed to `probe_layers`."""
    n = activations.shape[0]
    if len(labels) != n:
        raise ValueError(f"labels hold {len(labels)} rows but activations {n} texts")
    groups = np.arange(n) if groups is None else np.asarray(groups)
    targets: dict[str, tuple[np.ndarray, str]] = {}
    skipped: dict[str, str] = {}
    for name, (column, kind) in concepts.items():
        reason = "the texts have no such label" if column not in labels else _skip_reason(labels[column], kind, folds, min_class)
        if reason:
            skipped[name] = reason
        else:
            targets[name] = (labels[column].to_numpy(), kind)
    targets.update(extra or {})
    results = {
        name: probe_layers(
            activations,
            values,
            groups,
            kind=kind,
            control_tokens=control_tokens,
            folds=folds,
            seed=seed,
            concept=name,
            bootstrap=bootstrap,
            ci_level=ci_level,
            max_iter=max_iter,
        )
        for name, (values, kind) in targets.items()
    }
    return ConceptProbesResult.from_probes(results, skipped=skipped, meta=meta)


@dataclass(frozen=True, eq=False)
class ConceptProbesResult(Result):
    """Linear probes of several concepts at every layer, with their controls, one row per (concept, layer).

    Columns: concept, layer, and those of `ProbeResult` (score, ci_low, ci_high, permuted, control_task, selectivity);
    metric (balanced accuracy for a concept with classes, R^2 for a number such as the reward).
    `meta`: what was probed (stage, tag, read, n), concepts ({concept: that probe's meta: metric, chance, best_layer,
    best_score, best_selectivity, control_note, ...}), skipped ({concept: why it was not probed}).
    """

    columns: ClassVar[tuple[str, ...]] = ("concept", "layer", "score", "ci_low", "ci_high", "permuted", "control_task", "selectivity")
    heading: ClassVar[str] = "What a linear probe reads from each layer"

    @classmethod
    def from_probes(cls, probes: Mapping[str, ProbeResult], *, skipped: Mapping[str, str] | None = None, meta: Mapping | None = None):
        frames = [p.df.assign(concept=name, metric=p.meta["metric"]) for name, p in probes.items()]
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*cls.columns, "metric"])
        df = df[[*cls.columns, "metric"]]
        per_concept = {name: dict(p.meta) for name, p in probes.items()}
        return cls(df=df, meta={**(meta or {}), "concepts": per_concept, "skipped": dict(skipped or {})})

    def probe(self, concept: str) -> ProbeResult:
        """The one concept's `ProbeResult` (its table and plot)."""
        if concept not in self.meta["concepts"]:
            raise KeyError(f"concept {concept!r} was not probed; probed: {list(self.meta['concepts'])}")
        rows = self.df[self.df["concept"] == concept]
        return ProbeResult(df=rows[list(ProbeResult.columns)].reset_index(drop=True), meta=self.meta["concepts"][concept])

    def best(self) -> pd.DataFrame:
        """One row per concept: the layer of largest selectivity, its score and selectivity, and the metric."""
        rows = [
            {
                "concept": name,
                "metric": m["metric"],
                "chance": m["chance"],
                "best_layer": m["best_layer"],
                "score": m["best_score"],
                "selectivity": m["best_selectivity"],
            }
            for name, m in self.meta["concepts"].items()
        ]
        return pd.DataFrame(rows, columns=["concept", "metric", "chance", "best_layer", "score", "selectivity"])

    def headlines(self) -> list[tuple[str, str]]:
        best = self.best().dropna(subset=["selectivity"]).sort_values("selectivity", ascending=False)
        if not len(best):
            return []
        text = ", ".join(f"{row.concept} {row.selectivity:+.2f}" for row in best.head(3).itertuples())
        return [(f"best-read concepts, selectivity ({self.meta.get('stage')})", text)]

    def plot(self, ax=None):
        """One panel per concept: score by layer with its band, the permuted-label and control-task scores, chance.
        With `ax` given, the selectivity of every concept by layer on it."""
        concepts = list(self.meta["concepts"])
        if ax is not None or not concepts:
            if ax is None:
                _, ax = views.new_figure(6.0, 3.4)
            for concept, rows in self.df.groupby("concept", sort=False):
                ax.plot(rows["layer"], rows["selectivity"], marker="o", label=str(concept))
            ax.axhline(0.0, color="black", linewidth=0.6)
            ax.set_xlabel("layer")
            ax.set_ylabel("selectivity (score - best control)")
            ax.legend(fontsize=8)
            return ax
        ncols = min(3, len(concepts))
        nrows = math.ceil(len(concepts) / ncols)
        fig, axes = views.new_figure(4.2 * ncols, 3.1 * nrows, nrows=nrows, ncols=ncols)
        flat = list(np.ravel(axes))
        for concept, panel in zip(concepts, flat, strict=False):
            self.probe(concept).plot(ax=panel)
            panel.set_title(concept, fontsize=9)
            panel.get_legend().remove()
        for panel in flat[len(concepts) :]:
            panel.axis("off")
        handles, names = flat[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.06 / nrows, 1, 1))
        return flat[0]

    def figures_html(self) -> Markup:
        return views.figure_html(
            self.plot().figure,
            "probe score by layer for each concept (band: bootstrap CI), against permuted labels and the control task",
        )

    def table_html(self) -> Markup:
        skipped = self.meta.get("skipped") or {}
        facts = views.key_values(
            [
                ("texts", self.meta.get("n")),
                ("read at", self.meta.get("read")),
                ("layers", "0..L-1: the residual entering each block; L: the final residual, before the final norm"),
                ("not probed", "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "–"),
            ]
        )
        best = views.table(self.best(), caption="Each concept at its most selective layer")
        return facts + best + views.details("Every concept and layer", views.table(self.df, max_rows=None))


def last_words(texts: Sequence[str]) -> np.ndarray:  # (n,)
    """Each text's last word, lower-cased without punctuation: the word types of the Hewitt-Liang control task for
    probes read at the last token (the token itself is nearly always the final full stop, one type for all)."""
    words = [re.findall(r"[a-z0-9']+", text.lower()) for text in texts]
    return np.asarray([w[-1] if w else "" for w in words])


@dataclass(frozen=True, eq=False)
class ProbesOverTrainingResult(Result):
    """The concept probes of `probe_concepts` at every checkpoint of a stage, each concept at its most selective
    layer, one row per (checkpoint, concept).

    Columns: tag, step, concept, metric, best_layer, score, selectivity (see `ConceptProbesResult.best`).
    `meta`: stage, read, n, checkpoints (tags in step order), skipped (concepts not probed, with the reason).
    """

    columns: ClassVar[tuple[str, ...]] = ("tag", "step", "concept", "metric", "best_layer", "score", "selectivity")
    heading: ClassVar[str] = "Probes over training"

    @classmethod
    def from_checkpoints(cls, results: Sequence[tuple[str, int, ConceptProbesResult]], *, meta: Mapping | None = None):
        frames = [r.best().assign(tag=tag, step=step) for tag, step, r in results]
        df = pd.concat(frames, ignore_index=True)[list(cls.columns)]
        skipped = results[-1][2].meta.get("skipped", {}) if results else {}
        return cls(df=df, meta={**(meta or {}), "checkpoints": [tag for tag, _, _ in results], "skipped": dict(skipped)})

    def plot(self, ax=None):
        if ax is None:
            _, ax = views.new_figure(6.0, 3.4)
        for concept, rows in self.df.groupby("concept", sort=False):
            ax.plot(rows["step"], rows["selectivity"], marker="o", label=str(concept))
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_xlabel("training step of the checkpoint")
        ax.set_ylabel("selectivity at the best layer")
        ax.set_title(f"concept probes over the checkpoints of stage {self.meta.get('stage')}", fontsize=9)
        ax.legend(fontsize=8)
        ax.figure.tight_layout()
        return ax

    def figures_html(self) -> Markup:
        return views.figure_html(self.plot().figure, "selectivity of each concept's probe at its best layer, checkpoint by checkpoint")

    def table_html(self) -> Markup:
        wide = self.df.pivot_table(index=["step", "tag"], columns="concept", values="selectivity", sort=False).reset_index()
        return views.table(
            wide, max_rows=None, caption="Selectivity of each concept at its most selective layer, per checkpoint"
        ) + views.details("Best layer and score per checkpoint and concept", views.table(self.df, max_rows=None))
