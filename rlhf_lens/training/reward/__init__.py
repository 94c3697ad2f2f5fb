"""The reward stage: the feedback it learns from, the objectives of the three reward-model kinds and their
evaluation. The stage itself runs from `rlhf_lens.training.pipeline.run_reward_stage`."""
