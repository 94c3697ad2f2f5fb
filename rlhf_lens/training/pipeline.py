"""Run a recipe end to end: create the run, write its data, run each stage.

Each stage starts from (in order of precedence) its `init_from` checkpoint,
the previous language-model stage of this run, `model.base_model`, or a fresh
model built from `[model]` with a BPE tokenizer trained on the corpus.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rlhf_lens.models import check_vocab_fits, context_length, load_causal_lm, load_tokenizer
from rlhf_lens.runs import FINAL_TAG, Run, RunWriter, has_training_state, load_hf_folder, load_state, resolve_init_from
from rlhf_lens.runs.weights import safetensors_weight_files
from rlhf_lens.tasks import get_task
from rlhf_lens.tasks.feedback import read_feedback
from rlhf_lens.training.build import build_model, load_base_model, train_tokenizer
from rlhf_lens.training.config import ConfigError, LMStageConfig, RewardStageConfig, RunConfig, to_dict
from rlhf_lens.training.data import pack_blocks, split_heldout, tokenize_pairs
from rlhf_lens.training.distributed import NullWriter, init_world, local_device
from rlhf_lens.training.lm import completion_objective, corpus_objective, eos_rate, heldout_perplexity
from rlhf_lens.training.loop import Schedule, fit
from rlhf_lens.training.policy.stage import run_policy_stage
from rlhf_lens.training.reward.feedback import Feedback, from_file, simulate
from rlhf_lens.training.reward.objectives import evaluate_reward, example_critiques, reward_function, reward_objective


@dataclass(frozen=True)
class RunData:
    """The data a run trains on, exactly as written to data/."""

    corpus: list[dict]
    sft: list[dict]
    prompts: list[dict]

    def prompt_texts(self, split: str) -> list[str]:
        return [p["prompt"] for p in self.prompts if p["split"] == split]


@dataclass
class RunContext:
    """What stages share while a recipe runs: the writer, the data and the latest language model."""

    config: RunConfig
    writer: RunWriter
    data: RunData
    quiet: bool
    sources: dict[str, dict] = field(default_factory=dict)
    """Resolved `init_from` of each stage that has one: {"spec", "path", "sha256"}."""
    task: object = None
    """The built-in task object (corpus, prompts, labelers, oracle)."""
    latest_lm: tuple[torch.nn.Module, object] | None = None
    """The most recently trained language model and its tokenizer, in memory."""
    latest_lm_folder: Path | None = None
    """Its final checkpoint folder (reward models start from it)."""
    latest_reward_folder: Path | None = None
    """The final checkpoint folder of the latest reward stage (policy stages optimise it)."""
    feedback_records: list[dict] = field(default_factory=list)
    """All feedback records of the run so far (data/feedback.jsonl)."""


def generate_data(config: RunConfig, task) -> RunData:
    """Generate the task's corpus, SFT pairs and prompts (in memory; `write_run_data` copies them into the run)."""
    seed = config.seed
    return RunData(
        corpus=task.corpus(config.data.corpus_size, seed),
        sft=task.sft_pairs(config.data.sft_size, seed + 1),
        prompts=task.prompts(config.data.train_prompts, config.data.eval_prompts, seed + 2),
    )


def write_run_data(writer: RunWriter, data: RunData) -> None:
    writer.write_data("corpus", data.corpus)
    writer.write_data("sft", data.sft)
    writer.write_data("prompts", data.prompts)


def starting_model(stage: LMStageConfig, ctx: RunContext):
    """The model and tokenizer a stage starts from (see the module docstring)."""
    if stage.name in ctx.sources:
        source = ctx.sources[stage.name]
        model, tokenizer = load_causal_lm(source["path"]), load_tokenizer(source["path"])
        check_vocab_fits(model, tokenizer, where=stage.init_from)
        return model, tokenizer
    if ctx.latest_lm is not None:
        return ctx.latest_lm
    if ctx.config.model.base_model:
        return load_base_model(ctx.config.model.base_model)
    texts = [record["text"] for record in ctx.data.corpus]
    tokenizer = train_tokenizer(texts, ctx.config.model.vocab_size)
    return build_model(ctx.config.model, tokenizer, seed=ctx.config.seed), tokenizer


def fit_and_save(stage: LMStageConfig, model, tokenizer, objective, ctx: RunContext, *, seed: int, resume: dict | None) -> dict:
    """Fit a language-modelling stage (from a resume checkpoint's state, if any) and save `final`; return the final metrics."""
    state = resume["state"] if resume else None
    result = fit(stage.name, Schedule.of(stage), model, tokenizer, objective, ctx.writer, seed=seed, quiet=ctx.quiet, resume_state=state)
    folder = ctx.writer.save_checkpoint(
        stage.name, "final", model=model, tokenizer=tokenizer, step=stage.steps, metrics=result.metrics, state=result.state
    )
    ctx.latest_lm, ctx.latest_lm_folder = (model, tokenizer), folder
    return result.metrics


