"""Run a recipe end to end: create the run, write its data, run each stage.

Each stage starts from (in order of precedence) its `init_from` checkpoint,
the previous language-model stage of this run, `model.base_model`, or a fresh
model built from `[model]` with a BPE tokenizer trained on the corpus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhf_lens.models import check_vocab_fits, context_length, load_causal_lm, load_tokenizer
from rlhf_lens.runs import RunWriter, resolve_init_from
from rlhf_lens.tasks import get_task
from rlhf_lens.training.build import build_model, load_base_model, train_tokenizer
from rlhf_lens.training.config import LMStageConfig, RunConfig, to_dict
from rlhf_lens.training.data import pack_blocks, split_heldout, tokenize_pairs
from rlhf_lens.training.lm import corpus_task, eos_rate, heldout_perplexity, sft_task, train_lm


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
    latest_lm: tuple[torch.nn.Module, object] | None = None


def generate_data(config: RunConfig, writer: RunWriter) -> RunData:
    """Generate the task's corpus, SFT pairs and prompts and copy them into the run."""
    task = get_task(config.task.name, **dict(config.task.options))
    seed = config.seed
    data = RunData(
        corpus=task.corpus(config.data.corpus_size, seed),
        sft=task.sft_pairs(config.data.sft_size, seed + 1),
        prompts=task.prompts(config.data.train_prompts, config.data.eval_prompts, seed + 2),
    )
    writer.write_data("corpus", data.corpus)
    writer.write_data("sft", data.sft)
    writer.write_data("prompts", data.prompts)
    return data


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


def run_base_stage(stage: LMStageConfig, ctx: RunContext) -> dict:
    model, tokenizer = starting_model(stage, ctx)
    context = min(ctx.config.model.context, context_length(model))
    texts = [record["text"] for record in ctx.data.corpus]
    train_idx, heldout_idx = split_heldout(len(texts), ctx.config.data.heldout_fraction, ctx.config.seed)
    blocks = pack_blocks([texts[i] for i in train_idx], tokenizer, context)  # (n_blocks, seq)
    heldout_blocks = pack_blocks([texts[i] for i in heldout_idx], tokenizer, context)
    untrained = heldout_perplexity(model, heldout_blocks, stage.batch_size)
    torch.manual_seed(ctx.config.seed)
    final = train_lm(stage, model, tokenizer, corpus_task(model, blocks, heldout_blocks, stage.batch_size), ctx.writer, seed=ctx.config.seed, quiet=ctx.quiet)
    ctx.latest_lm = (model, tokenizer)
    return {"eval/perplexity": final["eval/perplexity"], "start_eval/perplexity": untrained, "train_tokens": int(blocks.numel())}


def run_sft_stage(stage: LMStageConfig, ctx: RunContext) -> dict:
    model, tokenizer = starting_model(stage, ctx)
    context = min(ctx.config.model.context, context_length(model))
    train_idx, heldout_idx = split_heldout(len(ctx.data.sft), ctx.config.data.heldout_fraction, ctx.config.seed)
    pairs = tokenize_pairs(ctx.data.sft, tokenizer, context)
    train, heldout = pairs.select(train_idx), pairs.select(heldout_idx)
    torch.manual_seed(ctx.config.seed + 1)
    final = train_lm(stage, model, tokenizer, sft_task(model, train, heldout, tokenizer.pad_token_id, stage.batch_size), ctx.writer, seed=ctx.config.seed + 1, quiet=ctx.quiet)
    ctx.latest_lm = (model, tokenizer)
    prompts = ctx.data.prompt_texts("eval")[: stage.eval_samples]
    sampled = eos_rate(model, tokenizer, prompts, seed=ctx.config.seed, max_new_tokens=stage.max_new_tokens)
    return {"eval/perplexity": final["eval/perplexity"], "eos_rate": sampled["eos_rate"], "mean_length": sampled["mean_length"], "max_new_tokens": stage.max_new_tokens}


STAGE_RUNNERS = {"base": run_base_stage, "sft": run_sft_stage}


def train(config: RunConfig, out: str | Path, *, quiet: bool = False, overwrite: bool = False) -> Path:
    """Train every stage of `config` into a new run directory at `out`; return its path."""
    torch.manual_seed(config.seed)
    writer = RunWriter.create(out, name=config.name, task=config.task.name, seed=config.seed, config=to_dict(config), overwrite=overwrite)
    # Resolve every init_from first, so a bad reference fails before any training.
    sources = {s.name: resolve_init_from(s.init_from) for s in config.stages if getattr(s, "init_from", "")}
    for stage in config.stages:
        writer.add_stage(stage.name, stage.kind, init_from=sources.get(stage.name))
    ctx = RunContext(config=config, writer=writer, data=generate_data(config, writer), quiet=quiet, sources=sources)
    for stage in config.stages:
        writer.set_stage_status(stage.name, "running")
        try:
            results = STAGE_RUNNERS[stage.kind](stage, ctx)
        except BaseException:
            writer.set_stage_status(stage.name, "failed")
            raise
        writer.update_results(stage.name, results)
        writer.set_stage_status(stage.name, "done")
    return writer.path
