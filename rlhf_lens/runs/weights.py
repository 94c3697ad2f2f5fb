"""Find and vet the weight files of a checkpoint folder: safetensors only, pickles refused.

Loading a pickle (pytorch_model.bin, *.pt, *.pkl) runs arbitrary code, so a run
never contains one and nothing here ever opens one.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from .errors import RunFormatError
from .hashing import sha256_file
from .layout import MODEL_SAFETENSORS, MODEL_SAFETENSORS_INDEX

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_MAX_HEADER = 100 * 1024 * 1024


def check_safetensors_header(path: Path) -> None:
    """Raise RunFormatError unless `path` starts like a safetensors file (length + JSON header).

    Reads only the header, so a crafted file (e.g. a pickle renamed to
    model.safetensors) is rejected before any loader sees it.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        n = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
        ok = 2 <= n <= min(_MAX_HEADER, size - 8)
        header = f.read(n) if ok else b""
    if ok:
        try:
            ok = isinstance(json.loads(header.decode("utf-8")), dict)
        except (UnicodeDecodeError, ValueError):
            ok = False
    if not ok:
        raise RunFormatError(
            f"{path} is not a valid safetensors file (its header does not parse). It may be damaged, "
            "or another format renamed; it will not be loaded. Re-save the model with "
            "model.save_pretrained(folder) in a trusted environment."
        )


def safetensors_weight_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The safetensors weight files of an HF folder, vetted; RunFormatError if there are none.

    Accepts model.safetensors, or model.safetensors.index.json with the shards it lists.
    When only pickled weights are present, the error says why they are refused and
    how to convert them.
    """
    folder = Path(folder)
    single = folder / MODEL_SAFETENSORS
    index = folder / MODEL_SAFETENSORS_INDEX
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise RunFormatError(f"{index}: not a valid safetensors index ({err})") from err
        files = [folder / name for name in names]
        missing = [f.name for f in files if not f.is_file() or f.parent != folder]
        bad = [n for n in names if not n.endswith(".safetensors") or "/" in n or "\\" in n]
        if missing or bad:
            raise RunFormatError(f"{index}: lists shards that are missing or not safetensors: {missing + bad}")
    else:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
        if pickles:
            raise RunFormatError(
                f"{folder} holds pickled weights ({', '.join(pickles)}) and no model.safetensors. "
                "rlhf-lens never loads pickles: unpickling can run arbitrary code. To convert, in an "
                "environment where you trust the file, load the model yourself "
                "(AutoModel...from_pretrained(folder)) and save it with model.save_pretrained(folder), "
                "which writes model.safetensors."
            )
        raise RunFormatError(
            f"{folder} has no model.safetensors (nor {MODEL_SAFETENSORS_INDEX}); the checkpoint is incomplete or not a model folder"
        )
    for f in files:
        check_safetensors_header(f)
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
    {name: torch.Tensor}. A name held by two shards is a RunFormatError."""
    from safetensors.torch import load_file

    tensors: dict = {}
    for path in safetensors_weight_files(folder):
        shard = load_file(path, device="cpu")
        clash = sorted(set(shard) & set(tensors))
        if clash:
            raise RunFormatError(f"{path}: tensors {clash[:5]} also appear in another shard of {folder}")
        tensors.update(shard)
    return tensors
