"""Activations (rlhf_lens.analyses.probes.activations): both backends against HF's output_hidden_states on GPT-2,
Llama and GPT-NeoX, the reads on right-padded batches, the shards on disk, and the reward read-out."""

from __future__ import annotations

import gc
import json
import warnings

import numpy as np
import pytest
import torch

from rlhf_lens import models
from rlhf_lens.analyses.probes import activations
from rlhf_lens.analyses.probes.activations import (
    SITES,
    ActivationStore,
    collect_activations,
    reward_readout,
    run_activations,
)
from rlhf_lens.runs import Run, RunLookupError, RunWriter
from tests.tiny_models import ARCHITECTURES, tiny_model

ATOL = 1e-5
PROMPTS = ["The food was", "I", "Terrible service, and the waiter", "Great", "We came back twice and", "Not", "Honestly the room"]
COMPLETIONS = [" great.", " loved it, truly a fine place to eat", " was rude.", " value", " it was good", " bad at all.", " smelled"]


@pytest.fixture(scope="module")
def folders(tiny_tokenizer, tmp_path_factory):
    """arch -> a saved causal-LM folder (with its tokenizer); "<arch>-reward" -> a saved reward model with an offset."""
    out = {}
    for arch in ARCHITECTURES:
        for head in ("causal", "reward"):
            model = tiny_model(arch, tiny_tokenizer, head="causal" if head == "causal" else "score")
            if head == "reward":
                model.config.reward_offset = 0.37
            folder = tmp_path_factory.mktemp(f"{arch}-{head}")
            model.save_pretrained(folder)
            tiny_tokenizer.save_pretrained(folder)
            out[arch if head == "causal" else f"{arch}-reward"] = folder
    return out


