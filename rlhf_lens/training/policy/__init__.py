"""The policy stage: setup, the reward it optimises, rollouts, updates (PPO, GRPO/RLOO), the online loop, DPO,
best-of-n and policy evaluation. Entry point: `rlhf_lens.training.policy.stage.run_policy_stage`."""
