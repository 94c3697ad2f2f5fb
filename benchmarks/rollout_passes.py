"""The rollout phase of an online step with and without the second policy pass (issue 14, "no redundant passes").

    .venv/bin/python benchmarks/rollout_passes.py --run runs/quick [--prompts 8] [--group 4] [--repeats 5]

Times `collect_rollout` on the run's SFT policy and reward model (grpo_quick.toml's batch: 8 prompts x 4 completions,
32 new tokens), alternating the two ways in one process: "sampler log-probs" (the trainer's path: the sampler keeps
each drawn token's log-probability) and "second pass" (the sampler keeps none, so the policy runs again over its
samples, as before). Also checks that both give the same log-probabilities (max |difference|). Prints the median
seconds of each and their ratio.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses
import statistics
import time

import torch
from policy_phases import step_arguments, step_inputs

from rlhf_lens.runs import Run
from rlhf_lens.training.policy import rollout as rollout_module


def main() -> None:
    args = step_arguments(__doc__)
    policy, reference, tokenizer, reward, prompts = step_inputs(Run.open(args.run), args.prompts)
    real_sample = rollout_module.sample

    def without_logprobs(*a, **kw):
        kw["with_logprobs"] = False
        return dataclasses.replace(real_sample(*a, **kw), logprobs=None, entropy=None)

    def collect(step: int, second_pass: bool):
        rollout_module.sample = without_logprobs if second_pass else real_sample
        try:
            started = time.perf_counter()
            out = rollout_module.collect_rollout(
                policy,
                reference,
                tokenizer,
                reward,
                None,
                prompts,
                group_size=args.group,
                seed=0,
                step=step,
                max_new_tokens=args.max_new_tokens,
                temperature=1.0,
                reward_scale=1.0,
                eos_penalty=1.0,
            )
            return time.perf_counter() - started, out
        finally:
            rollout_module.sample = real_sample

    collect(0, False)  # warm-up
    seconds = {"sampler log-probs": [], "second pass": []}
    worst = 0.0
    for step in range(1, args.repeats + 1):
        a, ours = collect(step, False)
        b, theirs = collect(step, True)
        seconds["sampler log-probs"].append(a)
        seconds["second pass"].append(b)
        worst = max(worst, float((ours.logprobs - theirs.logprobs).abs().max()))
    print(
        f"{args.run}: {args.prompts} prompts x {args.group} completions, {args.max_new_tokens} new tokens, torch threads {torch.get_num_threads()}"
    )
    for name, values in seconds.items():
        print(f"  {name:<20} median {statistics.median(values):.3f} s  (min {min(values):.3f}, max {max(values):.3f})")
    ratio = statistics.median(seconds["second pass"]) / statistics.median(seconds["sampler log-probs"])
    print(f"  rollout phase speed-up: {ratio:.2f}x; max |log-prob difference| between the two: {worst:.2e}")


if __name__ == "__main__":
    main()
