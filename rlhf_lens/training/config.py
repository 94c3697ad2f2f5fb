"""Training configuration: frozen dataclasses loaded from TOML recipes.

A recipe is a TOML file with `name`, `seed`, `[task]`, `[data]`, `[model]` and
a list of `[[stages]]`, each of a `kind` in {base, sft, reward, policy}. Every
field has a default that works on the built-in task; `--set key=value`
overrides any field (`stages.sft.steps=10`, `model.n_layer=2`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from rlhf_lens.models import CRITIQUE_MAX_TOKENS

__all__ = [
    "ConfigError",
    "DataConfig",
    "LMStageConfig",
    "ModelConfig",
    "PolicyStageConfig",
    "RewardStageConfig",
    "RunConfig",
    "TaskConfig",
    "apply_overrides",
    "load_recipe",
    "to_dict",
]

Architecture = Literal["gpt2", "llama", "gpt_neox"]
ARCHITECTURES = get_args(Architecture)
STAGE_KINDS = ("base", "sft", "reward", "policy")


class ConfigError(ValueError):
    """A recipe or override names a field that does not exist or holds a bad value."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


# --------------------------------------------------------------------------- field types and their check
#
# Every field is checked against its annotation before any `__post_init__` rule compares it with anything:
# `int` refuses bools, floats and strings; `float` takes ints (stored as float) but refuses bools, strings,
# nan and inf; `str` refuses numbers; `bool` refuses 0/1; Literal, unions and tuples as written. A bound a
# field's docstring implies is part of its annotation (`Annotated[int, Check(...)]`), so the one message
# says both: "stages.base.steps: expected a positive integer up to 1,000,000,000, got 1e+30 (float)".


@dataclass(frozen=True)
class Check:
    """A bound on a field's value and how to say it, used as `Annotated[int, Check(lambda n: n > 0, "a positive integer")]`."""

    holds: Callable[[Any], bool]
    says: str


MAX_COUNT = 1_000_000_000
"""Largest count (steps, sizes, intervals) a recipe may ask for: far beyond what trains in a lifetime, below any overflow."""
SEED_LIMIT = 2**32
"""Seeds are below 2**32: numpy and torch accept them, and the offsets added per stage stay in range."""

PositiveInt = Annotated[int, Check(lambda n: 1 <= n <= MAX_COUNT, f"a positive integer up to {MAX_COUNT:,}")]
NonNegativeInt = Annotated[int, Check(lambda n: 0 <= n <= MAX_COUNT, f"an integer from 0 to {MAX_COUNT:,}")]
Seed = Annotated[int, Check(lambda n: 0 <= n < SEED_LIMIT, f"a non-negative integer below 2**32 (0 to {SEED_LIMIT - 1:,})")]
PositiveFloat = Annotated[float, Check(lambda x: x > 0, "a positive number")]
NonNegativeFloat = Annotated[float, Check(lambda x: x >= 0, "a number >= 0")]


def number_in(low: float, high: float, brackets: str = "()"):
    """A float field bounded by an interval; `brackets` says which ends are included, as in "[0, 1)"."""
    above = (lambda x: x >= low) if brackets[0] == "[" else (lambda x: x > low)
    below = (lambda x: x <= high) if brackets[1] == "]" else (lambda x: x < high)
    return Annotated[float, Check(lambda x: above(x) and below(x), f"a number in {brackets[0]}{low}, {high}{brackets[1]}")]


LearningRate = number_in(0, 1)
Fraction = number_in(0, 1)
SmallFraction = number_in(0, 0.5)
Probability = number_in(0, 1, "[)")
UnitInterval = number_in(0, 1, "[]")


def _check_fields(config: Any, where: str) -> None:
    """Conform every field of `config` to its annotation (in place), or raise ConfigError naming `where.field`."""
    for f in dataclasses.fields(config):
        path = f"{where}.{f.name}" if where else f.name
        object.__setattr__(config, f.name, _conform(getattr(config, f.name), _field_types(type(config))[f.name], path))


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


_MISMATCH = object()


