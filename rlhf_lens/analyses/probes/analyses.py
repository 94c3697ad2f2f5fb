"""The probe analyses a run gets from `rlhf-lens analyze` and the report (built on `probes.concepts`,
`probes.directions` and `probes.steering`).

Texts: a deterministic sample of the run's corpus (`data/corpus.jsonl`), whose records carry the concept labels.
A reward checkpoint is read at the last token (where its score head reads), a policy checkpoint as the mean over the
text's tokens. Activations are cached under the run's analyses folder (`probes.activations.run_activations`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from rlhf_lens.analyses._heldout import oracle
from rlhf_lens.analyses._reference import final_tag
from rlhf_lens.analyses.core.registry import Needs, analysis, register_section
from rlhf_lens.analyses.probes.activations import reward_readout, run_activations
from rlhf_lens.analyses.probes.concepts import (
    CONCEPTS,
    ConceptProbesResult,
    ProbesOverTrainingResult,
    ProbeTexts,
    corpus_probe_texts,
    last_words,
    probe_concepts,
    residual_stream,
)
from rlhf_lens.analyses.probes.directions import DirectionAlignmentResult, concept_patterns, probe_directions, reward_direction_alignment
from rlhf_lens.analyses.probes.steering import ConceptSteeringResult, steer_policy, steer_rewards
from rlhf_lens.runs import FINAL_TAG, Run

register_section(
    "probes",
    "Probes",
    order=47,
    intro="What the reward model and the policy encode. Linear probes read each concept the corpus labels (gold "
    "sentiment, negation, the planted trigger, domain, length) from the residual stream at every layer, against two "
    "controls: the same probe on permuted labels, and on a control task that only token identity can solve (Hewitt and "
    "Liang, 2019); selectivity is what the concept adds beyond both. Then the reward model's read-out direction against "
    "the concepts' directions, and the causal check: push the residual stream along a concept's direction and see "
    "whether the reward (or the gold score of the policy's samples) moves.",
)

SITES = ("resid_pre", "resid_post", "resid_final")
"""The sites `residual_activations` collects: `residual_stream` reads resid_pre and resid_post, the reward read-out
resid_final."""
SENTIMENT_VALUE = {"negative": -1.0, "mixed": 0.0, "neutral": 0.0, "positive": 1.0}
"""Gold sentiment as a number, for its direction (the slope of the activations on it)."""


@functools.cache
def _probe_texts(run_path: str, corpus_sha: str, n: int) -> ProbeTexts:
    return corpus_probe_texts(Run.open(run_path).data("corpus"), n)


def probe_texts(run: Run, n: int = 1000) -> ProbeTexts:
    """The run's corpus sample of `n` texts with their labels (the same texts for every stage and checkpoint)."""
    sha = run.manifest["data"].get("corpus.jsonl", {}).get("sha256", "")
    return _probe_texts(str(run.path), sha, n)


def _is_reward(run: Run, stage: str) -> bool:
    return run.stage(stage).kind == "reward"


def _is_scalar_reward(run: Run, stage: str, tag: str = FINAL_TAG) -> bool:
    return _is_reward(run, stage) and run.checkpoint(stage, tag).meta.get("reward_kind") != "generative"


def _read(run: Run, stage: str) -> str:
    return "last" if _is_reward(run, stage) else "completion_mean"


def residual_activations(run: Run, stage: str, tag: str, texts: ProbeTexts) -> tuple[np.ndarray, np.ndarray | None]:
    """(n, layer + 1, d_model) residual stream of checkpoint `tag` (`concepts.residual_stream`) and, for a scalar
    reward checkpoint, each text's reward (its read-out of the final residual); None for other checkpoints."""
    read = _read(run, stage)
    store = run_activations(run, stage, texts.prompts, texts.completions, tag=tag, sites=SITES, reads=(read,), quiet=True)
    rewards = None
    if _is_scalar_reward(run, stage, tag):
        rewards = reward_readout(run.checkpoint(stage, tag).path).rewards(store.array("resid_final", "last"))
    return residual_stream(store, read), rewards