def run_base_stage(stage: LMStageConfig, ctx: RunContext, resume: dict | None = None) -> dict:
    model, tokenizer = starting_model(stage, ctx)
    context = min(ctx.config.model.context, context_length(model))
    texts = [record["text"] for record in ctx.data.corpus]
    train_idx, heldout_idx = split_heldout(len(texts), ctx.config.data.heldout_fraction, ctx.config.seed)
    blocks = pack_blocks([texts[i] for i in train_idx], tokenizer, context)  # (n_blocks, seq)
    heldout_blocks = pack_blocks([texts[i] for i in heldout_idx], tokenizer, context)
    untrained = heldout_perplexity(model, heldout_blocks, stage.batch_size)
    torch.manual_seed(ctx.config.seed)
    model, tokenizer = resumed(model, tokenizer, resume)
    objective = corpus_objective(model, blocks, heldout_blocks, stage.batch_size)
    final = fit_and_save(stage, model, tokenizer, objective, ctx, seed=ctx.config.seed, resume=resume)
    return {"eval/perplexity": final["eval/perplexity"], "start_eval/perplexity": untrained, "train_tokens": int(blocks.numel())}


def run_sft_stage(stage: LMStageConfig, ctx: RunContext, resume: dict | None = None) -> dict:
    model, tokenizer = resumed(*starting_model(stage, ctx), resume)
    context = min(ctx.config.model.context, context_length(model))
    train_idx, heldout_idx = split_heldout(len(ctx.data.sft), ctx.config.data.heldout_fraction, ctx.config.seed)
    pairs = tokenize_pairs(ctx.data.sft, tokenizer, context)
    train, heldout = pairs.select(train_idx), pairs.select(heldout_idx)
    torch.manual_seed(ctx.config.seed + 1)
    objective = completion_objective(model, train, heldout, tokenizer.pad_token_id, stage.batch_size)
    final = fit_and_save(stage, model, tokenizer, objective, ctx, seed=ctx.config.seed + 1, resume=resume)
    prompts = ctx.data.prompt_texts("eval")[: stage.eval_samples]
    sampled = eos_rate(model, tokenizer, prompts, seed=ctx.config.seed, max_new_tokens=stage.max_new_tokens)
    return {
        "eval/perplexity": final["eval/perplexity"],
        "eos_rate": sampled["eos_rate"],
        "mean_length": sampled["mean_length"],
        "max_new_tokens": stage.max_new_tokens,
    }


def starting_folder(stage, ctx: RunContext) -> Path:
    """The checkpoint folder a reward stage builds on."""
    if stage.name in ctx.sources:
        return Path(ctx.sources[stage.name]["path"])
    if ctx.latest_lm_folder is not None:
        return ctx.latest_lm_folder
    if ctx.config.model.base_model:
        return Path(ctx.config.model.base_model)
    raise ConfigError(
        f"stages.{stage.name}: a reward model needs a language model to start from. Put base/sft stages before it, "
        f'set stages.{stage.name}.init_from (e.g. "runs/X:sft/final"), or set model.base_model.'
    )


def resumed(model, tokenizer, resume: dict | None):
    """The model and tokenizer to train: these, or those of the checkpoint a resumed stage continues from."""
    return (model, tokenizer) if resume is None else (load_causal_lm(resume["folder"]), load_tokenizer(resume["folder"]))


def run_reward_stage(stage: RewardStageConfig, ctx: RunContext, resume: dict | None = None) -> dict:
    """A reward stage; its step checkpoints (`save_every`) hold no training state, so a resumed run trains it again
    (`resume` is always None).

    Its fresh score head is drawn from the process's torch RNG as the earlier stages left it, so a reward
    stage retrained after a resume can differ from the straight run's (a fixed seed here changed the test
    models' quality noticeably; kept as trained and tested)."""
    folder = starting_folder(stage, ctx)
    tokenizer, policy = load_tokenizer(folder), load_causal_lm(folder)
    check_vocab_fits(policy, tokenizer, where=str(folder))
    seed = ctx.config.seed + 2
    feedback = collect_feedback(stage, ctx, policy, tokenizer, seed)
    model = reward_model_to_train(stage, folder, policy, tokenizer)
    reward_fn = reward_function(stage, model, tokenizer)
    gold_fn = ctx.task.gold_reward if getattr(ctx.task, "has_oracle", False) else None
    audits: list[dict] = []

    def evaluate() -> dict:
        metrics, audit = evaluate_reward(reward_fn, feedback, gold_fn)
        audits.append(audit)
        return metrics

    objective = reward_objective(stage, model, tokenizer, feedback, evaluate)
    steps = stage.epochs * math.ceil(objective.n_items / (objective.batch_size or stage.batch_size))
    step_meta = reward_read_meta(stage) | {"reward_offset": 0.0, "centred": False}
    result = fit(
        stage.name, Schedule.of(stage, steps), model, tokenizer, objective, ctx.writer, seed=seed, quiet=ctx.quiet, step_meta=step_meta
    )
    offset = centre(stage, model, reward_fn, feedback)
    extra = reward_meta(stage, model, tokenizer, feedback, offset, audits[-1])
    ctx.latest_reward_folder = ctx.writer.save_checkpoint(
        stage.name, "final", model=model, tokenizer=tokenizer, step=steps, metrics=result.metrics, state=result.state, extra_meta=extra
    )
    return {k: v for k, v in result.metrics.items() if k.startswith("rm/")} | {
        "reward_offset": offset,
        "train_records": len(feedback.train),
    }