def _conform(value: Any, hint: Any, path: str) -> Any:
    """`value` as the type `hint` describes (ints widened to float, arrays made tuples); ConfigError naming `path` if it is not one."""
    fitted = _fit(value, hint, path)
    if fitted is _MISMATCH:
        raise ConfigError(f"{path}: expected {_describe(hint)}, got {_show(value)} ({type(value).__name__})")
    return fitted


def _fit(value: Any, hint: Any, path: str) -> Any:
    """`value` conformed to `hint`, or _MISMATCH; a bad item inside an array or table raises at the item's own path."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin is Annotated:
        fitted = _fit(value, args[0], path)
        checks = [a for a in args[1:] if isinstance(a, Check)]
        return fitted if fitted is not _MISMATCH and all(c.holds(fitted) for c in checks) else _MISMATCH
    if origin is Literal:
        return value if any(type(value) is type(a) and value == a for a in args) else _MISMATCH
    if origin in (Union, types.UnionType):
        for arm in args:
            fitted = _fit(value, arm, path)
            if fitted is not _MISMATCH:
                return fitted
        return _MISMATCH
    if hint is type(None):
        return value if value is None else _MISMATCH
    if hint is bool:
        return value if isinstance(value, bool) else _MISMATCH
    if hint is int:
        return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else _MISMATCH
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return _MISMATCH
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            return _MISMATCH
        return number if math.isfinite(number) else _MISMATCH
    if hint is str:
        return value if isinstance(value, str) else _MISMATCH
    if hint is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            return _MISMATCH
        if not args:
            return tuple(value)
        items = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(items) != len(value):
            return _MISMATCH
        return tuple(_conform(v, h, f"{path}[{i}]") for i, (v, h) in enumerate(zip(value, items)))
    if hint is Mapping or origin is Mapping:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            return _MISMATCH
        return value if not args else {k: _conform(v, args[1], f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else _MISMATCH
    raise TypeError(f"{path}: the config check has no rule for the annotation {hint!r}")  # a programming error, not a user's


def _describe(hint: Any) -> str:
    """What a value of type `hint` is, in words: "a positive integer up to 1,000,000,000", "one of 'ppo', 'dpo'"."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        checks = [a for a in args[1:] if isinstance(a, Check)]
        return checks[0].says if checks else _describe(args[0])
    if origin is Literal:
        return "one of " + ", ".join(_show(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in args)
    words = {Any: "any value", type(None): "nothing", bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    if hint in words:
        return words[hint]
    if hint is tuple or origin is tuple:
        return "an array"
    return "a table"  # a Mapping or a nested config


def _show(value: Any) -> str:
    """A value as a recipe would spell it (true, 'text', 1e+30), on one short line."""
    try:
        text = ("true" if value else "false") if isinstance(value, bool) else repr(value)
    except ValueError:  # an integer too long to print
        text = f"an integer of {value.bit_length()} bits"
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class TaskConfig:
    name: str = "sentiment"
    """Built-in task that generates the corpus, prompts and simulated feedback."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Task options, e.g. planted mechanisms (`length_bias`, `trigger_word`)."""

    def __post_init__(self) -> None:
        _check_fields(self, "task")


@dataclass(frozen=True)
class DataConfig:
    corpus_size: PositiveInt = 20_000
    """Number of pretraining texts generated by the task."""
    sft_size: PositiveInt = 4_000
    """Number of prompt -> completion pairs for supervised fine-tuning."""
    train_prompts: PositiveInt = 512
    """Number of policy-training prompts."""
    eval_prompts: PositiveInt = 128
    """Number of held-out evaluation prompts (disjoint from training prompts)."""
    heldout_fraction: SmallFraction = 0.05
    """Fraction of the corpus held out to measure perplexity."""

    def __post_init__(self) -> None:
        _check_fields(self, "data")


@dataclass(frozen=True)
class ModelConfig:
    base_model: str = ""
    """Local Hugging Face causal-LM folder to start from; empty builds a fresh model from `arch`."""
    arch: Architecture = "gpt2"
    """Architecture of a freshly built model: gpt2, llama or gpt_neox."""
    n_layer: PositiveInt = 4
    """Number of transformer blocks."""
    d_model: PositiveInt = 128
    """Width of the residual stream."""
    n_head: PositiveInt = 4
    """Number of attention heads."""
    context: PositiveInt = 128
    """Maximum sequence length in tokens (prompt + completion)."""
    vocab_size: PositiveInt = 1000
    """Target size of the BPE vocabulary trained on the corpus."""
    dropout: Probability = 0.0
    """Dropout probability inside the transformer."""

    def __post_init__(self) -> None:
        _check_fields(self, "model")
        _require(self.d_model % self.n_head == 0, f"model.d_model ({self.d_model}) must be divisible by model.n_head ({self.n_head})")
        _require(self.vocab_size >= 300, f"model.vocab_size must be >= 300 (256 bytes + merges), got {self.vocab_size}")


@dataclass(frozen=True)
class LMStageConfig:
    """A language-modelling stage: `base` (pretraining on the corpus) or `sft` (prompt -> completion)."""

    kind: Literal["base", "sft"]
    """Stage kind: base or sft."""
    name: str = ""
    """Stage name in the run (defaults to the kind)."""
    init_from: str = ""
    """Checkpoint to start from: "" (the previous stage of this run, or model.base_model), or "runs/X:sft/final"."""
    steps: PositiveInt = 200
    """Number of optimizer steps."""
    batch_size: PositiveInt = 32
    """Sequences per optimizer step."""
    lr: LearningRate = 1e-3
    """Peak learning rate (AdamW), reached after warmup, then cosine decay to 10%."""
    warmup_steps: NonNegativeInt = 20
    """Linear warmup steps."""
    weight_decay: NonNegativeFloat = 0.01
    """AdamW weight decay."""
    grad_clip: PositiveFloat = 1.0
    """Gradient norm clip."""
    eval_every: NonNegativeInt = 100
    """Evaluate held-out loss every this many steps (0: only at the end)."""
    save_every: NonNegativeInt = 0
    """Write a checkpoint every this many steps (0: only `final`)."""
    eval_samples: PositiveInt = 64
    """Number of eval prompts to sample from when measuring EOS rate (sft)."""
    max_new_tokens: PositiveInt = 48
    """Length limit for sampled completions (sft evaluation)."""

    def __post_init__(self) -> None:
        where = _stage_path(self)
        _check_fields(self, where)
        if not self.name:
            object.__setattr__(self, "name", self.kind)
        _require(self.warmup_steps < self.steps, f"{where}.warmup_steps must be in [0, steps), got {self.warmup_steps}")


RewardKind = Literal["ranking", "scoring", "generative"]
RankingLoss = Literal["bradley_terry", "plackett_luce"]
REWARD_KINDS = get_args(RewardKind)
RANKING_LOSSES = get_args(RankingLoss)


@dataclass(frozen=True)
class RewardStageConfig:
    """A reward model learned from human (or simulated) feedback."""

    kind: Literal["reward"] = "reward"
    """Stage kind: reward."""
    name: str = ""
    """Stage name in the run (defaults to the kind); a run may hold several reward stages."""
    init_from: str = ""
    """Backbone to start from: "" (the latest language-model stage of this run, or model.base_model), or "runs/X:sft/final"."""
    reward_kind: RewardKind = "ranking"
    """ranking (pairwise Bradley-Terry or K-wise Plackett-Luce), scoring (regression on 1-5 ratings) or generative (critique + verdict)."""
    ranking_loss: RankingLoss = "bradley_terry"
    """For simulated ranking feedback: bradley_terry (pairwise comparisons) or plackett_luce (K-wise rankings)."""
    feedback: str = ""
    """Feedback file (JSONL in the DESIGN formats, HH-RLHF pairs, or CSV ratings); "" simulates labelers on policy samples."""
    feedback_prompts: PositiveInt = 256
    """Simulated feedback: number of training prompts whose samples are judged."""
    completions_per_prompt: PositiveInt = 4
    """Simulated feedback: completions sampled from the starting policy per prompt."""
    max_new_tokens: PositiveInt = 48
    """Length limit of sampled completions."""
    heldout_fraction: Fraction = 0.2
    """Feedback from a file: fraction of prompts held out for evaluation (simulated feedback holds out the eval prompts)."""
    epochs: PositiveInt = 2
    """Passes over the training feedback."""
    batch_size: PositiveInt = 32
    """Records (pairs, ratings, rankings or critiques) per optimizer step."""
    group_by_prompt: bool = False
    """Ranking kind: batch whole prompts with all their comparisons (InstructGPT), about batch_size records per
    step, each prompt and each completion scored once per step however many pairs they are in: with K
    completions per prompt, K(K-1)/2 pairs cost K texts. Fewer distinct prompts per step, though, which
    learned a little less per epoch at K=4 (benchmarks/reward_vs_trl.py); worth it to afford more feedback."""
    lr: LearningRate = 5e-4
    """Peak learning rate (AdamW)."""
    warmup_steps: NonNegativeInt = 10
    """Linear warmup steps."""
    weight_decay: NonNegativeFloat = 0.0
    """AdamW weight decay."""
    grad_clip: PositiveFloat = 1.0
    """Gradient norm clip."""
    margin: NonNegativeFloat = 0.0
    """Bradley-Terry margin subtracted from r_chosen - r_rejected."""
    center: bool = True
    """Shift rewards so their mean on the starting policy's samples is 0."""
    critique_first: bool = True
    """Generative kind: reward read after the model's own greedy critique (else directly after the completion)."""
    critique_max_tokens: PositiveInt = CRITIQUE_MAX_TOKENS
    """Generative kind: length limit of a generated critique."""
    eval_every: NonNegativeInt = 0
    """Evaluate on held-out feedback every this many steps (0: only at the end)."""
    save_every: NonNegativeInt = 0
    """Save a step-N checkpoint every this many steps (0: only final), so analyses can follow the reward model over
    training. Step checkpoints are not centred (reward_offset 0) and hold no training state: a resumed run trains
    the stage again."""

    def __post_init__(self) -> None:
        where = _stage_path(self)
        _check_fields(self, where)
        if not self.name:
            object.__setattr__(self, "name", self.kind)
        _require(
            self.completions_per_prompt >= 2,
            f"{where}.completions_per_prompt must be >= 2 to compare completions, got {self.completions_per_prompt}",
        )


Algorithm = Literal["ppo", "grpo", "rloo", "dpo", "best_of_n"]
ALGORITHMS = get_args(Algorithm)
ONLINE_ALGORITHMS = ("ppo", "grpo", "rloo")


@dataclass(frozen=True)
class PolicyStageConfig:
    """A policy-optimisation stage: PPO, GRPO, RLOO (online), DPO (offline pairs) or best-of-n (no training)."""

    kind: Literal["policy"] = "policy"
    """Stage kind: policy."""
    name: str = ""
    """Stage name in the run (defaults to the kind); a run may hold several policy stages."""
    algorithm: Algorithm = "ppo"
    """ppo, grpo, rloo, dpo or best_of_n."""
    init_from: str = ""
    """Policy to start from (also the frozen reference): "" (the latest language-model stage), or "runs/X:sft/final"."""
    reward_from: str = ""
    """Reward: "" (the latest reward stage of this run), "runs/X:reward/final", or "gold" (the task's oracle)."""
    feedback: str = ""
    """DPO: preference file (JSONL/HH/CSV); "" uses the comparisons of this run's reward stages (data/feedback.jsonl)."""
    steps: PositiveInt = 100
    """Optimizer rounds (online: one batch of rollouts each; DPO: one batch of pairs each)."""
    batch_size: PositiveInt = 16
    """Prompts per step (online: each sampled group_size times); DPO: preference pairs per step."""
    group_size: PositiveInt = 1
    """Completions sampled per prompt; GRPO and RLOO need >= 2 for their group baseline."""
    max_new_tokens: PositiveInt = 32
    """Length limit of sampled completions."""
    temperature: PositiveFloat = 1.0
    """Sampling temperature of rollouts."""
    epochs: PositiveInt = 1
    """Optimisation passes over each batch of rollouts (PPO's "ppo_epochs")."""
    minibatches: PositiveInt = 1
    """Minibatches per pass; a prompt's group stays in one minibatch."""
    lr: LearningRate = 3e-5
    """Peak learning rate of the policy (AdamW)."""
    value_lr: LearningRate = 1e-4
    """PPO: learning rate of the value model."""
    warmup_steps: NonNegativeInt = 0
    """Linear warmup steps."""
    weight_decay: NonNegativeFloat = 0.0
    """AdamW weight decay."""
    grad_clip: PositiveFloat = 1.0
    """Gradient norm clip."""
    clip_range: PositiveFloat = 0.2
    """PPO/GRPO ratio clip epsilon."""
    value_clip_range: PositiveFloat = 0.2
    """PPO: value clip around the rollout's values."""
    vf_coef: NonNegativeFloat = 0.1
    """PPO: weight of the value loss."""
    gamma: UnitInterval = 1.0
    """PPO: discount of GAE."""
    lam: UnitInterval = 0.95
    """PPO: lambda of GAE."""
    kl_coef: NonNegativeFloat = 0.05
    """beta: PPO/RLOO per-token KL penalty in the reward; GRPO k3 KL term in the loss; 0 turns it off."""
    adaptive_kl: bool = False
    """PPO/RLOO: adapt beta towards kl_target (Ziegler et al. 2019)."""
    kl_target: PositiveFloat = 6.0
    """Adaptive KL: target sequence KL in nats."""
    kl_horizon: PositiveInt = 10_000
    """Adaptive KL: horizon in samples."""
    whiten_advantages: bool = True
    """PPO: whiten advantages over the batch (statistics reduced across processes)."""
    normalize_reward: bool = True
    """Divide proxy rewards by their std on the starting policy's samples (lm-human-preferences)."""
    missing_eos_penalty: float = 1.0
    """Subtracted from the reward of a completion that never reaches EOS."""
    dpo_beta: PositiveFloat = 0.1
    """DPO: beta of the implicit reward."""
    best_of: tuple[PositiveInt, ...] = (1, 2, 4, 8, 16, 32, 64)
    """Best-of-n: the values of n, each logged as a step."""
    eval_every: NonNegativeInt = 10
    """Score samples of the eval prompts (proxy and gold reward, KL) every this many steps (0: only at the end)."""
    eval_prompts: PositiveInt = 64
    """Eval prompts scored at each evaluation."""
    log_every: NonNegativeInt = 10
    """Write a rollout shard every this many steps (and at the last step)."""
    save_every: NonNegativeInt = 0
    """Save a step-N checkpoint every this many steps (0: only final)."""
    max_bad_steps: PositiveInt = 3
    """Stop with an error after this many consecutive steps with NaN/inf rewards, losses or gradients."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto (CUDA when available), cpu or cuda."""
    bf16: bool = True
    """On CUDA, run forward passes under bf16 autocast (weights and optimizer stay fp32)."""

    def __post_init__(self) -> None:
        where = _stage_path(self)
        _check_fields(self, where)
        if not self.name:
            object.__setattr__(self, "name", self.kind)
        if self.algorithm in ("grpo", "rloo"):
            _require(
                self.group_size >= 2,
                f"{where}.group_size must be >= 2 for {self.algorithm} (its baseline is the group mean), got {self.group_size}",
            )
        _require(
            self.batch_size % self.minibatches == 0,
            f"{where}.batch_size ({self.batch_size}) must be divisible by minibatches ({self.minibatches})",
        )
        _require(
            not self.adaptive_kl or self.algorithm in ("ppo", "rloo"),
            f"{where}.adaptive_kl adapts the KL penalty in the reward of ppo or rloo; {self.algorithm} has none. Set it to false.",
        )
        _require(self.warmup_steps < self.steps, f"{where}.warmup_steps must be in [0, steps), got {self.warmup_steps}")
        _require(len(self.best_of) > 0, f"{where}.best_of must list at least one n, e.g. [1, 4, 16]")


def _stage_path(stage: Any) -> str:
    """How `--set` addresses a stage's fields: stages.<name>, or stages.<kind> when it has no name."""
    return f"stages.{stage.name or stage.kind}"


STAGE_CONFIGS: dict[str, type] = {"base": LMStageConfig, "sft": LMStageConfig, "reward": RewardStageConfig, "policy": PolicyStageConfig}


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    """Run name, stored in run.json."""
    seed: Seed = 0
    """Master seed: data generation, initialisation, batch order and sampling derive from it."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """The built-in task."""
    data: DataConfig = field(default_factory=DataConfig)
    """How much data to generate."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model."""
    stages: tuple[LMStageConfig | RewardStageConfig | PolicyStageConfig, ...] = ()
    """Stages in the order they run."""

    def __post_init__(self) -> None:
        _check_fields(self, "")
        _require(len(self.stages) > 0, 'the recipe declares no [[stages]]; add at least one (kind = "base")')
        names = [s.name for s in self.stages]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        _require(not duplicates, f"stage names must be unique; repeated: {duplicates}. Give each a `name`.")

    def stage(self, name: str):
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ConfigError(f"no stage named {name!r}; stages are {[s.name for s in self.stages]}")


# --------------------------------------------------------------------------- building from dicts


def _build(cls, raw: Mapping[str, Any], where: str):
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a table, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    _require(not unknown, f"{where}: unknown field(s) {unknown}; known fields are {sorted(known)}")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _build_stage(raw: Mapping[str, Any], index: int):
    where = f"stages[{index}]"
    _require(isinstance(raw, Mapping), f"{where} must be a table ([[stages]]), got {_show(raw)}")
    kind = raw.get("kind")
    where += f" ({raw['name']})" if "name" in raw else ""
    _require(kind in STAGE_KINDS, f"{where}.kind must be one of {STAGE_KINDS}, got {_show(kind)}")
    _require(kind in STAGE_CONFIGS, f"{where}: stages of kind {kind!r} are not supported by this version of rlhf-lens yet")
    return _build(STAGE_CONFIGS[kind], raw, f"stages.{raw.get('name') or kind}")


def from_dict(raw: Mapping[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from a parsed recipe."""
    known = {"name", "seed", "task", "data", "model", "stages"}
    unknown = sorted(set(raw) - known)
    _require(not unknown, f"recipe: unknown top-level field(s) {unknown}; known are {sorted(known)}")
    stages = raw.get("stages", [])
    _require(isinstance(stages, list), "recipe: `stages` must be an array of tables ([[stages]])")
    return RunConfig(
        name=raw.get("name", "run"),
        seed=raw.get("seed", 0),
        task=_build(TaskConfig, raw.get("task", {}), "task"),
        data=_build(DataConfig, raw.get("data", {}), "data"),
        model=_build(ModelConfig, raw.get("model", {}), "model"),
        stages=tuple(_build_stage(s, i) for i, s in enumerate(stages)),
    )


def to_dict(config: RunConfig) -> dict[str, Any]:
    """The resolved config as plain JSON-able data (stored in run.json)."""
    return json_safe(dataclasses.asdict(config))


def json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------- overrides


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except (tomllib.TOMLDecodeError, ValueError):  # ValueError: an integer too long to convert
        return text  # a bare word is a string


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key=value` overrides to a parsed recipe (in place, returned).

    Keys are dotted paths; `stages.<name>.<field>` addresses a stage by its name
    (or kind when it has no name). Values are TOML literals (`3`, `1e-3`, `true`,
    `"text"`); a bare word is taken as a string.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        _require(bool(sep) and bool(key), f"--set {item!r}: expected key=value, e.g. stages.sft.steps=10")
        parts = key.strip().split(".")
        target: Any = raw
        if parts[0] == "stages":
            _require(len(parts) == 3, f"--set {item!r}: stage overrides look like stages.<name>.<field>")
            matches = [s for s in raw.get("stages", []) if s.get("name", s.get("kind")) == parts[1]]
            _require(
                len(matches) == 1,
                f"--set {item!r}: no stage named {parts[1]!r}; stages are {[s.get('name', s.get('kind')) for s in raw.get('stages', [])]}",
            )
            target, parts = matches[0], parts[2:]
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            _require(isinstance(target, dict), f"--set {item!r}: {part!r} is not a table")
        target[parts[-1]] = _parse_value(text.strip())
    return raw


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML recipe, apply overrides and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: recipe not found. Recipes for the built-in task live in training/*.toml")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return from_dict(apply_overrides(raw, overrides or []))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
