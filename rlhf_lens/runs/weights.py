"""Find and vet the weight files of a checkpoint folder: safetensors only, pickles refused, headers checked.

Loading a pickle (pytorch_model.bin, *.pt, *.pkl) runs arbitrary code, so a run
never contains one and nothing here ever opens one.

A safetensors file can still lie: its JSON header declares each tensor's dtype,
shape and byte range, and a loader trusts those numbers. `check_safetensors_header`
reads the header alone (no tensor data) and checks it against the format
(https://github.com/huggingface/safetensors, `Metadata::validate` in
safetensors/src/tensor.rs): known dtypes, shapes whose size matches their byte
range, byte ranges that tile the data buffer from 0 without gap or overlap, and
a buffer that ends exactly at the end of the file. So nothing a header declares
can exceed what the file holds, and `safetensors_weight_files` also bounds the
total against what the folder's config.json implies (a sparse or padded file can
be large without costing disk). Every refusal is one line naming the file.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, NamedTuple

from .errors import RunFormatError
from .hashing import sha256_file
from .layout import MODEL_CONFIG_JSON, MODEL_SAFETENSORS, MODEL_SAFETENSORS_INDEX

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_MAX_HEADER = 100_000_000  # the library's MAX_HEADER_SIZE (safetensors/src/tensor.rs); it refuses longer headers
_MAX_JSON_SIDE_FILE = 100_000_000  # config.json and the shard index are a few MB even for the largest models
# Bits per element of every dtype the safetensors format defines (`Dtype::bitsize` in safetensors/src/tensor.rs,
# version 0.8): F4 and F6 pack several elements per byte.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
# The format's dtypes that safetensors.torch maps to a torch dtype only when torch has it (None: no torch dtype).
_RARE_TORCH_DTYPES: dict[str, str | None] = {
    "F4": "float4_e2m1fn_x2",
    "F6_E2M3": None,
    "F6_E3M2": None,
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
}
_U64_MAX = 2**64 - 1  # offsets, dimensions and sizes are u64 in the loader
_TENSOR_FIELDS = ("dtype", "shape", "data_offsets")
_RESAVE = "re-save the model with model.save_pretrained(folder) in a trusted environment"
# The bound against config.json: declared bytes may reach this many times the float32 size of the parameter
# count the config implies (itself an overestimate: untied embeddings, full-width k/v, 4 x d MLPs), plus a floor.
CONFIG_SIZE_FACTOR = 4
CONFIG_SIZE_FLOOR = 64 * 1024 * 1024


class HeaderSummary(NamedTuple):
    """What a vetted safetensors header declares: tensor names (in header order) and data bytes in all."""

    names: tuple[str, ...]
    data_bytes: int


def _shown(text: str, limit: int = 80) -> str:
    """`text` quoted on one line (newlines and other unprintables escaped), cut to `limit` characters."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return repr(cut)


