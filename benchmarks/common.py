"""What the benchmarks against TRL share: offline environment, model sizes, the untimed setup run
(our base + SFT + reward stages on the quick sentiment recipe), quiet libraries and the printed table."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import dataclasses
import json
import time
import warnings
from pathlib import Path

from rlhf_lens.training.config import load_recipe
from rlhf_lens.training.pipeline import train

ROOT = Path(__file__).resolve().parent.parent
BASE_RECIPE = ROOT / "training" / "sentiment_quick.toml"
CONTEXT = 96
SIZES = {
    "demo": {"n_layer": 4, "d_model": 128, "n_head": 4},
    "large": {"n_layer": 6, "d_model": 256, "n_head": 8},
    "gpt2small": {"n_layer": 12, "d_model": 768, "n_head": 12},
}
QUICK_SETUP = [
    "stages.base.steps=30",
    "stages.base.warmup_steps=5",
    "stages.sft.steps=15",
    "stages.sft.eval_samples=8",
    "stages.reward.feedback_prompts=48",
    "stages.reward.epochs=1",
    "data.corpus_size=1000",
    "data.sft_size=200",
    "data.train_prompts=48",
    "data.eval_prompts=8",
]


SETUP_FEEDBACK = [
    "data.train_prompts=512",
    "stages.reward.feedback_prompts=512",
    "stages.reward.completions_per_prompt=4",
    "stages.reward.group_by_prompt=false",
    "stages.reward.batch_size=16",
]
"""The setup run's feedback as the benchmarks were first run: 4 samples of 512 prompts, all 6 pairs each
(about 3,000 training pairs); the quick recipe itself now collects 45 pairs of 10 samples per prompt."""


def model_overrides(size: str) -> list[str]:
    return [f"model.{k}={v}" for k, v in SIZES[size].items()] + [f"model.context={CONTEXT}"]


def setup_run(size: str, overrides: list[str], workdir: Path) -> Path:
    """Base + SFT + simulated feedback + reward model with our pipeline (not timed); returns the run directory."""
    config = load_recipe(BASE_RECIPE, model_overrides(size) + SETUP_FEEDBACK + overrides)
    config = dataclasses.replace(config, stages=tuple(s for s in config.stages if s.kind != "policy"))
    start = time.perf_counter()
    out = train(config, workdir / f"setup-{size}", quiet=True)
    print(f"[{size}] setup run (base + sft + feedback + reward) took {time.perf_counter() - start:.0f}s (not timed)", flush=True)
    return out


def recipe_header(name: str, seed: int, task_options: dict, *, train_prompts: int, eval_prompts: int) -> str:
    """The top of a one-stage recipe; [data] is small because the pipeline always writes task data."""
    options = ", ".join(f"{k} = {json.dumps(v)}" for k, v in task_options.items())
    return f"""name = "{name}"
seed = {seed}

[task]
name = "sentiment"
options = {{ {options} }}

[data]
corpus_size = 200
sft_size = 50
train_prompts = {train_prompts}
eval_prompts = {eval_prompts}
"""


def write_feedback(records: list[dict], path: Path) -> Path:
    """Comparison records as a DESIGN.md feedback JSONL file."""
    keys = ("kind", "prompt", "chosen", "rejected", "labeler")
    path.write_text("".join(json.dumps({k: r[k] for k in keys}) + "\n" for r in records))
    return path


def quiet_libraries() -> None:
    """No progress bars or load reports from transformers/datasets between our lines."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A right-aligned text table; columns are (key, label, format)."""
    cells = [[label for _, label, _ in columns]] + [[fmt.format(row[key]) for key, _, fmt in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(line, widths)) for line in cells]
    return "\n".join([lines[0], "-+-".join("-" * w for w in widths), *lines[1:]])
