"""What the study scripts of analyses/ share: training a recipe into a run directory, or reusing a complete one, and
the base and SFT run every study starts from."""

from __future__ import annotations

import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINING = ROOT / "training"

STUDY = "study"
"""The prefix of log lines; each script sets its own name."""
REUSED: list[str] = []
"""Run directories this invocation found complete and did not train again (its time then excludes them)."""


def log(message: str) -> None:
    print(f"[{STUDY} {time.strftime('%H:%M:%S')}] {message}", flush=True)


def is_done(run_dir: Path) -> bool:
    from rlhf_lens.runs import Run

    return (run_dir / "run.json").is_file() and all(s.status == "done" for s in Run.open(run_dir).stages())


def _reuse(out: Path) -> bool:
    if is_done(out):
        log(f"reusing {out}")
        REUSED.append(out.name)
        return True
    return False


def train_recipe(recipe: str, out: Path, overrides: list[str]) -> Path:
    """Train `training/<recipe>` with `overrides` into `out`, or reuse `out` when it is already complete."""
    from rlhf_lens.training.config import load_recipe
    from rlhf_lens.training.pipeline import train

    if _reuse(out):
        return out
    log(f"training {recipe} -> {out}")
    return train(load_recipe(TRAINING / recipe, overrides), out, quiet=False, overwrite=True)


def base_run(folder: Path, seed: int, base: Path | None, *, overrides: tuple[str, ...] = (), name: str = "base") -> Path:
    """A run with the base and SFT stages: `base`, or the quick recipe's base and SFT stages (with `overrides`, e.g. a
    smaller model) trained into `folder/name`."""
    import tomllib

    from rlhf_lens.training.config import apply_overrides, from_dict
    from rlhf_lens.training.pipeline import train

    if base is not None:
        return base
    out = folder / name
    if _reuse(out):
        return out
    raw = tomllib.loads((TRAINING / "sentiment_quick.toml").read_text())
    raw["stages"] = [stage for stage in raw["stages"] if stage["kind"] in ("base", "sft")]
    log(f"training the base and SFT stages of sentiment_quick.toml {' '.join(overrides)} -> {out}")
    return train(from_dict(apply_overrides(raw, [f"seed={seed}", *overrides])), out, quiet=False, overwrite=True)
