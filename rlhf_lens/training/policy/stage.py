"""The policy stage (kind `policy`): set up, then PPO/GRPO/RLOO, DPO or best-of-n."""

from __future__ import annotations

import torch

from rlhf_lens.runs import checkpoint_dir
from rlhf_lens.training.config import ONLINE_ALGORITHMS
from rlhf_lens.training.policy.best_of_n import run_best_of_n
from rlhf_lens.training.policy.dpo import run_dpo
from rlhf_lens.training.policy.online import run_online
from rlhf_lens.training.policy.setup import setup_policy_stage

POLICY_SEED_OFFSET = 3


def run_policy_stage(stage, ctx, resume: dict | None = None) -> dict:
    """Run one policy stage; `resume` = {"state": ...} continues from a checkpoint already loaded into ctx."""
    torch.manual_seed(ctx.config.seed + POLICY_SEED_OFFSET)  # fresh heads are the same on a restart as in a straight run
    setup = setup_policy_stage(stage, ctx, needs_reward=stage.algorithm != "dpo", resume_folder=resume["folder"] if resume else None)
    seed = ctx.config.seed + POLICY_SEED_OFFSET
    if stage.algorithm in ONLINE_ALGORITHMS:
        results = run_online(stage, setup, ctx.writer, seed=seed, quiet=ctx.quiet, resume=resume)
    elif stage.algorithm == "dpo":
        results = run_dpo(stage, setup, ctx.writer, ctx.feedback_records, seed=seed, quiet=ctx.quiet, resume=resume)
    else:
        results = run_best_of_n(stage, setup, ctx.writer, seed=seed, quiet=ctx.quiet)
    ctx.latest_lm, ctx.latest_lm_folder = (setup.policy, setup.tokenizer), checkpoint_dir(ctx.writer.path, stage.name, "final")
    return results | {
        "policy_from": str(setup.policy_folder),
        "reward_from": str(setup.reward_folder or ("gold" if setup.reward else "none")),
    }
