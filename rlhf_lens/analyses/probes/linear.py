"""Linear probes per layer, with the controls that keep a high score honest.

For each layer a linear probe (scikit-learn: `StandardScaler` then `LogisticRegression` for a concept with classes,
`Ridge` for a number such as the reward) is cross-validated with folds grouped by prompt, so the texts of one prompt
never sit on both sides of a split (they share words and activations; a split prompt would let the probe recognise
the prompt instead of the concept). The score is computed on the pooled out-of-fold predictions, and beside it:

- `permuted`: the same probe, same folds, on the labels shuffled within each fold, which keeps every fold's class
  balance exactly (and a regression target's values). It says what the probe reaches when the labels carry no
  information at all: chance, up to noise.
- `control_task`: the control task of Hewitt and Liang (2019, "Designing and interpreting probes with control
  tasks"). Each word or token type (`control_tokens`, one per text) gets one label drawn at random from the labels'
  empirical distribution, and every text of that type carries it. The labels are then a function of type identity
  and of nothing else, so what a probe scores on them out of fold is what it can *memorise* from the representation
  (the types seen in training, recognised again in the held-out fold). A probe whose score on the real concept is
  no higher than on this task may be reading token identity, not the concept.
- `selectivity` = score - max(chance, permuted, control_task): what the concept adds beyond both controls. Chance
  is a floor: a control that scores below it (a regression control's R^2 is often negative out of fold) would
  otherwise lift the selectivity above the score itself.

How to read the control task. It is informative only when types recur across folds (`meta["control_coverage"]`, the
share of texts whose type also occurs in the other folds; near 0 makes it a second permutation test) and when there
are several types (one type for every text, e.g. the final "." every reward is read at, makes it constant: the
control is then NaN and says so in `meta["control_note"]`). Like any selectivity it is a difference of two scores
capped at 1: a layer that encodes token identity so well that any labelling of the types is learnable has low
selectivity for every concept, including ones it also encodes in its own right. Hewitt and Liang's advice stands:
prefer the least expressive probe (here: linear, and `l2` larger) that still scores well.

Shape glossary: n (texts), layer, d_model.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
from markupsafe import Markup
from threadpoolctl import threadpool_limits

from rlhf_lens import views
from rlhf_lens.analyses.core.result import Result

__all__ = ["ProbeResult", "control_task_labels", "grouped_folds", "probe_layers"]

Kind = Literal["classification", "regression"]
KINDS: tuple[str, ...] = ("classification", "regression")

ONE_BLAS_THREAD = threadpool_limits.wrap(limits=1, user_api="blas")
"""Probe fits run with one BLAS thread: on 2 cores, OpenBLAS's two threads beside torch's ran the report's probes 2.5x
slower than one thread (149 s against 59 s on the quick run), the matrices being small (n x d_model 128)."""


@dataclass(frozen=True, eq=False)
class ProbeResult(Result):
    """How well a linear probe reads one concept (or the reward) from each layer's activations, one row per layer,
    with its controls.

    Columns:
        layer: the layer (an index into the activations' layer axis unless `layers` named them).
        score: the probe's cross-validated score on the pooled out-of-fold predictions: balanced accuracy (mean
            recall over classes; chance is 1 / classes) for kind "classification", R^2 (0 for predicting the mean)
            for kind "regression". `meta["metric"]` says which.
        ci_low, ci_high: the `ci_level` percentile bootstrap interval of the score, resampling groups (prompts; texts
            when every text is its own group) with replacement and rescoring their out-of-fold predictions. The
            probes are not refitted: the interval is the uncertainty of evaluating on these texts, not of training.
        permuted: the same probe on labels permuted within each fold (same folds, same class balance per fold).
        control_task: the same probe on the Hewitt-Liang control task (labels assigned at random per token type,
            same folds); NaN without `control_tokens` or when the control task is degenerate.
        selectivity: score - max(chance, permuted, control_task) (the largest of chance and the controls that exist).

    `meta`: concept, kind, metric, chance (the score of a probe that knows nothing: 1 / classes or 0), classes (as
    text, in the order the probe codes them), best_layer (the layer of largest selectivity), best_score and
    best_selectivity (there), n (texts), groups, folds, seed, l2, ci_level, bootstrap, control_types (distinct
    types, or None), control_coverage, control_note, unconverged_fits.
    """

    columns: ClassVar[tuple[str, ...]] = ("layer", "score", "ci_low", "ci_high", "permuted", "control_task", "selectivity")
    heading: ClassVar[str] = "Linear probe by layer"

    @property
    def title(self) -> str:
        concept = self.meta.get("concept")
        return f"{self.heading}: {concept}" if concept else self.heading

    def headlines(self) -> list[tuple[str, str]]:
        metric, best = self.meta.get("metric", "score"), self.meta.get("best_layer")
        if best is None:
            return []
        row = self.df[self.df["layer"] == best].iloc[0]
        what = self.meta.get("concept") or "probe"
        return [
            (f"{what}: best layer (by selectivity)", str(best)),
            (f"{what}: {metric} there", f"{row['score']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"),
            (f"{what}: selectivity there", f"{row['selectivity']:+.3f}"),
        ]

    def plot(self, ax=None):
        """Score by layer with its bootstrap band, the two controls, and chance."""
        if ax is None:
            _, ax = views.new_figure(6.0, 3.4)
        x = self.df["layer"].to_numpy()
        score = self.df["score"].to_numpy(dtype=float)
        ax.fill_between(x, self.df["ci_low"], self.df["ci_high"], color="tab:blue", alpha=0.2, linewidth=0)
        ax.plot(x, score, marker="o", color="tab:blue", label=f"probe ({round(100 * self.meta.get('ci_level', 0.95))}% CI)")
        ax.plot(x, self.df["permuted"], marker="s", linestyle="--", color="grey", label="permuted labels")
        if self.df["control_task"].notna().any():
            ax.plot(x, self.df["control_task"], marker="^", linestyle=":", color="tab:orange", label="control task (per token type)")
        ax.axhline(float(self.meta.get("chance", 0.0)), color="black", linewidth=0.6, label="chance")
        ax.set_xticks(x)
        ax.set_xlabel("layer")
        ax.set_ylabel(str(self.meta.get("metric", "score")))
        if self.meta.get("kind") == "classification":
            ax.set_ylim(0.0, 1.02)
        ax.set_title(self.title, fontsize=10)
        ax.legend(fontsize=8)
        ax.figure.tight_layout()
        return ax

    def figures_html(self) -> Markup:
        return views.figure_html(self.plot().figure, f"{self.meta.get('metric', 'score')} of the linear probe by layer, with its controls")

    def table_html(self) -> Markup:
        facts = views.key_values(
            [
                ("concept", self.meta.get("concept") or "–"),
                ("score", f"{self.meta.get('metric')} of out-of-fold predictions"),
                ("texts / groups / folds", f"{self.meta.get('n')} / {self.meta.get('groups')} / {self.meta.get('folds')}"),
                ("chance", self.meta.get("chance")),
                ("control task", self.meta.get("control_note")),
            ]
        )
        return facts + views.table(self.df, caption="Probe score, controls and selectivity by layer")


# --------------------------------------------------------------------------- folds and control labels


def _codes(values: np.ndarray) -> tuple[np.ndarray, list]:
    """(integer code of each value, the distinct values in code order), sorted when they sort."""
    codes, uniques = pd.factorize(pd.Series(list(values)), sort=True)
    return codes.astype(np.int64), list(uniques)


def grouped_folds(labels: np.ndarray, groups: np.ndarray, *, kind: Kind = "classification", folds: int = 5, seed: int = 0) -> np.ndarray:
    """The cross-validation fold of each text: (n,) -> (n,) ints in [0, folds).

    Every group (prompt) falls in exactly one fold. Classification folds are stratified (`StratifiedGroupKFold`,
    which balances the classes across folds as far as whole groups allow); regression folds are `GroupKFold`.
    Both shuffle the groups with `seed`.
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    labels, groups = np.asarray(labels), np.asarray(groups)
    group_codes, distinct = _codes(groups)
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if len(distinct) < folds:
        raise ValueError(
            f"grouped cross-validation needs at least folds={folds} distinct groups, got {len(distinct)}; "
            "pass more texts (or prompts), or fewer folds"
        )
    if kind == "classification":
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        target = _codes(labels)[0]
    else:
        splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        target = labels
    fold = np.full(len(labels), -1, dtype=np.int64)
    with warnings.catch_warnings():
        # "The least populated class in y has only k members": probe_layers' own per-class check says it plainly.
        warnings.simplefilter("ignore", UserWarning)
        for f, (_, test) in enumerate(splitter.split(np.zeros((len(labels), 1)), target, group_codes)):
            fold[test] = f
    return fold