def chosen_concepts(names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """The concepts called `names`, as `probe_concepts` takes them ({name: (label column, kind)} from `CONCEPTS`);
    ValueError names an unknown one."""
    unknown = [name for name in names if name not in CONCEPTS]
    if unknown:
        raise ValueError(f"unknown concept(s) {unknown}; the corpus concepts are {list(CONCEPTS)}")
    return {name: CONCEPTS[name] for name in names}


def checkpoint_concept_probes(
    run: Run,
    stage: str,
    tag: str,
    texts: ProbeTexts,
    concepts: Mapping[str, tuple[str, str]] = CONCEPTS,
    *,
    min_class: int = 10,
    bootstrap: int = 1000,
    ci_level: float = 0.95,
    max_iter: int = 100,
) -> ConceptProbesResult:
    """`probe_concepts` on checkpoint `tag` of `stage` over `texts`, with the reward as one more (regression) concept
    for a scalar reward model. min_class, bootstrap, ci_level, max_iter: as in `probe_concepts`."""
    activations, rewards = residual_activations(run, stage, tag, texts)
    extra = {"reward": (rewards, "regression")} if rewards is not None else None
    meta = {"stage": stage, "tag": tag, "read": _read(run, stage), "n": len(texts)}
    return probe_concepts(
        activations,
        texts.labels,
        concepts=concepts,
        groups=np.asarray(texts.completions),
        control_tokens=last_words(texts.completions),
        extra=extra,
        min_class=min_class,
        bootstrap=bootstrap,
        ci_level=ci_level,
        max_iter=max_iter,
        meta=meta,
    )


# --------------------------------------------------------------------------- probes by layer

CHECKPOINTS = Needs(checkpoints=True, data=("corpus",))


@analysis("probes.reward_concepts", result=ConceptProbesResult, section="probes", needs=replace(CHECKPOINTS, stage_kind="reward"), order=1)
def analyze_reward_concepts(
    run: Run,
    stage: str,
    *,
    texts: int = 1000,
    concepts: tuple[str, ...] = ("gold sentiment", "negation", "trigger present", "domain", "length bucket"),
    min_class: int = 10,
    bootstrap: int = 1000,
    ci_level: float = 0.95,
    max_iter: int = 100,
) -> ConceptProbesResult:
    """Linear probes of each corpus concept (and of the reward) at every layer of the final reward model of `stage`,
    read at the last token, with the permuted-label and control-task controls.

    texts: corpus texts probed (a deterministic sample).
    concepts: the corpus concepts probed (names of `CONCEPTS`).
    min_class: a concept is probed only when each of its classes holds at least this many texts.
    bootstrap: resamples behind each score's confidence interval.
    ci_level: the coverage of that interval.
    max_iter: Newton iterations a logistic probe may take.
    """
    return checkpoint_concept_probes(
        run,
        stage,
        final_tag(run, stage),
        probe_texts(run, texts),
        chosen_concepts(concepts),
        min_class=min_class,
        bootstrap=bootstrap,
        ci_level=ci_level,
        max_iter=max_iter,
    )


@analysis("probes.policy_concepts", result=ConceptProbesResult, section="probes", needs=replace(CHECKPOINTS, stage_kind="policy"), order=2)
def analyze_policy_concepts(
    run: Run,
    stage: str,
    *,
    texts: int = 1000,
    concepts: tuple[str, ...] = ("gold sentiment", "negation", "trigger present", "domain", "length bucket"),
    min_class: int = 10,
    bootstrap: int = 1000,
    ci_level: float = 0.95,
    max_iter: int = 100,
) -> ConceptProbesResult:
    """Linear probes of each corpus concept at every layer of the final policy of `stage` (mean over the text).

    texts: corpus texts probed (a deterministic sample).
    concepts: the corpus concepts probed (names of `CONCEPTS`).
    min_class: a concept is probed only when each of its classes holds at least this many texts.
    bootstrap: resamples behind each score's confidence interval.
    ci_level: the coverage of that interval.
    max_iter: Newton iterations a logistic probe may take.
    """
    return checkpoint_concept_probes(
        run,
        stage,
        final_tag(run, stage),
        probe_texts(run, texts),
        chosen_concepts(concepts),
        min_class=min_class,
        bootstrap=bootstrap,
        ci_level=ci_level,
        max_iter=max_iter,
    )


# --------------------------------------------------------------------------- directions


def concept_directions(activations: np.ndarray, labels, *, max_iter: int = 100) -> dict[str, np.ndarray]:
    """{"<concept> · pattern" and "<concept> · filter": (layer, d_model)} for sentiment (as a number: negative -1,
    mixed 0, positive +1), length in words, negation and the trigger, those that vary over the texts.
    Patterns are the activations' slope on the concept (`concept_patterns`), filters a probe's weights
    (`probe_directions`, its logistic probes stopping after `max_iter` Newton iterations); `probes.directions`
    explains the difference."""
    numbers = {}
    if "sentiment" in labels and set(labels["sentiment"]) <= set(SENTIMENT_VALUE):
        numbers["sentiment"] = (labels["sentiment"].map(SENTIMENT_VALUE).to_numpy(dtype=float), "regression")
    if "length" in labels:
        numbers["length"] = (labels["length"].to_numpy(dtype=float), "regression")
    for name, column in (("negation", "negation"), ("trigger present", "trigger")):
        if column in labels:
            numbers[name] = (labels[column].to_numpy(dtype=bool), "classification")
    directions = {}
    for name, (values, kind) in numbers.items():
        if len(np.unique(values)) < 2:
            continue
        directions[f"{name} · pattern"] = concept_patterns(activations, values)
        directions[f"{name} · filter"] = probe_directions(activations, values, kind=kind, max_iter=max_iter)
    return directions


def _scalar_reward(run: Run, stage: str | None) -> str | None:
    if stage is not None and run.checkpoints(stage) and not _is_scalar_reward(run, stage, final_tag(run, stage)):
        return "a generative reward model has no score head: no read-out direction to compare or steer"
    return None


SCALAR_REWARD = Needs(stage_kind="reward", checkpoints=True, data=("corpus",), requires=_scalar_reward)


@analysis("probes.reward_directions", result=DirectionAlignmentResult, section="probes", needs=SCALAR_REWARD, order=3)
def analyze_reward_directions(run: Run, stage: str, *, texts: int = 1000, max_iter: int = 100) -> DirectionAlignmentResult:
    """The final reward model's read-out direction against the directions of sentiment, length, negation and the
    trigger at every layer: cosine, and the share of the reward's variance each direction explains.

    texts: corpus texts the directions are measured on (a deterministic sample).
    max_iter: Newton iterations a logistic probe (a filter direction) may take.
    """
    from rlhf_lens.analyses.probes.directions import reward_readout_direction

    tag = final_tag(run, stage)
    sample = probe_texts(run, texts)
    activations, rewards = residual_activations(run, stage, tag, sample)
    readout = reward_readout_direction(run.load_model(stage, tag))
    directions = concept_directions(activations, sample.labels, max_iter=max_iter)
    result = reward_direction_alignment(readout, directions, activations, rewards)
    return DirectionAlignmentResult(df=result.df, meta={**result.meta, "stage": stage, "tag": tag})


# --------------------------------------------------------------------------- steering


def steering_layer(n_layers: int) -> int:
    """The block after which the residual stream is pushed: the middle of the network (block L // 2 - 1 of L, so at
    least one block still reads the push before the final norm)."""
    return max(0, n_layers // 2 - 1)


def steering_directions(
    activations: np.ndarray, labels, layer: int, concepts: Sequence[str] = ("sentiment", "length", "negation")
) -> dict[str, np.ndarray]:
    """The pattern of each of `concepts` (names of `concept_directions` without " · pattern") at the residual stream
    leaving block `layer` (stream index layer + 1), for those that vary over the texts."""
    known = ("sentiment", "length", "negation", "trigger present")
    unknown = [name for name in concepts if name not in known]
    if unknown:
        raise ValueError(f"unknown steering concept(s) {unknown}; the concepts with a direction are {list(known)}")
    patterns = concept_directions(activations[:, layer + 1 : layer + 2], labels)
    return {name: patterns[f"{name} · pattern"][0] for name in concepts if f"{name} · pattern" in patterns}


def _expected_sign(concept: str, raises: Sequence[str]) -> int | None:
    return 1 if concept in raises else None


@analysis("probes.reward_steering", result=ConceptSteeringResult, section="probes", needs=SCALAR_REWARD, order=4)
def analyze_reward_steering(
    run: Run,
    stage: str,
    *,
    texts: int = 1000,
    steered_texts: int = 128,
    concepts: tuple[str, ...] = ("sentiment", "length", "negation"),
    raises: tuple[str, ...] = ("sentiment",),
    scales: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0),
    moves_z: float = 3.0,
) -> ConceptSteeringResult:
    """The final reward model's reward on corpus texts with the residual stream after its middle block pushed along
    the sentiment, length and negation patterns; sentiment is expected to raise it.

    texts: corpus texts the patterns are measured on (a deterministic sample).
    steered_texts: the first this many of them, whose reward is steered.
    concepts: the concepts pushed along (sentiment, length, negation, trigger present).
    raises: those of them expected to raise the reward (their verdict also checks the sign).
    scales: the pushes, in standard deviations of the residual along the direction.
    moves_z: a push counts as moving the reward when its per-sd change is this many standard errors from 0.
    """
    tag = final_tag(run, stage)
    sample = probe_texts(run, texts)
    activations, _ = residual_activations(run, stage, tag, sample)
    model, tokenizer = run.load_model(stage, tag), run.load_tokenizer(stage, tag)
    layer = steering_layer(activations.shape[1] - 1)
    chosen = slice(0, steered_texts)
    runs = {
        name: steer_rewards(
            model,
            tokenizer,
            sample.prompts[chosen],
            sample.completions[chosen],
            direction,
            layer=layer,
            scales=scales,
            concept=name,
            expected_sign=_expected_sign(name, raises),
            moves_z=moves_z,
        )
        for name, direction in steering_directions(activations, sample.labels, layer, concepts).items()
    }
    return ConceptSteeringResult.from_runs(runs, meta={"stage": stage, "tag": tag})


def _gold_and_prompts(run: Run, stage: str | None) -> str | None:
    if oracle(run) is None:
        return f"task {run.task!r} has no gold reward to score steered samples with"
    return None


@analysis(
    "probes.policy_steering",
    result=ConceptSteeringResult,
    section="probes",
    needs=Needs(stage_kind="policy", checkpoints=True, data=("corpus", "prompts"), requires=_gold_and_prompts),
    order=5,
)
def analyze_policy_steering(
    run: Run,
    stage: str,
    *,
    texts: int = 1000,
    prompts: int = 64,
    concepts: tuple[str, ...] = ("sentiment", "length", "negation"),
    raises: tuple[str, ...] = ("sentiment",),
    scales: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0),
    moves_z: float = 3.0,
) -> ConceptSteeringResult:
    """The gold score of the final policy's samples on evaluation prompts with its residual stream after the middle
    block pushed along its own sentiment, length and negation patterns (same seeds at every push).

    texts: corpus texts the patterns are measured on (a deterministic sample).
    prompts: evaluation prompts the policy samples under steering (the first this many).
    concepts: the concepts pushed along (sentiment, length, negation, trigger present).
    raises: those of them expected to raise the gold score (their verdict also checks the sign).
    scales: the pushes, in standard deviations of the residual along the direction.
    moves_z: a push counts as moving the score when its per-sd change is this many standard errors from 0.
    """
    tag = final_tag(run, stage)
    sample = probe_texts(run, texts)
    activations, _ = residual_activations(run, stage, tag, sample)
    policy, tokenizer = run.load_model(stage, tag), run.load_tokenizer(stage, tag)
    eval_prompts = [p["prompt"] for p in run.data("prompts") if p.get("split") == "eval"][:prompts]
    layer = steering_layer(activations.shape[1] - 1)
    gold = oracle(run)
    runs = {
        name: steer_policy(
            policy,
            tokenizer,
            eval_prompts,
            direction,
            gold,
            layer=layer,
            scales=scales,
            concept=name,
            expected_sign=_expected_sign(name, raises),
            moves_z=moves_z,
        )
        for name, direction in steering_directions(activations, sample.labels, layer, concepts).items()
    }
    return ConceptSteeringResult.from_runs(runs, meta={"stage": stage, "tag": tag})


