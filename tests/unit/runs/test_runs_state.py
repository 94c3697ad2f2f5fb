"""Training state round trip: optimizer, scheduler and RNG states come back exactly."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from rlhf_lens.runs import RunFormatError, load_state, save_state


def assert_same(a, b, path="state"):
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), path
        assert [type(k) for k in a] == [type(k) for k in b], path
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}/{i}")
    elif isinstance(a, float) and a != a:
        assert b != b, path
    else:
        assert a == b, path


def _train(model, opt, sched, steps):
    for _ in range(steps):
        loss = model(torch.randn(4, 3)).pow(2).sum()
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def _setup(seed):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def test_training_state_round_trip_is_exact(tmp_path):
    model, opt, sched = _setup(0)
    _train(model, opt, sched, 3)
    random.seed(3)
    np.random.seed(4)
    np.random.standard_normal()  # populates numpy's cached gaussian
    state = {
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
        "data_position": {"epoch": 1, "index": 17, "order": [3, 1, 2]},
        "misc": {
            "nan": float("nan"),
            "inf": float("inf"),
            "flag": True,
            "none": None,
            "np_scalar": np.int64(5),
            "@odd": "key starting with @",
            (1, "a"): "tuple key",
            2.5: "float key",
        },
    }
    save_state(tmp_path, state)
    back = load_state(tmp_path)
    assert_same(state, back)
    assert list(back["optimizer"]["state"].keys()) == [0, 1]  # int keys survive JSON
    assert isinstance(back["optimizer"]["param_groups"][0]["betas"], tuple)
    assert back["rng"]["numpy"][1].dtype == np.uint32

    # the skeleton is readable JSON; the tensors live in safetensors
    doc = json.loads((tmp_path / "state.json").read_text())
    assert doc["state"]["optimizer"]["param_groups"][0]["lr"] == pytest.approx(state["optimizer"]["param_groups"][0]["lr"])
    assert (tmp_path / "state.safetensors").read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle

    # restored states reproduce the future exactly
    random.setstate(back["rng"]["python"])
    np.random.set_state(back["rng"]["numpy"])
    torch.set_rng_state(back["rng"]["torch"])
    expected = (random.random(), np.random.standard_normal(), torch.rand(1))
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    assert (random.random(), np.random.standard_normal()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_resumed_optimizer_continues_identically(tmp_path):
    model, opt, sched = _setup(0)
    _train(model, opt, sched, 2)
    save_state(
        tmp_path,
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": torch.get_rng_state()},
    )
    _train(model, opt, sched, 2)  # the uninterrupted run

    back = load_state(tmp_path)
    model2, opt2, sched2 = _setup(1)
    model2.load_state_dict(back["model"])
    opt2.load_state_dict(back["optimizer"])
    sched2.load_state_dict(back["scheduler"])
    torch.set_rng_state(back["rng"])
    _train(model2, opt2, sched2, 2)  # the resumed run
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_unsupported_values_are_refused_with_their_path(tmp_path):
    with pytest.raises(TypeError, match=r"cannot store set at 'a/b/0'"):
        save_state(tmp_path, {"a": {"b": [{1, 2}]}})
    with pytest.raises(TypeError, match="numpy value at 'x' has dtype object"):
        save_state(tmp_path, {"x": np.array([object()])})
    assert not (tmp_path / "state.json").exists()


def test_load_state_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="state.json not found"):
        load_state(tmp_path)
    save_state(tmp_path, {"x": torch.ones(2)})
    doc = json.loads((tmp_path / "state.json").read_text())
    doc["state"]["x"]["@tensor"] = "y"
    (tmp_path / "state.json").write_text(json.dumps(doc))
    with pytest.raises(RunFormatError, match="refers to tensor 'y'"):
        load_state(tmp_path)