def control_task_labels(labels: np.ndarray, control_tokens: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Hewitt and Liang's control task: one random label per token type, as each text's label: (n,) -> (n,).

    Each distinct value of `control_tokens` draws its label independently from the empirical distribution of
    `labels`, i.e. the label of a text picked uniformly at random (classes come with the probability of their share
    of the texts; a regression target's values each with its frequency), and every text of that type gets it. The
    result is a deterministic function of type identity.
    """
    labels = np.asarray(labels)
    type_codes, types = _codes(np.asarray(control_tokens))
    rng = np.random.default_rng([seed, 1])
    drawn = rng.integers(0, len(labels), size=len(types))  # one text per type, uniformly: its label is the draw
    return labels[drawn][type_codes]


def _permute_within_folds(labels: np.ndarray, fold: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The labels shuffled inside each fold: every fold keeps exactly its own labels (its class balance)."""
    out = labels.copy()
    for f in np.unique(fold):
        where = np.flatnonzero(fold == f)
        out[where] = labels[rng.permutation(where)]
    return out


# --------------------------------------------------------------------------- probes and scores


def _probe(kind: Kind, l2: float, max_iter: int):
    """The probe: standardise each feature on the training fold, then an L2-penalised linear model (a logistic one
    stops after `max_iter` Newton iterations).

    The penalty is `l2 * ||w||^2 / 2` against the summed loss over texts (LogisticRegression's C = 1 / l2; Ridge's
    alpha = l2, whose own penalty is alpha * ||w||^2 against the summed squared error), on standardised features.
    """
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Newton-Cholesky, not the default lbfgs: residual streams are badly conditioned (a few directions of very large
    # variance even after standardising), and lbfgs took 200-600 iterations on the demo reward model's activations
    # where Newton takes 4-8, 2-10x faster at d_model 128 (same objective, same optimum).
    model = LogisticRegression(C=1.0 / l2, solver="newton-cholesky", max_iter=max_iter) if kind == "classification" else Ridge(alpha=l2)
    return make_pipeline(StandardScaler(), model)


def _fit(x: np.ndarray, y: np.ndarray, kind: Kind, l2: float, max_iter: int):
    """A fitted probe and whether its solver ran out of iterations."""
    from sklearn.exceptions import ConvergenceWarning

    probe = _probe(kind, l2, max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # counted instead: meta["unconverged_fits"]
        probe.fit(x, y)
    n_iter = getattr(probe[-1], "n_iter_", None)
    return probe, bool(n_iter is not None and np.max(n_iter) >= max_iter)


def _out_of_fold(x: np.ndarray, y: np.ndarray, fold: np.ndarray, kind: Kind, l2: float, max_iter: int) -> tuple[np.ndarray, int]:
    """Each text's prediction by the probe trained on the other folds, and the number of unconverged fits.

    A classification training fold that holds one class only predicts that class (there is nothing to fit)."""
    predicted = np.zeros(len(y), dtype=y.dtype if kind == "classification" else float)
    unconverged = 0
    for f in np.unique(fold):
        train, test = fold != f, fold == f
        if kind == "classification" and len(np.unique(y[train])) < 2:
            predicted[test] = y[train][0]
            continue
        probe, stalled = _fit(x[train], y[train], kind, l2, max_iter)
        predicted[test] = probe.predict(x[test])
        unconverged += stalled
    return predicted, unconverged


def _group_stats(y: np.ndarray, predicted: np.ndarray, group: np.ndarray, n_groups: int, kind: Kind, n_classes: int) -> np.ndarray:
    """Per-group sums the score is a function of: (groups, stats). Classification: per class, the count of texts
    and of correct predictions; regression: count, sum y, sum y^2, sum of squared errors."""
    if kind == "classification":
        stats = np.zeros((n_groups, 2 * n_classes))
        np.add.at(stats, (group, y), 1.0)
        np.add.at(stats, (group, n_classes + y), (predicted == y).astype(float))
        return stats
    columns = np.stack([np.ones_like(y, dtype=float), y, y**2, (y - predicted) ** 2], axis=1)
    stats = np.zeros((n_groups, 4))
    np.add.at(stats, group, columns)
    return stats


def _score_from_stats(totals: np.ndarray, kind: Kind) -> np.ndarray:
    """The score from summed group stats: (..., stats) -> (...). Balanced accuracy averages recall over the classes
    present; R^2 = 1 - SSE / total sum of squares about the mean."""
    if kind == "classification":
        n_classes = totals.shape[-1] // 2
        count, correct = totals[..., :n_classes], totals[..., n_classes:]
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(count > 0, correct / np.where(count > 0, count, 1.0), np.nan)
        return np.nanmean(recall, axis=-1)
    n, sum_y, sum_y2, sse = (totals[..., i] for i in range(4))
    total = sum_y2 - sum_y**2 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 1.0 - sse / np.where(total > 0, total, 1.0), np.nan)


def _score(y, predicted, group, n_groups, kind, n_classes) -> float:
    return float(_score_from_stats(_group_stats(y, predicted, group, n_groups, kind, n_classes).sum(0), kind))


# --------------------------------------------------------------------------- the analysis


@ONE_BLAS_THREAD
def probe_layers(
    activations: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    kind: Kind = "classification",
    control_tokens: np.ndarray | None = None,
    folds: int = 5,
    seed: int = 0,
    concept: str = "",
    l2: float = 1.0,
    layers: Sequence[int] | None = None,
    bootstrap: int = 1000,
    ci_level: float = 0.95,
    max_iter: int = 100,
) -> ProbeResult:
    """Cross-validated linear probes of `labels` from each layer, with a permutation control and (given
    `control_tokens`) the Hewitt-Liang control task; see the module docstring.

    activations: (n, layer, d_model) float, one vector per text and layer (e.g. the residual stream at the token the
        reward is read at). labels: (n,) the concept's classes (any hashable values) or, for kind "regression", numbers.
    groups: (n,) what must not be split across folds: the prompt id (texts of one prompt share a fold).
    control_tokens: (n,) the word or token type of each text for the control task (e.g. the token id at the probed
        position), or None for no control task.
    l2: the penalty on the standardised weights (see `_probe`); larger is a less expressive probe.
    layers: what to call each slice of the layer axis (default 0, 1, ...).
    bootstrap: resamples behind each score's confidence interval; ci_level: its coverage (percentile bootstrap).
    max_iter: Newton iterations a logistic probe may take (a handful is usual); fits that use them all are counted
        in `meta["unconverged_fits"]`.
    """
    x_all, y_raw, groups = _check_inputs(activations, labels, groups, kind=kind, control_tokens=control_tokens, l2=l2)
    if bootstrap < 1 or not 0 < ci_level < 1 or max_iter < 1:
        raise ValueError(f"bootstrap and max_iter must be at least 1 and ci_level in (0, 1), got {bootstrap}, {max_iter} and {ci_level}")
    # float32 halves the time of a multinomial Newton fit; on the demo reward model's activations every score came
    # out identical to 4 decimals. probe_directions, one fit per layer, keeps float64.
    x_all = x_all.astype(np.float32)
    n, n_layers, _ = x_all.shape
    layer_names = list(range(n_layers)) if layers is None else [int(layer) for layer in layers]
    if len(layer_names) != n_layers:
        raise ValueError(f"layers names {len(layer_names)} layers but activations have {n_layers} (shape {x_all.shape})")

    if kind == "classification":
        y, classes = _codes(y_raw)
        if len(classes) < 2:
            raise ValueError(f"labels of concept {concept!r} hold one class only ({classes[0]!r}); a probe needs at least two")
        chance = 1.0 / len(classes)
    else:
        y, classes, chance = y_raw.astype(float), [], 0.0
    n_classes = len(classes)
    fold = grouped_folds(y, groups, kind=kind, folds=folds, seed=seed)
    if kind == "classification":
        _check_folds_hold_classes(y, fold, classes, concept)
    group, distinct_groups = _codes(groups)
    n_groups = len(distinct_groups)

    rng = np.random.default_rng(seed)
    permuted_y = _permute_within_folds(y, fold, rng)
    control_y, control_meta = _control(y, control_tokens, fold, seed=seed)
    # One set of bootstrap weights for every layer: counts of each group in each resample, i.e. the groups drawn
    # with replacement (common random numbers, so layers are compared on the same resamples).
    weights = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=bootstrap).astype(float)  # (boot, groups)
    tail = 100 * (1 - ci_level) / 2

    rows, unconverged = [], 0
    for index, name in enumerate(layer_names):
        x = x_all[:, index, :]  # (n, d_model)
        predicted, stalled = _out_of_fold(x, y, fold, kind, l2, max_iter)
        stats = _group_stats(y, predicted, group, n_groups, kind, n_classes)
        boot = _score_from_stats(weights @ stats, kind)
        low, high = np.nanpercentile(boot, [tail, 100 - tail])
        permuted, stalled_p = _out_of_fold(x, permuted_y, fold, kind, l2, max_iter)
        control, stalled_c = (np.nan, 0) if control_y is None else _out_of_fold(x, control_y, fold, kind, l2, max_iter)
        unconverged += stalled + stalled_p + stalled_c
        score = float(_score_from_stats(stats.sum(0), kind))
        permuted_score = _score(permuted_y, permuted, group, n_groups, kind, n_classes)
        control_score = math.nan if control_y is None else _score(control_y, control, group, n_groups, kind, n_classes)
        rows.append(
            {
                "layer": name,
                "score": score,
                "ci_low": float(low),
                "ci_high": float(high),
                "permuted": permuted_score,
                "control_task": control_score,
                "selectivity": score - max(chance, float(np.fmax(permuted_score, control_score))),
            }
        )
    df = pd.DataFrame(rows)
    best = int(df["selectivity"].to_numpy().argmax()) if df["selectivity"].notna().any() else None
    meta = {
        "concept": concept,
        "kind": kind,
        "metric": "balanced accuracy" if kind == "classification" else "R^2",
        "chance": chance,
        "classes": [str(c) for c in classes],
        "best_layer": None if best is None else int(df["layer"].iloc[best]),
        "best_score": None if best is None else float(df["score"].iloc[best]),
        "best_selectivity": None if best is None else float(df["selectivity"].iloc[best]),
        "n": int(n),
        "groups": n_groups,
        "folds": int(folds),
        "seed": int(seed),
        "l2": float(l2),
        "ci_level": float(ci_level),
        "bootstrap": int(bootstrap),
        **control_meta,
        "unconverged_fits": int(unconverged),
    }
    return ProbeResult(df=df, meta=meta)


def _control(y: np.ndarray, control_tokens, fold: np.ndarray, *, seed: int) -> tuple[np.ndarray | None, dict]:
    """The control-task labels (None when there are none to fit) and what `meta` says about them."""
    if control_tokens is None:
        return None, {"control_types": None, "control_coverage": None, "control_note": "none (no control_tokens given)"}
    type_codes, types = _codes(np.asarray(control_tokens))
    # A type is covered in a fold when it also occurs in another fold: only then can the probe have learnt its label.
    folds_of_type = pd.Series(fold).groupby(type_codes).nunique().to_numpy()
    coverage = float(np.mean(folds_of_type[type_codes] > 1))
    control_y = control_task_labels(y, control_tokens, seed=seed)
    meta = {"control_types": len(types), "control_coverage": coverage}
    degenerate = len(np.unique(control_y)) < 2
    if degenerate:
        note = (
            f"not computed: the {len(types)} token type(s) all drew the same control label, so the control task is "
            "constant; pass finer control_tokens (the control task needs many types that recur across folds)"
        )
        return None, {**meta, "control_note": note}
    note = f"Hewitt-Liang: one random label per token type, {len(types)} types; {coverage:.0%} of texts have a type seen in other folds"
    return control_y, {**meta, "control_note": note}


def _check_inputs(activations, labels, groups, *, kind, control_tokens, l2):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not (l2 > 0 and math.isfinite(l2)):
        raise ValueError(f"l2 must be a positive number, got {l2}")
    x = np.asarray(activations, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"activations must be (n, layer, d_model), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"activations hold {int((~np.isfinite(x)).sum())} non-finite values; probes need finite activations")
    labels, groups = np.asarray(labels), np.asarray(groups)
    named = [("labels", labels), ("groups", groups)]
    if control_tokens is not None:
        named.append(("control_tokens", np.asarray(control_tokens)))
    for name, values in named:
        if values.shape != (x.shape[0],):
            raise ValueError(f"{name} must be (n,) = ({x.shape[0]},) like the activations' first axis, got shape {values.shape}")
    if kind == "regression":
        if not np.issubdtype(labels.dtype, np.number) or not np.isfinite(labels.astype(float)).all():
            raise ValueError("kind 'regression' needs finite numeric labels; for classes pass kind='classification'")
    return x, labels, groups


def _check_folds_hold_classes(y: np.ndarray, fold: np.ndarray, classes: list, concept: str) -> None:
    counts = pd.crosstab(fold, y)
    missing = [(int(f), classes[int(c)]) for f in counts.index for c in counts.columns if counts.loc[f, c] == counts.loc[:, c].sum()]
    if missing:
        f, c = missing[0]
        raise ValueError(
            f"class {c!r} of concept {concept!r} falls entirely in fold {f}, so no training fold holds it; it needs texts in "
            "several groups (prompts). Pass more texts of that class, or fewer folds"
        )