# --------------------------------------------------------------------------- over training


def _several_checkpoints(run: Run, stage: str | None) -> str | None:
    if stage is not None and len(run.checkpoints(stage)) < 2:
        return f"stage {stage!r} has one checkpoint; set save_every on the stage to watch the probes over training"
    return None


def probes_over_training(
    run: Run,
    stage: str,
    n: int = 300,
    *,
    concepts: Sequence[str] = ("gold sentiment", "negation", "trigger present", "length bucket"),
    min_class: int = 10,
    max_iter: int = 100,
) -> ProbesOverTrainingResult:
    """`checkpoint_concept_probes` of `concepts` (by default all but domain: its 7-class probe costs as much as the
    other four together) at every checkpoint of `stage`, on the same `n` texts."""
    from tqdm.auto import tqdm

    texts = probe_texts(run, n)
    probed = chosen_concepts(concepts)
    checkpoints = sorted(run.checkpoints(stage), key=lambda c: c.step)
    results = [
        (c.tag, c.step, checkpoint_concept_probes(run, stage, c.tag, texts, probed, min_class=min_class, max_iter=max_iter))
        for c in tqdm(checkpoints, desc=f"probes over {stage}'s checkpoints", leave=False)
    ]
    return ProbesOverTrainingResult.from_checkpoints(results, meta={"stage": stage, "read": _read(run, stage), "n": len(texts)})