def collect_feedback(stage: RewardStageConfig, ctx: RunContext, policy, tokenizer, seed: int) -> Feedback:
    """The stage's feedback (from its file, or the task's simulated labelers judging the policy's samples),
    added to the run's data/feedback.jsonl."""
    if stage.feedback:
        feedback = from_file(stage, stage.feedback, seed=seed)
    else:
        labelers = ctx.task.labelers(seed)
        feedback = simulate(
            stage, labelers, policy, tokenizer, ctx.data.prompt_texts("train"), ctx.data.prompt_texts("eval"), seed=seed, quiet=ctx.quiet
        )
    ctx.feedback_records += feedback.records
    ctx.writer.write_data("feedback", ctx.feedback_records)
    return feedback


def reward_model_to_train(stage: RewardStageConfig, folder: Path, policy, tokenizer):
    """The generative kind trains the causal LM itself; the others a scalar head (drawn from the torch RNG) on it."""
    if stage.reward_kind == "generative":
        model = policy
    else:
        model = load_hf_folder(folder, "score", num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
    model.config.reward_offset = 0.0  # a start from a centred reward checkpoint must not stack offsets
    return model


def centre(stage: RewardStageConfig, model, reward_fn, feedback: Feedback) -> float:
    """Set (and return) the offset that centres the reward on the policy's samples the stage trained on.

    Rewards are shift-invariant for every rm/ metric, so centring after evaluation is safe."""
    if not stage.center:
        return 0.0
    texts = feedback.centring_texts[:CENTRING_SAMPLES]
    offset = float(np.mean(reward_fn([p for p, _ in texts], [c for _, c in texts])))
    model.config.reward_offset = offset
    return offset


def reward_meta(stage: RewardStageConfig, model, tokenizer, feedback: Feedback, offset: float, audit: dict) -> dict:
    """What the reward checkpoint's meta.json holds besides step and metrics: kind, offset, the feedback audit and,
    for the generative kind, how to read it (critique first, critique length) with example critiques."""
    extra = reward_read_meta(stage) | {"reward_offset": offset, "audit": audit, "train_records": len(feedback.train)}
    if stage.reward_kind == "generative":
        extra["critiques"] = example_critiques(stage, model, tokenizer, feedback.eval_texts()[:EXAMPLE_CRITIQUES])
    return extra


def reward_read_meta(stage: RewardStageConfig) -> dict:
    """What every checkpoint of a reward stage records about how to read it: its kind and, for the generative kind,
    whether a critique comes first and how long it may be (the policy stage writes critiques of this length too)."""
    extra = {"reward_kind": stage.reward_kind}
    if stage.reward_kind == "generative":
        extra |= {"critique_first": stage.critique_first, "critique_max_tokens": stage.critique_max_tokens}
    return extra


CENTRING_SAMPLES = 256
EXAMPLE_CRITIQUES = 20
STAGE_RUNNERS = {"base": run_base_stage, "sft": run_sft_stage, "reward": run_reward_stage, "policy": run_policy_stage}


def train(config: RunConfig, out: str | Path, *, quiet: bool = False, overwrite: bool = False, resume: bool = False) -> Path:
    """Train every stage of `config` into a run directory at `out`; return its path.

    With `resume`, `out` must be a run started from the same config: finished stages
    are reused, and the first unfinished stage continues from its last complete
    checkpoint (or starts again if it has none), its logs cut back to that step.
    """
    torch.manual_seed(config.seed)
    world = start_processes(config)
    sources = {s.name: resolve_init_from(s.init_from) for s in config.stages if getattr(s, "init_from", "")}
    task = get_task(config.task.name, **dict(config.task.options))
    if resume:
        writer = open_for_resume(config, out) if world.is_main else NullWriter(Path(out).absolute())
        data = read_run_data(out)
    else:
        # Everything the recipe decides is checked and generated before the run folder exists (or an old one
        # is overwritten), so a refusal leaves nothing behind: `config` was validated when it was built.
        data = generate_data(config, task)
        check_input_files(config)
        writer = new_writer(config, out, overwrite, sources) if world.is_main else NullWriter(Path(out).absolute())
        write_run_data(writer, data)
    ctx = RunContext(config=config, writer=writer, data=data, quiet=quiet, sources=sources, task=task)
    for stage in config.stages:
        resume_from = None
        if resume:
            status, resume_from = resume_point(Run.open(out), stage.name)
            if status == "done":
                adopt_finished_stage(stage, ctx, Run.open(out))
                continue
            ctx.writer.rewind_metrics(stage.name, resume_from["state"]["step"] if resume_from else 0)
        writer.set_stage_status(stage.name, "running")
        started = time.perf_counter()
        try:
            results = STAGE_RUNNERS[stage.kind](stage, ctx, resume_from)
        except BaseException:
            writer.set_stage_status(stage.name, "failed")
            raise
        writer.update_results(stage.name, results | {"seconds": round(time.perf_counter() - started, 1)})
        writer.set_stage_status(stage.name, "done")
    return Path(out).absolute() if not world.is_main else writer.path


def check_input_files(config: RunConfig) -> None:
    """Read the files a recipe names (feedback files, a local base model) before the run folder exists, so a bad
    one is refused with its own message and nothing is left behind (FeedbackError, RunFormatError)."""
    if config.model.base_model:
        safetensors_weight_files(config.model.base_model)
    for stage in config.stages:
        if getattr(stage, "feedback", ""):
            with warnings.catch_warnings():  # a file's warnings (repeated records) are given once, by its stage
                warnings.simplefilter("ignore")
                read_feedback(stage.feedback)


def new_writer(config: RunConfig, out, overwrite: bool, sources: dict) -> RunWriter:
    writer = RunWriter.create(out, name=config.name, task=config.task.name, seed=config.seed, config=to_dict(config), overwrite=overwrite)
    for stage in config.stages:  # every init_from was resolved first, so a bad reference fails before any training
        writer.add_stage(stage.name, stage.kind, init_from=sources.get(stage.name))
    return writer


def start_processes(config: RunConfig):
    """One process, or the process group torchrun started (policy stages only; rank 0 writes)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return init_world(torch.device("cpu"))
    others = [s.name for s in config.stages if s.kind != "policy"]
    if others:
        raise ConfigError(
            f"under torchrun only policy stages run in several processes; stages {others} are not policy stages. Train them "
            'in one process first, then run the policy stage with init_from = "runs/X:sft/final" and reward_from.'
        )
    return init_world(local_device(config.stages[0].device))


def open_for_resume(config: RunConfig, out) -> RunWriter:
    """The run at `out`, checked to have been started from this config."""
    writer = RunWriter.open(out)
    stored, current = writer.manifest["config"], to_dict(config)
    if stored != current:
        difference = first_difference(stored, current)
        raise ConfigError(
            f"{out}: cannot resume: the recipe differs from the config the run was started with at {difference}. "
            "Resume with the same recipe and --set overrides, or train into a new --out."
        )
    return writer


def first_difference(a, b, where: str = "config") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return first_difference(a.get(key), b.get(key), f"{where}.{key}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return first_difference(x, y, f"{where}[{i}]")
    return f"{where} (run: {a!r}, recipe: {b!r})"


def read_run_data(out) -> RunData:
    run = Run.open(out)
    return RunData(corpus=run.data("corpus"), sft=run.data("sft"), prompts=run.data("prompts"))


def resume_point(run: Run, stage: str) -> tuple[str, dict | None]:
    """(status, {"folder", "state"} of the last complete step checkpoint with training state, or None)."""
    status = run.stage(stage).status
    if status == "done":
        return status, None
    steps = [cp for cp in run.checkpoints(stage) if cp.tag != FINAL_TAG and has_training_state(cp.path)]
    if not steps:
        return status, None
    last = steps[-1]
    return status, {"folder": last.path, "state": load_state(last.path)}


def adopt_finished_stage(stage, ctx: RunContext, run: Run) -> None:
    """Put a finished stage's outputs into the context, as if it had just run."""
    folder = run.checkpoint(stage.name).path
    if stage.kind == "reward":
        ctx.latest_reward_folder = folder
        # only this finished stage's records: a stage that failed after writing feedback will write its own again
        ctx.feedback_records += [r for r in run.data("feedback") if r.get("stage") == stage.name]
    else:
        ctx.latest_lm, ctx.latest_lm_folder = (load_causal_lm(folder), load_tokenizer(folder)), folder
