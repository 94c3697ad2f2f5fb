"""Batches are a pure function of (seed, step); pairs keep their completion when truncated."""

from __future__ import annotations

from rlhf_lens.training.data import batch_indices, pack_blocks, split_heldout, tokenize_pairs


def test_batches_cover_each_epoch_once_and_are_deterministic():
    n, batch = 10, 4
    first_epoch = [i for step in range(1, 3) for i in batch_indices(n, batch, seed=0, step=step)]
    third = batch_indices(n, batch, seed=0, step=3)  # spans the end of epoch 0 and the start of epoch 1
    assert sorted(first_epoch + third[:2]) == list(range(n))
    assert batch_indices(n, batch, seed=0, step=5) == batch_indices(n, batch, seed=0, step=5)
    assert batch_indices(n, batch, seed=1, step=1) != batch_indices(n, batch, seed=0, step=1)


def test_heldout_split_is_disjoint_and_sized():
    train, heldout = split_heldout(100, 0.1, seed=0)
    assert len(heldout) == 10 and len(train) == 90 and not set(train) & set(heldout)


def test_pack_blocks_and_pair_truncation(tiny_tokenizer):
    blocks = pack_blocks(["the food was good."] * 50, tiny_tokenizer, 16)
    assert blocks.shape[1] == 16 and (blocks == tiny_tokenizer.eos_token_id).sum() >= 40
    long_prompt = "the room was " * 40
    pairs = tokenize_pairs([{"prompt": long_prompt, "completion": " very nice."}], tiny_tokenizer, context=24)
    completion = pairs.completion_ids[0]
    assert completion[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(completion, skip_special_tokens=True) == " very nice."
    assert len(pairs.prompt_ids[0]) + len(completion) == 24