OVER_TRAINING = {"checkpoints": True, "data": ("corpus",), "requires": _several_checkpoints}


@analysis(
    "probes.reward_over_training",
    result=ProbesOverTrainingResult,
    section="probes",
    needs=Needs(stage_kind="reward", **OVER_TRAINING),
    order=6,
)
def analyze_reward_probes_over_training(
    run: Run,
    stage: str,
    *,
    texts: int = 300,
    concepts: tuple[str, ...] = ("gold sentiment", "negation", "trigger present", "length bucket"),
    min_class: int = 10,
    max_iter: int = 100,
) -> ProbesOverTrainingResult:
    """The concept probes at every checkpoint of reward stage `stage`, each concept at its most selective layer.

    texts: corpus texts probed at each checkpoint (a deterministic sample).
    concepts: the corpus concepts probed (names of `CONCEPTS`; domain left out, its probe costs as much as the rest).
    min_class: a concept is probed only when each of its classes holds at least this many texts.
    max_iter: Newton iterations a logistic probe may take.
    """
    return probes_over_training(run, stage, texts, concepts=concepts, min_class=min_class, max_iter=max_iter)


@analysis(
    "probes.policy_over_training",
    result=ProbesOverTrainingResult,
    section="probes",
    needs=Needs(stage_kind="policy", **OVER_TRAINING),
    order=7,
)
def analyze_policy_probes_over_training(
    run: Run,
    stage: str,
    *,
    texts: int = 300,
    concepts: tuple[str, ...] = ("gold sentiment", "negation", "trigger present", "length bucket"),
    min_class: int = 10,
    max_iter: int = 100,
) -> ProbesOverTrainingResult:
    """The concept probes at every checkpoint of policy stage `stage`, each concept at its most selective layer.

    texts: corpus texts probed at each checkpoint (a deterministic sample).
    concepts: the corpus concepts probed (names of `CONCEPTS`; domain left out, its probe costs as much as the rest).
    min_class: a concept is probed only when each of its classes holds at least this many texts.
    max_iter: Newton iterations a logistic probe may take.
    """
    return probes_over_training(run, stage, texts, concepts=concepts, min_class=min_class, max_iter=max_iter)