def _brief(value: Any) -> str:
    """`value` as JSON on one line (json.dumps escapes control characters), cut to 60 characters."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    """What JSON value `value` is, with its article: "a number", "an object", "null", ..."""
    if value is None:
        return "null"
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return kinds.get(type(value), f"a {type(value).__name__}")


def _where(path: Path) -> str:
    text = str(path)
    return text if text.isprintable() else ascii(text)


def _invalid(path: Path, what: str) -> RunFormatError:
    return RunFormatError(f"{_where(path)} is not a valid safetensors file: {what}. It will not be loaded; {_RESAVE}.")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:  # json keeps the last, the Rust loader may keep another: the two would disagree
            raise ValueError(f"key {_shown(key)} appears twice")
        seen[key] = value
    return seen


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _nonnegative_int(value: Any) -> bool:
    return type(value) is int and 0 <= value <= _U64_MAX


def _byte_size(shape: list[int], bits: int) -> int | None:
    """Bytes of a tensor of `shape` with `bits` per element, None when the count overflows 64 bits on the way (as
    the loader computes it, dimension by dimension) or is not a whole number of bytes."""
    count = 1
    for dim in shape:
        count *= dim
        if count > _U64_MAX:  # also keeps a lying shape from building a huge integer
            return None
    nbits = count * bits
    return None if nbits > _U64_MAX or nbits % 8 else nbits // 8


def _dims(shape: list[int]) -> str:
    text = "[" + ", ".join(str(dim) for dim in shape[:12]) + (", ..." if len(shape) > 12 else "") + "]"
    return text if len(text) <= 60 else text[:57] + "...]"


def _torch_cannot_read(dtype: str) -> bool:
    """Whether the installed torch lacks `dtype` (only the rare dtypes are looked up; torch is imported then)."""
    if dtype not in _RARE_TORCH_DTYPES:
        return False
    import torch

    name = _RARE_TORCH_DTYPES[dtype]
    return name is None or not hasattr(torch, name)


def _unpaired_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # json accepts a lone "\ud800" escape, the Rust loader refuses it
        return True
    return False


def _tensor_problem(name: str, info: Any, available: int) -> str | None:
    """What is wrong with one tensor's header entry (the format's rules, and bytes within the `available` data),
    None when nothing is."""
    if _unpaired_surrogate(name):
        return "has an unpaired UTF-16 surrogate in its name (not valid Unicode)"
    if not isinstance(info, dict):
        return f"is {_kind(info)}, expected an object with dtype, shape and data_offsets"
    if len(info) != 3 or any(field not in info for field in _TENSOR_FIELDS):
        missing = [field for field in _TENSOR_FIELDS if field not in info]
        extra = [field for field in info if field not in _TENSOR_FIELDS]
        wrong = f"lacks {', '.join(missing)}" if missing else f"has unknown field {_shown(extra[0])}"
        return f"{wrong} (expected exactly dtype, shape and data_offsets)"
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        shown = _shown(dtype) if isinstance(dtype, str) else _brief(dtype)
        return f"has unknown dtype {shown} (the format knows {', '.join(DTYPE_BITS)})"
    if not isinstance(shape, list) or not all(_nonnegative_int(dim) for dim in shape):
        return f"has shape {_brief(shape)}, expected a list of non-negative integers"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_nonnegative_int(o) for o in offsets)):
        return f"has data_offsets {_brief(offsets)}, expected [begin, end], non-negative integers"
    begin, end = offsets
    if end < begin:
        return f"has data_offsets [{begin}, {end}]: it ends before it begins"
    if end > available:
        return f"has data_offsets [{begin}, {end}] but the file holds only {available} bytes of tensor data"
    if _torch_cannot_read(dtype):
        return f"has dtype {dtype}, which the installed torch cannot represent; store it as BF16, F16 or F32"
    nbytes = _byte_size(shape, DTYPE_BITS[dtype])
    if nbytes is None:
        return f"has shape {_dims(shape)} of {dtype} ({DTYPE_BITS[dtype]} bits each): its size overflows 64 bits or is not a whole number of bytes"
    if nbytes != end - begin:
        declared = f"{nbytes} bytes" if nbytes <= available else f"{nbytes} bytes, more than the {available} the file holds"
        return f"has shape {_dims(shape)} of {dtype}, {declared}, but data_offsets [{begin}, {end}] span {end - begin}"
    return None


def read_safetensors_header(path: str | os.PathLike[str]) -> HeaderSummary:
    """Vet a safetensors file's header against the format and the file's size; RunFormatError (one line naming
    the file, the tensor and the fix) unless a loader could read every tensor it declares from this file.

    Reads the 8-byte length and the JSON header only, never tensor data, so a crafted file (a pickle renamed
    model.safetensors, a header declaring 10 GB in a 1 kB file) is refused before any loader allocates for it.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            n = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else None
            fits = n is not None and n <= min(_MAX_HEADER, size - 8)
            raw = f.read(n) if fits else b""
    except OSError as err:
        raise RunFormatError(f"{_where(path)} cannot be read ({err.strerror or err}); check the file and its permissions") from err
    if n is None:
        raise _invalid(path, f"it is {size} bytes long, too short for the 8-byte header length")
    if n > _MAX_HEADER:
        raise _invalid(path, f"its header length field says {n} bytes, over the format's limit of {_MAX_HEADER}")
    if not fits:
        raise _invalid(path, f"its header length field says {n} bytes but only {size - 8} bytes follow it")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except UnicodeDecodeError as err:
        raise _invalid(path, f"its header is not UTF-8 (byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise _invalid(path, f"its header does not parse as JSON ({err.msg} at character {err.pos})") from err
    except (ValueError, RecursionError) as err:
        raise _invalid(path, f"its header does not parse as JSON ({str(err).splitlines()[0] if str(err) else 'nested too deep'})") from err
    if not isinstance(header, dict):
        raise _invalid(path, f"its header is {_kind(header)}, expected an object of tensors")
    available = size - 8 - n  # bytes of the data buffer
    metadata = header.pop("__metadata__", None)
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _invalid(path, f"__metadata__ is {_kind(metadata)}, expected an object of strings")
        for key, value in metadata.items():
            if not isinstance(value, str):
                raise _invalid(path, f"__metadata__[{_shown(key)}] is {_kind(value)}, expected a string")
            if _unpaired_surrogate(key) or _unpaired_surrogate(value):
                raise _invalid(path, f"__metadata__[{_shown(key)}] holds an unpaired UTF-16 surrogate (not valid Unicode)")
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        problem = _tensor_problem(name, info, available)
        if problem:
            raise _invalid(path, f"tensor {_shown(name)} {problem}")
        begin, end = info["data_offsets"]
        spans.append((begin, end, name))
    spans.sort()  # the loader's order (`Metadata::try_from` sorts by data_offsets)
    reached, previous = 0, None
    for begin, end, name in spans:
        if begin < reached:
            raise _invalid(
                path, f"tensor {_shown(name)} at bytes [{begin}, {end}] overlaps tensor {_shown(previous or '')}, which ends at {reached}"
            )
        if begin > reached:
            after = f"after tensor {_shown(previous)}" if previous is not None else "at the start of the data"
            raise _invalid(path, f"{begin - reached} bytes {after} belong to no tensor (tensor {_shown(name)} starts at {begin})")
        reached, previous = end, name
    if reached != available:
        raise _invalid(
            path,
            f"its tensors end at byte {reached} of the data but the file holds {available}: {available - reached} bytes belong to no tensor",
        )
    return HeaderSummary(tuple(header), reached)


def check_safetensors_header(path: Path) -> None:
    """Raise RunFormatError unless `path` is a well-formed safetensors file (`read_safetensors_header`)."""
    read_safetensors_header(path)


def _first_int(config: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if type(value) is int and value > 0:
            return value
    return None


def _config_parameters(config: dict[str, Any], nested: bool = True) -> int | None:
    """A generous estimate of the parameter count an HF config describes, None when it lacks the sizes.

    Per layer: self- and cross-attention (8 d x width), a gated MLP of max(intermediate, 4 d) plus one per
    expert (MoE), norms and biases; plus untied input and output embeddings and learned positions. Real GPT-2, Llama,
    GPT-NeoX, Qwen (MoE too) and T5 configs come out above their true count. Sub-configs (vision_config, ...)
    that give their sizes are added in; a composite config without top-level sizes gets no estimate, since its
    sub-configs may omit theirs (older transformers saved only what differs from the defaults).
    """
    width = _first_int(config, "hidden_size", "n_embd", "d_model", "dim", "embed_dim")
    layers = _first_int(config, "num_hidden_layers", "n_layer", "num_layers", "n_layers", "encoder_layers")
    if not (width and layers):
        return None
    layers += _first_int(config, "num_decoder_layers", "decoder_layers") or 0
    dense_keys = ("intermediate_size", "n_inner", "d_ff", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "hidden_dim")
    dense = max([4 * width] + [v for v in (_first_int(config, key) for key in dense_keys) if v])
    expert = _first_int(config, "moe_intermediate_size", "expert_intermediate_size") or dense
    experts = _first_int(config, "num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts") or 0
    experts += _first_int(config, "n_shared_experts", "num_shared_experts") or 0
    inner = dense + experts * expert + (_first_int(config, "shared_expert_intermediate_size") or 0)
    heads, head_dim = _first_int(config, "num_attention_heads", "n_head"), _first_int(config, "head_dim")
    attention = max(width, heads * head_dim if heads and head_dim else 0)
    per_layer = 8 * width * attention + 3 * width * inner + 16 * width
    vocab = _first_int(config, "vocab_size") or 0
    positions = _first_int(config, "max_position_embeddings", "n_positions", "max_seq_len") or 0
    total = layers * per_layer + (2 * vocab + positions) * width
    if nested:
        total += sum(_config_parameters(value, nested=False) or 0 for value in config.values() if isinstance(value, dict))
    return total


def _read_side_json(path: Path) -> Any:
    """A JSON side file (config.json, the shard index), or None when absent, too large, or unparsable."""
    try:
        if not path.is_file() or path.stat().st_size > _MAX_JSON_SIDE_FILE:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None


def _size(nbytes: int, exact: bool = True) -> str:
    """e.g. "100.0 MB (100000000 bytes)", or "100.0 MB" when not `exact`."""
    scaled = next((f"{nbytes / unit:,.1f} {name}" for unit, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")) if nbytes >= unit), None)
    if scaled is None:
        return f"{nbytes} bytes"
    return f"{scaled} ({nbytes} bytes)" if exact else scaled


def _check_against_config(folder: Path, declared: dict[Path, HeaderSummary]) -> None:
    """RunFormatError when the weight files declare far more bytes than folder/config.json implies; no bound
    when the config is absent, unreadable, or lacks the sizes (the files' own sizes bound them then)."""
    config_path = folder / MODEL_CONFIG_JSON
    config = _read_side_json(config_path)
    parameters = _config_parameters(config) if isinstance(config, dict) else None
    if parameters is None:
        return
    total = sum(summary.data_bytes for summary in declared.values())
    limit = CONFIG_SIZE_FACTOR * 4 * parameters + CONFIG_SIZE_FLOOR
    if total > limit:
        largest = max(declared, key=lambda path: declared[path].data_bytes)
        where = _where(largest) if len(declared) == 1 else f"{_where(largest)} (with the other {len(declared) - 1} shards)"
        raise RunFormatError(
            f"{where} declares {_size(total)} of tensors, but {_where(config_path)} implies about {parameters:,} parameters "
            f"({_size(4 * parameters, exact=False)} in float32; refused above {CONFIG_SIZE_FACTOR}x that + {CONFIG_SIZE_FLOOR // 2**20} MiB "
            f"= {_size(limit)}): the weights do not belong to this config. It will not be loaded; {_RESAVE}."
        )


def _shard_names(index: Path) -> list[str]:
    document = _read_side_json(index)
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise RunFormatError(
            f'{_where(index)}: not a valid safetensors index (expected JSON with "weight_map": {{tensor: shard file}}, '
            f"under {_MAX_JSON_SIDE_FILE} bytes); {_RESAVE}"
        )
    return sorted(set(weight_map.values()))


def safetensors_weight_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The safetensors weight files of an HF folder, vetted; RunFormatError if there are none.

    Accepts model.safetensors, or model.safetensors.index.json with the shards it lists. Each file's header is
    checked (`read_safetensors_header`); together they must declare some tensors, no tensor twice, and not far
    more bytes than config.json implies. When only pickled weights are present, the error says why they are
    refused and how to convert them.
    """
    folder = Path(folder)
    single = folder / MODEL_SAFETENSORS
    index = folder / MODEL_SAFETENSORS_INDEX
    if single.is_file():
        files = [single]
    elif index.is_file():
        names = _shard_names(index)
        bad = [n for n in names if not n.endswith(".safetensors") or any(c in n for c in "/\\\0")]
        missing = [n for n in names if n not in bad and not (folder / n).is_file()]
        if missing or bad:
            listed = ", ".join(_shown(n, 60) for n in (missing + bad)[:5]) + (", ..." if len(missing + bad) > 5 else "")
            raise RunFormatError(f"{_where(index)}: lists shards that are missing or not safetensors files in this folder: {listed}")
        files = [folder / name for name in names]
    else:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
        if pickles:
            raise RunFormatError(
                f"{_where(folder)} holds pickled weights ({', '.join(_shown(name, 60) for name in pickles[:5])}) and no model.safetensors. "
                "rlhf-lens never loads pickles: unpickling can run arbitrary code. To convert, in an "
                "environment where you trust the file, load the model yourself "
                "(AutoModel...from_pretrained(folder)) and save it with model.save_pretrained(folder), "
                "which writes model.safetensors."
            )
        raise RunFormatError(
            f"{_where(folder)} has no model.safetensors (nor {MODEL_SAFETENSORS_INDEX}); the checkpoint is incomplete or not a model folder"
        )
    declared = {path: read_safetensors_header(path) for path in files}
    owner: dict[str, Path] = {}
    for path, summary in declared.items():
        for name in summary.names:
            if name in owner:
                raise RunFormatError(
                    f"{_where(path)}: tensor {_shown(name)} also appears in {owner[name].name}; a loader would silently "
                    f"keep one of the two. It will not be loaded; {_RESAVE}."
                )
            owner[name] = path
    if not owner:
        raise RunFormatError(f"{_where(files[0])} declares no tensors; the weights are missing. It will not be loaded; {_RESAVE}.")
    _check_against_config(folder, declared)
    return files


def weights_sha256(folder: str | os.PathLike[str]) -> str:
    """sha256 of model.safetensors; for a sharded model, of the lines "<shard> <sha256>\\n" in name order."""
    files = safetensors_weight_files(folder)
    if len(files) == 1 and files[0].name == MODEL_SAFETENSORS:
        return sha256_file(files[0])
    import hashlib

    lines = "".join(f"{f.name} {sha256_file(f)}\n" for f in files)
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def read_weights(folder: str | os.PathLike[str]) -> dict:
    """Every tensor of an HF folder's vetted safetensors weight files, by name, on the CPU (no model is built):
    {name: torch.Tensor}. Vetting refuses a name held by two shards before anything is read."""
    from safetensors.torch import load_file

    tensors: dict = {}
    for path in safetensors_weight_files(folder):
        tensors.update(load_file(path, device="cpu"))
    return tensors
