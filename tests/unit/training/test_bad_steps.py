"""One counter of non-finite steps for every loop: max_bad_steps = N stops the stage at the N-th bad step in a row."""

from types import SimpleNamespace

import pytest

from rlhf_lens.training.optim import SUPERVISED_MAX_BAD_STEPS, BadStepCounter


def test_raises_at_the_limit_not_after_it():
    bad = BadStepCounter("policy", 3, limit_setting="stages.policy.max_bad_steps")
    bad.bad(1, "rewards")
    bad.bad(2, "rewards")
    with pytest.raises(
        FloatingPointError,
        match=r"stage policy: 3 consecutive steps \(up to step 3\) had non-finite rewards.*raise stages.policy.max_bad_steps",
    ):
        bad.bad(3, "rewards")


def test_a_good_step_resets_the_run():
    bad = BadStepCounter("policy", 2)
    for step in range(1, 10):
        bad.bad(step, "losses")
        bad.ok()
    assert bad.consecutive == 0


def test_of_uses_max_bad_steps_where_the_stage_has_it_and_the_fixed_limit_elsewhere():
    policy = BadStepCounter.of(SimpleNamespace(name="policy", max_bad_steps=2))
    assert policy.limit == 2 and policy.limit_setting == "stages.policy.max_bad_steps"
    base = BadStepCounter.of(SimpleNamespace(name="base"))
    assert base.limit == SUPERVISED_MAX_BAD_STEPS and base.limit_setting is None
    for step in range(1, SUPERVISED_MAX_BAD_STEPS):
        base.bad(step, "losses")
    with pytest.raises(FloatingPointError, match="stage base: 5 consecutive steps .* lower stages.base.lr"):
        base.bad(SUPERVISED_MAX_BAD_STEPS, "losses")


def test_every_loop_counts_with_the_one_class():
    from rlhf_lens.training import loop
    from rlhf_lens.training.policy import dpo, online, update

    assert loop.BadStepCounter is dpo.BadStepCounter is online.BadStepCounter is BadStepCounter
    assert not hasattr(update, "BadStepCounter")
