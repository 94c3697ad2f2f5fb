"""Readers of single model and checkpoint folders, for the trainer (which must not know file names)."""

import pytest

from rlhf_lens.runs import RunLookupError, checkpoint_tag, has_training_state, read_model_config, value_dir


def test_readers_of_a_saved_checkpoint(new_run, tiny):
    writer = new_run({"sft": "sft"})
    folder = writer.save_checkpoint("sft", checkpoint_tag(3), model=tiny.lm(0), step=3, metrics={"loss": 1.0}, state={"step": 3})
    assert read_model_config(folder)["model_type"] == "gpt2"
    assert has_training_state(folder)
    assert value_dir(folder) == folder / "value"


def test_readers_of_a_folder_that_is_no_checkpoint(tmp_path):
    assert not has_training_state(tmp_path)
    with pytest.raises(RunLookupError, match="config.json is missing"):
        read_model_config(tmp_path)
