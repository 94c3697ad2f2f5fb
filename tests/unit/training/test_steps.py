"""The step cadence every training loop shares: which steps evaluate, log and save."""

from types import SimpleNamespace

from rlhf_lens.training.steps import Cadence, progress


def test_eval_and_log_every_n_steps_and_on_the_last():
    cadence = Cadence(steps=10, eval_every=4, log_every=3)
    assert [s for s in range(1, 11) if cadence.is_eval_step(s)] == [4, 8, 10]
    assert [s for s in range(1, 11) if cadence.is_log_step(s)] == [3, 6, 9, 10]


def test_zero_means_only_the_last_step():
    cadence = Cadence(steps=5)
    assert [s for s in range(1, 6) if cadence.is_eval_step(s)] == [5]
    assert [s for s in range(1, 6) if cadence.is_log_step(s)] == [5]
    assert not any(cadence.is_save_step(s) for s in range(1, 6))


def test_save_every_n_steps_but_not_the_last_which_is_saved_as_final():
    assert [s for s in range(1, 11) if Cadence(steps=10, save_every=5).is_save_step(s)] == [5]
    assert [s for s in range(1, 12) if Cadence(steps=11, save_every=5).is_save_step(s)] == [5, 10]


def test_of_reads_a_stage_config_and_lets_a_derived_step_count_override():
    lm_stage = SimpleNamespace(steps=20, eval_every=10)  # no log_every / save_every fields
    assert Cadence.of(lm_stage) == Cadence(steps=20, eval_every=10)
    policy_stage = SimpleNamespace(steps=30, eval_every=10, log_every=5, save_every=15)
    assert Cadence.of(policy_stage) == Cadence(steps=30, eval_every=10, log_every=5, save_every=15)
    assert Cadence.of(lm_stage, steps=7).steps == 7


def test_progress_continues_after_the_resumed_step():
    bar = progress(Cadence(steps=6), 4, "sft", quiet=True)
    assert bar.n == 4 and bar.total == 6  # the bar starts at the steps already done
    assert list(bar) == [5, 6]
    assert list(progress(Cadence(steps=3), 0, "sft", quiet=True)) == [1, 2, 3]
