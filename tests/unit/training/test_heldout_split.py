"""The hash split of feedback prompts: one function, and the splits existing runs were trained with."""

import inspect

from rlhf_lens.training.data import is_heldout_prompt
from rlhf_lens.training.policy import dpo
from rlhf_lens.training.reward import feedback

PROMPTS = [f"The review of product {i} was" for i in range(12)]


def heldout(fraction, seed, salt=""):
    return [i for i, p in enumerate(PROMPTS) if is_heldout_prompt(p, fraction, seed, salt)]


def test_reward_stage_split_is_unchanged():
    # computed with feedback_data._heldout before the two hashes became one function
    assert heldout(0.5, 2) == [1, 2, 4, 5, 6, 7, 10, 11]
    assert heldout(0.2, 7) == [9]


def test_dpo_split_is_unchanged():
    # computed with dpo._heldout (salt "dpo:", fraction 0.2) before the two hashes became one function
    assert dpo.HELDOUT_FRACTION == 0.2 and dpo.HELDOUT_SALT == "dpo"
    assert heldout(0.2, 3, salt="dpo") == [9, 10, 11]
    assert heldout(0.2, 5, salt="dpo") == [1, 11]


def test_both_callers_use_the_one_function():
    assert "is_heldout_prompt(" in inspect.getsource(feedback.from_file)
    assert "is_heldout_prompt(" in inspect.getsource(dpo.preference_pairs)
    assert "hashlib" not in inspect.getsource(feedback) and "hashlib" not in inspect.getsource(dpo)
