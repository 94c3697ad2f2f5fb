"""Safetensors headers are vetted before any loader sees them (issue 23): a header that lies about dtypes, shapes
or byte ranges, or declares far more than the folder's config.json implies, is one RunFormatError line naming the
file (and the tensor) and the fix, never a SafetensorError traceback or a MemoryError.

The lying files are real ones written by safetensors.torch.save_file whose JSON header is then rewritten."""

from __future__ import annotations

import json
import resource
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlhf_lens.runs import RunFormatError, load_hf_folder
from rlhf_lens.runs.weights import (
    _config_parameters,
    check_safetensors_header,
    read_safetensors_header,
    read_weights,
    safetensors_weight_files,
)

FIX = "save_pretrained"


def split(path: Path) -> tuple[dict[str, Any], bytes]:
    """(header, data buffer) of a safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write(path: Path, header: dict[str, Any] | str | bytes, data: bytes, length: int | None = None) -> Path:
    """Write `header` (a dict, or raw JSON text) + `data`; `length` overrides the 8-byte header length."""
    text = header if isinstance(header, bytes) else (header if isinstance(header, str) else json.dumps(header)).encode("utf-8")
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def assert_refused(path: Path, *fragments: str, check: Callable[[Path], Any] = check_safetensors_header) -> str:
    """`check(path)` raises one RunFormatError line naming `path`, the fix and every fragment; returns the message."""
    with pytest.raises(RunFormatError) as err:
        check(path)
    message = str(err.value)
    assert "\n" not in message and "\r" not in message, message
    assert str(path) in message and FIX in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """A real three-tensor safetensors file (F32, F16, I64)."""
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.ones(2, 3), "b": torch.ones(4, dtype=torch.float16), "c": torch.arange(2)}, path, metadata={"format": "pt"})
    return path


@pytest.fixture
def lm_folder(tmp_path: Path, tiny) -> Path:
    """A save_pretrained folder of the 1-layer GPT-2 LM (config.json + model.safetensors)."""
    folder = tmp_path / "lm"
    tiny.lm(0).save_pretrained(folder)
    return folder


def last(header: dict[str, Any]) -> str:
    """Name of the tensor stored last in the data buffer."""
    return max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


def shift(header: dict[str, Any], name: str, by: int) -> None:
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin + by, end + by]


def _ends_before_begins(h, d):
    h["a"]["data_offsets"] = h["a"]["data_offsets"][::-1]
    return h, d


def _overlap(h, d):
    shift(h, last(h), -4)
    return h, d


def _gap(h, d):
    shift(h, last(h), 4)
    return h, d + b"\0" * 4


def _beyond_file(h, d):
    shift(h, last(h), 4)
    return h, d


def _trailing_bytes(h, d):
    return h, d + b"\0" * 8


def _shape_lie(h, d):
    h["a"]["shape"] = [2, 4]
    return h, d


def _dtype_size_lie(h, d):
    h["a"]["dtype"] = "F64"
    return h, d


def _set(name: str, field: str, value: Any) -> Callable:
    def mutate(h, d):
        h[name][field] = value
        return h, d

    return mutate


def _metadata(value: Any) -> Callable:
    def mutate(h, d):
        h["__metadata__"] = value
        return h, d

    return mutate


def _missing_field(h, d):
    del h["a"]["dtype"]
    return h, d


def _unknown_field(h, d):
    h["a"]["sharding"] = "row"
    return h, d


def _entry_not_object(h, d):
    h["a"] = [0, 24]
    return h, d


def _overflowing_shape(h, d):
    begin = h["a"]["data_offsets"][0]
    h["a"].update(shape=[2**63, 4, 0], data_offsets=[begin, begin])
    return h, d


# (case, mutate(header, data) -> (header, data), fragments of the message, does the safetensors loader refuse it too)
LIES = [
    ("offsets out of order", _ends_before_begins, ["tensor 'a'", "ends before it begins"], True),
    ("overlapping offsets", _overlap, ["overlaps tensor"], True),
    ("gap between tensors", _gap, ["belong to no tensor"], True),
    ("offsets beyond the file", _beyond_file, ["the file holds only"], True),
    ("bytes after the last tensor", _trailing_bytes, ["8 bytes belong to no tensor"], True),
    ("shape larger than its bytes", _shape_lie, ["tensor 'a'", "shape [2, 4] of F32, 32 bytes", "span 24"], True),
    ("dtype larger than its bytes", _dtype_size_lie, ["tensor 'a'", "of F64, 48 bytes"], True),
    ("unknown dtype", _set("a", "dtype", "Q7"), ["tensor 'a'", "unknown dtype 'Q7'", "BF16"], True),
    ("dtype not a string", _set("a", "dtype", 4), ["unknown dtype 4 "], True),
    ("shape not a list", _set("a", "shape", 6), ["tensor 'a' has shape 6, expected a list of non-negative integers"], True),
    ("negative dimension", _set("a", "shape", [-2, -3]), ["expected a list of non-negative integers"], True),
    ("float dimension", _set("a", "shape", [2.0, 3]), ["expected a list of non-negative integers"], True),
    ("negative offsets", _set("a", "data_offsets", [-24, 0]), ["expected [begin, end], non-negative integers"], True),
    ("three offsets", _set("a", "data_offsets", [0, 24, 24]), ["expected [begin, end]"], True),
    ("size overflowing 64 bits", _overflowing_shape, ["overflows 64 bits"], True),
    ("__metadata__ not a map", _metadata(["pt"]), ["__metadata__ is a list"], True),
    ("__metadata__ value not a string", _metadata({"format": 3}), ["__metadata__['format'] is a number, expected a string"], True),
    ("field missing", _missing_field, ["tensor 'a' lacks dtype"], True),
    ("tensor entry not an object", _entry_not_object, ["tensor 'a' is a list"], True),
    # stricter than the loader, which ignores unknown fields: the format has exactly three
    ("unknown field", _unknown_field, ["unknown field 'sharding'"], False),
]


@pytest.mark.parametrize(("mutate", "fragments", "loader_refuses"), [case[1:] for case in LIES], ids=[case[0] for case in LIES])
def test_a_lying_header_is_one_line_naming_file_tensor_and_fix(small, mutate, fragments, loader_refuses):
    header, data = mutate(*split(small))
    write(small, header, data)
    assert_refused(small, "is not a valid safetensors file", *fragments)
    if loader_refuses:  # the case is a real lie: the library's own loader refuses it too, with its own error
        with pytest.raises(Exception) as err:
            load_file(small)
        assert not isinstance(err.value, RunFormatError)


def _header_text(small: Path) -> str:
    return json.dumps(split(small)[0])


# (case, file bytes built from the real file's header text and data, fragments of the message)
RAW = [
    ("file shorter than 8 bytes", lambda text, data: b"\x05\0\0", ["too short for the 8-byte header length"]),
    ("length beyond the file", lambda text, data: struct.pack("<Q", 10**6) + text.encode() + data, ["says 1000000 bytes but only"]),
    ("length over the format's limit", lambda text, data: struct.pack("<Q", 2**63) + text.encode() + data, ["over the format's limit"]),
    ("length cutting the header short", lambda text, data: struct.pack("<Q", len(text) - 1) + text.encode() + data, ["parse as JSON"]),
    ("header not UTF-8", lambda text, data: _framed(b'{"\xff": 1}', data), ["not UTF-8"]),
    ("header a list", lambda text, data: _framed(b"[]", b""), ["header is a list, expected an object of tensors"]),
    ("NaN in the header", lambda text, data: _framed(text.replace("[2, 3]", "[NaN, 3]").encode(), data), ["NaN is not JSON"]),
    ("nested too deep", lambda text, data: _framed(b"[" * 100_000 + b"]" * 100_000, b""), ["parse as JSON"]),
    (
        "duplicate tensor name",
        lambda text, data: _framed((text[:-1] + ', "a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}').encode(), data),
        ["key 'a' appears twice"],
    ),
    (
        "unpaired surrogate in a name",
        lambda text, data: _framed(text.replace('"a"', '"\\ud800"').encode(), data),
        ["unpaired UTF-16 surrogate"],
    ),
]


def _framed(header: bytes, data: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + data


@pytest.mark.parametrize(("build", "fragments"), [case[1:] for case in RAW], ids=[case[0] for case in RAW])
def test_a_damaged_header_frame_is_one_line_naming_the_file(small, build, fragments):
    text, data = _header_text(small), split(small)[1]
    small.write_bytes(build(text, data))
    assert_refused(small, "is not a valid safetensors file", *fragments)


def test_a_dtype_the_format_knows_but_torch_cannot_hold_or_a_partial_byte_is_refused(tmp_path):
    f6 = write(tmp_path / "f6.safetensors", {"x": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [0, 3]}}, b"\0" * 3)
    assert_refused(f6, "tensor 'x' has dtype F6_E2M3, which the installed torch cannot represent")
    with pytest.raises(Exception, match="F6_E2M3"):
        load_file(f6)  # valid safetensors, yet the torch loader cannot read it
    odd = write(tmp_path / "f4.safetensors", {"x": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}, b"\0" * 2)
    assert_refused(odd, "shape [3] of F4 (4 bits each)", "not a whole number of bytes")


def test_a_hostile_tensor_name_stays_on_one_line_and_is_cut(tmp_path):
    name = "evil\nname\r" + "x" * 500
    path = write(tmp_path / "model.safetensors", {name: {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, b"\0")
    message = assert_refused(path, "tensor 'evil\\nname\\r")
    assert len(message) < 700


def test_a_folder_path_with_a_newline_is_escaped(tmp_path, small):
    folder = tmp_path / "odd\nfolder"
    folder.mkdir()
    path = folder / "model.safetensors"
    path.write_bytes(b"\x05\0\0")
    with pytest.raises(RunFormatError) as err:
        check_safetensors_header(path)
    assert "\n" not in str(err.value) and ascii(str(path)) in str(err.value)


def test_real_files_pass_and_the_summary_matches_the_loader(small, lm_folder):
    summary = read_safetensors_header(small)
    header, data = split(small)
    assert set(summary.names) == set(load_file(small)) == {"a", "b", "c"} and summary.data_bytes == len(data)
    assert safetensors_weight_files(lm_folder) == [lm_folder / "model.safetensors"]
    assert set(read_safetensors_header(lm_folder / "model.safetensors").names) == set(load_file(lm_folder / "model.safetensors"))
    empty = write(small.with_name("empty.safetensors"), {}, b"")  # valid: no tensors, no data
    assert read_safetensors_header(empty).names == ()


@pytest.mark.parametrize("arch", ["gpt2", "llama", "neox"])
@pytest.mark.parametrize("head", ["causal", "score"])
def test_the_tiny_test_models_pass_and_their_config_estimate_covers_them(tmp_path, tiny, arch, head):
    from tests.tiny_models import tiny_model

    model = tiny_model(arch, tiny.tokenizer(), head=head)
    model.save_pretrained(tmp_path / "m")
    assert safetensors_weight_files(tmp_path / "m") == [tmp_path / "m" / "model.safetensors"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert _config_parameters(config) >= sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["GPT2", "Llama", "GPTNeoX", "Qwen2", "Qwen2Moe", "Mixtral"])
def test_the_config_estimate_covers_real_model_sizes(name):
    """The default configs are real models (GPT-2 124M, Llama-2 7B, GPT-NeoX 20B, Qwen2, Qwen2-MoE, Mixtral
    8x7B); counted on the meta device, nothing is allocated."""
    import transformers

    config = getattr(transformers, f"{name}Config")()
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    parameters = sum(t.numel() for t in model.state_dict().values())
    estimate = _config_parameters(json.loads(config.to_json_string(use_diff=True)))
    assert parameters <= estimate <= 3 * parameters


def test_the_config_estimate_is_skipped_without_sizes():
    assert _config_parameters({"model_type": "llava", "text_config": {"model_type": "llama"}}) is None
    assert _config_parameters({"hidden_size": True, "num_hidden_layers": "2"}) is None


def test_a_10gb_tensor_declared_in_a_1kb_file_is_refused_without_allocating(lm_folder):
    path = lm_folder / "model.safetensors"
    header = {
        "__metadata__": {"format": "pt"},
        "transformer.wte.weight": {"dtype": "F32", "shape": [2_500_000_000], "data_offsets": [0, 10**10]},
    }
    text = json.dumps(header).encode()
    write(path, text, b"\0" * (1000 - 8 - len(text)))
    assert path.stat().st_size == 1000
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    try:
        message = assert_refused(
            path, "data_offsets [0, 10000000000] but the file holds only", check=lambda p: safetensors_weight_files(p.parent)
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50 * 1024
    assert "transformer.wte.weight" in message


def sparse_weights(path: Path, nbytes: int) -> Path:
    """A consistent safetensors file with one F32 tensor of `nbytes`, written sparse (no disk used for the data)."""
    text = json.dumps(
        {"__metadata__": {"format": "pt"}, "transformer.wte.weight": {"dtype": "F32", "shape": [nbytes // 4], "data_offsets": [0, nbytes]}}
    )
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text.encode())
        f.truncate(8 + len(text) + nbytes)
    return path


def test_weights_far_larger_than_the_config_implies_are_refused(lm_folder):
    sparse_weights(lm_folder / "model.safetensors", 100_000_000)
    read_safetensors_header(lm_folder / "model.safetensors")  # the file itself is consistent
    message = assert_refused(
        lm_folder / "model.safetensors",
        "declares 100.0 MB (100000000 bytes) of tensors",
        str(lm_folder / "config.json"),
        "parameters",
        check=lambda p: safetensors_weight_files(p.parent),
    )
    estimate = _config_parameters(json.loads((lm_folder / "config.json").read_text()))
    assert f"about {estimate:,} parameters" in message
    with pytest.raises(RunFormatError, match="config.json implies"):
        load_hf_folder(lm_folder)
    with pytest.raises(RunFormatError, match="config.json implies"):
        read_weights(lm_folder)


def test_without_usable_sizes_in_config_json_only_the_file_size_bounds_the_weights(lm_folder):
    sparse_weights(lm_folder / "model.safetensors", 100_000_000)
    (lm_folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert safetensors_weight_files(lm_folder) == [lm_folder / "model.safetensors"]
    (lm_folder / "config.json").unlink()
    assert safetensors_weight_files(lm_folder) == [lm_folder / "model.safetensors"]


def test_a_file_declaring_no_tensors_is_no_model(lm_folder):
    write(lm_folder / "model.safetensors", {"__metadata__": {"format": "pt"}}, b"")
    assert_refused(lm_folder / "model.safetensors", "declares no tensors", check=lambda p: safetensors_weight_files(p.parent))


@pytest.fixture
def sharded(tmp_path: Path, lm_folder: Path) -> Path:
    """The tiny LM as two shards + model.safetensors.index.json (loadable by from_pretrained)."""
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "config.json").write_bytes((lm_folder / "config.json").read_bytes())
    tensors = load_file(lm_folder / "model.safetensors")
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, folder / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def test_a_sharded_model_passes_and_loads(sharded, tiny):
    files = safetensors_weight_files(sharded)
    assert [f.name for f in files] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert tiny.same_weights(tiny.lm(0), load_hf_folder(sharded))
    assert read_weights(sharded).keys() == load_file(files[0]).keys() | load_file(files[1]).keys()


def test_each_shard_is_checked(sharded):
    second = sharded / "model-00002-of-00002.safetensors"
    header, data = split(second)
    shift(header, last(header), 4)
    write(second, header, data)
    assert_refused(second, "the file holds only", check=lambda p: safetensors_weight_files(p.parent))
    assert "00001" not in assert_refused(second, check=lambda p: safetensors_weight_files(p.parent))


def test_a_tensor_in_two_shards_is_refused(sharded):
    first, second = sharded / "model-00001-of-00002.safetensors", sharded / "model-00002-of-00002.safetensors"
    save_file({**load_file(second), "lm_dup": torch.ones(2)}, second, metadata={"format": "pt"})
    save_file({**load_file(first), "lm_dup": torch.ones(2)}, first, metadata={"format": "pt"})
    assert_refused(
        second, "tensor 'lm_dup' also appears in model-00001-of-00002.safetensors", check=lambda p: safetensors_weight_files(p.parent)
    )


def test_a_lying_index_is_one_line_naming_it(sharded):
    index = sharded / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    index.write_text(json.dumps({"weight_map": {**weight_map, "x": "model-00003-of-00002.safetensors"}}))
    with pytest.raises(RunFormatError, match="lists shards that are missing .*'model-00003-of-00002.safetensors'"):
        safetensors_weight_files(sharded)
    for bad in ({"weight_map": {"x": 3}}, {"weight_map": {"x": "../model.safetensors"}}, [1], {"weight_map": {"x": "a\0.safetensors"}}):
        index.write_text(json.dumps(bad))
        with pytest.raises(RunFormatError) as err:
            safetensors_weight_files(sharded)
        assert str(index) in str(err.value) and "\n" not in str(err.value)


def test_loading_a_folder_with_a_lying_header_is_a_run_format_error(lm_folder):
    """End to end, through the loader the CLI's analyses use: before vetting this was a SafetensorError traceback."""
    path = lm_folder / "model.safetensors"
    header, data = split(path)
    header["transformer.wte.weight"]["shape"] = [100_000, 100_000]
    write(path, header, data)
    for load in (load_hf_folder, read_weights):
        with pytest.raises(RunFormatError) as err:
            load(lm_folder)
        message = str(err.value)
        assert "\n" not in message and str(path) in message and "'transformer.wte.weight'" in message and FIX in message