def reference_reads(model, tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """HF output_hidden_states of each text run alone (no padding): last token and completion mean, (n, L+1, d_model)."""
    last, mean = [], []
    for prefix, completion in models.reward_input_parts(tokenizer, PROMPTS, COMPLETIONS, 64):
        with torch.no_grad():
            out = model(input_ids=torch.tensor([prefix + completion]), output_hidden_states=True)
        hidden = torch.stack(out.hidden_states, 1)[0]  # (L+1, seq, d_model)
        last.append(hidden[:, -1].numpy())
        mean.append(hidden[:, len(prefix) :].mean(1).numpy())
    return np.stack(last), np.stack(mean)


def collect(source, tokenizer, **kw):
    kw = {"batch_size": 3, "quiet": True, **kw}
    return collect_activations(source, tokenizer, PROMPTS, COMPLETIONS, **kw)


# --------------------------------------------------------------------------- agreement with HF


@pytest.mark.parametrize("backend", ["bridge", "hooks"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_both_backends_match_hf_hidden_states_at_every_layer(arch, backend, folders, tiny_tokenizer):
    from rlhf_lens.runs import load_hf_folder

    # batches of 3 texts of different lengths: right padding in every batch
    store = collect(folders[arch], tiny_tokenizer, backend=backend, sites=SITES)
    assert store.info["backend"] == backend
    assert store.layers["resid_pre"] == (0, 1, 2) and store.layers["resid_final"] == (3,)
    last, mean = reference_reads(load_hf_folder(folders[arch]), tiny_tokenizer)
    np.testing.assert_allclose(store.hidden_states("last"), last, atol=ATOL, rtol=0)
    np.testing.assert_allclose(store.hidden_states("completion_mean"), mean, atol=ATOL, rtol=0)
    for read in ("last", "completion_mean"):
        pre, post = store.array("resid_pre", read), store.array("resid_post", read)
        # block l adds its attention and MLP outputs to the residual (GPT-NeoX's parallel blocks too)
        np.testing.assert_allclose(
            pre[:, :-1] + store.array("attn_out", read)[:, :-1] + store.array("mlp_out", read)[:, :-1], pre[:, 1:], atol=ATOL
        )
        np.testing.assert_allclose(post[:, :-1], pre[:, 1:], atol=ATOL)
        assert not np.allclose(post[:, -1], store.array("resid_final", read)[:, 0])  # before vs after the final norm


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_bridge_and_hooks_agree_on_attention_and_mlp_outputs(arch, folders, tiny_tokenizer):
    bridge = collect(folders[arch], tiny_tokenizer, backend="bridge", sites=("attn_out", "mlp_out"))
    hooks = collect(folders[arch], tiny_tokenizer, backend="hooks", sites=("attn_out", "mlp_out"))
    for site in ("attn_out", "mlp_out"):
        for read in ("last", "completion_mean"):
            np.testing.assert_allclose(bridge.array(site, read), hooks.array(site, read), atol=ATOL, rtol=0)


def test_a_model_object_is_read_without_being_changed(tiny_tokenizer, folders):
    model = tiny_model("llama", tiny_tokenizer).train()  # built from a config: train mode, dropout on
    blocks = [type(m) for m in model.modules()]
    hooks = collect(model, tiny_tokenizer)  # auto: hooks, no copy
    bridge = collect(model, tiny_tokenizer, backend="bridge")  # booted from a saved copy
    assert (hooks.info["backend"], bridge.info["backend"]) == ("hooks", "bridge")
    assert model.training and [type(m) for m in model.modules()] == blocks
    np.testing.assert_allclose(hooks.hidden_states("last"), bridge.hidden_states("last"), atol=ATOL)
    np.testing.assert_allclose(hooks.hidden_states("last"), reference_reads(model.eval(), tiny_tokenizer)[0], atol=ATOL)


def test_auto_falls_back_to_hooks_when_the_bridge_cannot_boot(folders, tiny_tokenizer, monkeypatch):
    def refuse(*args, **kwargs):
        raise ValueError("architecture not supported")

    monkeypatch.setattr(activations, "_boot_bridge", refuse)
    with pytest.warns(UserWarning, match="cannot boot .* reading it with PyTorch hooks"):
        store = collect(folders["gpt2"], tiny_tokenizer, sites=("resid_final",), reads=("last",))
    assert store.info["backend"] == "hooks"
    with pytest.raises(ValueError, match="architecture not supported"):
        collect(folders["gpt2"], tiny_tokenizer, backend="bridge")


# --------------------------------------------------------------------------- reads


def test_reads_pick_the_last_real_token_and_average_the_completion_by_hand():
    # rows: BOS+prompt of 2 tokens + completion of 1; BOS+prompt of 1 + completion of 3 (seq 4, row 0 padded)
    batch = activations._make_batch([([5, 6], [7]), ([5], [8, 9, 10])], pad_id=0, device="cpu")
    act = torch.arange(4.0)[None, :, None].expand(2, 4, 2)  # (batch, seq, d_model): the position itself
    assert batch.last.tolist() == [2, 3] and batch.positions.tolist() == [[0, 1, 2, 2], [0, 1, 2, 3]]
    assert activations._read(act, batch, "last").tolist() == [[2, 2], [3, 3]]
    assert activations._read(act, batch, "completion_mean").tolist() == [[2, 2], [2, 2]]  # (2)/1, (1+2+3)/3


def test_reads_do_not_depend_on_batching(folders, tiny_tokenizer):
    one = collect(folders["gpt2"], tiny_tokenizer, backend="hooks", batch_size=1)
    seven = collect(folders["gpt2"], tiny_tokenizer, backend="hooks", batch_size=7)
    for read in ("last", "completion_mean"):
        np.testing.assert_allclose(one.array("mlp_out", read), seven.array("mlp_out", read), atol=ATOL)


# --------------------------------------------------------------------------- the shards


def test_shards_round_trip_through_the_index(folders, tiny_tokenizer, tmp_path):
    collect(folders["gpt2"], tiny_tokenizer, out_dir=tmp_path / "acts", shard_size=3, batch_size=2, backend="hooks")
    whole = collect(folders["gpt2"], tiny_tokenizer, backend="hooks")
    index = json.loads((tmp_path / "acts" / "index.json").read_text())
    assert [s["count"] for s in index["shards"]] == [3, 3, 1] and index["complete"] and index["layer_naming"]
    assert sorted(p.name for p in (tmp_path / "acts").iterdir()) == ["index.json"] + [f"shard-0000{i}.safetensors" for i in range(3)]
    reopened = ActivationStore(tmp_path / "acts")
    assert len(reopened) == 7 and reopened.sites == ("resid_pre", "attn_out", "mlp_out", "resid_final")
    for site in reopened.sites:
        for read in reopened.reads:
            np.testing.assert_allclose(reopened.array(site, read), whole.array(site, read), atol=ATOL)
    np.testing.assert_array_equal(reopened.array("resid_pre", "last", layers=[2, 0]), reopened.array("resid_pre", "last")[:, [2, 0]])
    texts = reopened.texts
    parts = models.reward_input_parts(tiny_tokenizer, PROMPTS, COMPLETIONS, 64)
    assert texts["prompt"].tolist() == PROMPTS and texts["completion"].tolist() == COMPLETIONS
    assert texts["prefix_tokens"].tolist() == [len(p) for p, _ in parts] and texts["text"].tolist() == list(range(7))
    assert texts["completion_tokens"].tolist() == [len(c) for _, c in parts]


def test_an_out_dir_is_reused_finished_or_refused(folders, tiny_tokenizer, tmp_path, monkeypatch):
    out = tmp_path / "acts"
    first = collect(folders["gpt2"], tiny_tokenizer, out_dir=out, shard_size=3, backend="hooks")
    expected = first.array("resid_pre", "completion_mean")
    # interrupted after the first shard: the next call writes only the rest
    index = json.loads((out / "index.json").read_text())
    index["shards"], index["complete"] = index["shards"][:1], False
    (out / "index.json").write_text(json.dumps(index))
    for name in ("shard-00001.safetensors", "shard-00002.safetensors"):
        (out / name).unlink()
    with pytest.raises(Exception, match=r"incomplete \(3 of 7 texts\)"):
        ActivationStore(out)
    written = []
    real_write = activations._write_shard
    monkeypatch.setattr(activations, "_write_shard", lambda path, *rest: written.append(path.name) or real_write(path, *rest))
    finished = collect(folders["gpt2"], tiny_tokenizer, out_dir=out, shard_size=3, backend="hooks")
    assert written == ["shard-00001.safetensors", "shard-00002.safetensors"]
    np.testing.assert_allclose(finished.array("resid_pre", "completion_mean"), expected, atol=ATOL)
    # complete and the same inputs: read back, the model not even loaded
    monkeypatch.setattr(activations, "_folder_runner", lambda *args: pytest.fail("the model was loaded for a complete store"))
    again = collect(folders["gpt2"], tiny_tokenizer, out_dir=out, shard_size=3, backend="hooks")
    assert len(written) == 2 and again.path == out
    with pytest.raises(FileExistsError, match="already holds activations of other inputs"):
        collect(folders["gpt2"], tiny_tokenizer, out_dir=out, shard_size=3, reads=("last",))


def test_a_temporary_store_is_deleted_with_the_store(folders, tiny_tokenizer):
    store = collect(folders["gpt2"], tiny_tokenizer, backend="hooks", sites=("resid_final",))
    path = store.path
    assert (path / "index.json").is_file()
    del store
    gc.collect()
    assert not path.exists()


# --------------------------------------------------------------------------- the reward read-out


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("backend", ["bridge", "hooks"])
def test_the_score_head_on_the_final_read_is_the_reward(arch, backend, folders, tiny_tokenizer):
    from rlhf_lens.runs import load_hf_folder

    folder = folders[f"{arch}-reward"]
    store = collect(folder, None, backend=backend, sites=("resid_final",), reads=("last",))  # the folder's own tokenizer
    reward_model = load_hf_folder(folder, "score")
    readout = reward_readout(reward_model)
    assert readout.direction.shape == (32,) and readout.bias == pytest.approx(-0.37)
    expected = models.score_texts(reward_model, tiny_tokenizer, PROMPTS, COMPLETIONS).numpy()
    np.testing.assert_allclose(readout.rewards(store.array("resid_final", "last")), expected, atol=ATOL, rtol=0)
    np.testing.assert_allclose(reward_readout(folder).direction, readout.direction)


def test_run_activations_cache_under_the_run(tiny_tokenizer, tmp_path):
    writer = RunWriter.create(tmp_path / "run", name="run", task="sentiment", seed=0, config={})
    writer.add_stage("reward", "reward")
    reward_model = tiny_model("gpt2", tiny_tokenizer, head="score")
    writer.save_checkpoint("reward", "final", model=reward_model, tokenizer=tiny_tokenizer, step=4, metrics={})
    run = Run.open(writer.path)
    store = run_activations(run, "reward", PROMPTS, COMPLETIONS, sites=("resid_final",), reads=("last",), quiet=True)
    assert store.path.parent == run.path / "analyses" and store.path.name.startswith("activations-")
    again = run_activations(run, "reward", PROMPTS, COMPLETIONS, sites=("resid_final",), reads=("last",), quiet=True)
    assert again.path == store.path and again.info["shards"] == store.info["shards"]
    expected = models.score_texts(reward_model, tiny_tokenizer, PROMPTS, COMPLETIONS).numpy()
    np.testing.assert_allclose(reward_readout(reward_model).rewards(store.array("resid_final", "last")), expected, atol=ATOL)


# --------------------------------------------------------------------------- errors


def test_errors_say_what_is_wrong(folders, tiny_tokenizer, tmp_path):
    gpt2 = folders["gpt2"]
    with pytest.raises(ValueError, match=r"unknown site\(s\) \['resid'\]; choose from"):
        collect(gpt2, tiny_tokenizer, sites=("resid",))
    with pytest.raises(ValueError, match=r"unknown read\(s\) \['first'\]"):
        collect(gpt2, tiny_tokenizer, reads=("first",))
    with pytest.raises(TypeError, match="sequences of names"):
        collect(gpt2, tiny_tokenizer, sites="resid_pre")
    with pytest.raises(ValueError, match="no texts"):
        collect_activations(gpt2, tiny_tokenizer, [], [])
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        collect_activations(gpt2, tiny_tokenizer, ["a", "b"], [" c"])
    with pytest.raises(ValueError, match=r"1 completion\(s\) are empty \(first at indices \[1\]\)"):
        collect_activations(gpt2, tiny_tokenizer, ["a", "b"], [" c", ""])
    with pytest.raises(ValueError, match="backend must be one of"):
        collect(gpt2, tiny_tokenizer, backend="nnsight")
    with pytest.raises(RunLookupError, match="config.json is missing"):
        collect(tmp_path, tiny_tokenizer)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        collect(tmp_path / "nowhere", tiny_tokenizer)
    with pytest.raises(ValueError, match="pass the model's tokenizer"):
        collect(tiny_model("gpt2", tiny_tokenizer), None)
    with pytest.raises(FileNotFoundError, match="holds no activations"):
        ActivationStore(tmp_path)
    store = collect(gpt2, tiny_tokenizer, backend="hooks", sites=("resid_pre",), reads=("last",))
    with pytest.raises(ValueError, match=r"site 'mlp_out' was not collected .* it has \['resid_pre'\]"):
        store.array("mlp_out", "last")
    with pytest.raises(ValueError, match=r"resid_pre has no layer\(s\) \[3\]; its layers are \[0, 1, 2\]"):
        store.array("resid_pre", "last", layers=[3])
    with pytest.raises(TypeError, match="no `score` head"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reward_readout(tiny_model("gpt2", tiny_tokenizer))


def test_a_lying_or_escaping_shard_is_refused_before_it_is_read(folders, tiny_tokenizer, tmp_path):
    from rlhf_lens.runs import RunFormatError

    out = tmp_path / "acts"
    collect(folders["gpt2"], tiny_tokenizer, out_dir=out, shard_size=3, backend="hooks")
    shard = out / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-4:] = b""  # the header now declares more bytes than the file holds
    shard.write_bytes(bytes(data))
    with pytest.raises(RunFormatError, match=r"shard-00001.safetensors is not a valid safetensors file"):
        ActivationStore(out)
    index = json.loads((out / "index.json").read_text())
    index["shards"][1]["file"] = "../../elsewhere.safetensors"
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(RunFormatError, match="is not a file name in"):
        ActivationStore(out)
