"""`rlhf-lens` command line: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _cmd_train(args: argparse.Namespace) -> int:
    from rlhf_lens.training.config import load_recipe
    from rlhf_lens.training.pipeline import train

    config = load_recipe(args.recipe, args.set or [])
    if args.resume and (args.out or args.overwrite):
        raise ValueError("--resume RUN continues RUN in place; leave out --out and --overwrite")
    out = Path(args.resume or args.out or Path("runs") / config.name)
    started = time.perf_counter()
    path = train(config, out, quiet=args.quiet, overwrite=args.overwrite, resume=bool(args.resume))
    print(f"{'resumed' if args.resume else 'trained'} {len(config.stages)} stage(s) into {path} in {time.perf_counter() - started:.1f} s")
    print(f"next: rlhf-lens inspect {path}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from rlhf_lens.runs import Run
    from rlhf_lens.runs.describe import describe_run

    print(describe_run(Run.open(args.run)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf-lens", description="Train RLHF runs you can see inside, and inspect them.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train the stages of a TOML recipe into a run directory")
    train.add_argument("recipe", help="recipe file, e.g. training/sentiment_quick.toml")
    train.add_argument("--out", help="run directory to create (default: runs/<recipe name>)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field, e.g. stages.sft.steps=10 (repeatable)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    train.add_argument("--resume", metavar="RUN", help="continue RUN (started from the same recipe) from its last complete checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=_cmd_train)

    inspect = sub.add_parser("inspect", help="describe a run: manifest, stages, checkpoints, data, results")
    inspect.add_argument("run", help="run directory")
    inspect.set_defaults(func=_cmd_inspect)
    return parser


def quiet_transformers() -> None:
    """Keep transformers' load reports and weight-loading bars out of our own progress output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    quiet_transformers()
    from rlhf_lens.training.policy.reward_source import RewardError

    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FloatingPointError, RewardError) as exc:
        # Errors a user can cause carry a message meant for them; no traceback needed.
        print(f"rlhf-lens {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
