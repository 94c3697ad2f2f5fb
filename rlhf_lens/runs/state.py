"""Training state (optimizer, scheduler, RNG, data position) as safetensors + JSON, never pickle.

`save_state(dir, state)` splits a nested structure into
- state.safetensors: every tensor, under its path key ("optimizer/state/0/exp_avg"), and
- state.json: the structure itself, with markers where the binary values were.

Markers in state.json (a JSON object with one "@..." key):
- {"@tensor": key, "dtype", "shape"}        a torch tensor stored in state.safetensors
- {"@ndarray": key, "dtype", "shape"}       a numpy array, stored as its raw bytes (uint8);
                                            "scalar": true marks a numpy scalar
- {"@tuple": [...]}                          a tuple (random.getstate() is made of them)
- {"@dict": [[key, value], ...]}             a dict whose keys are not all plain strings
                                            (optimizer state uses int keys); keys keep their type
- {"@float": "nan" | "inf" | "-inf"}         a non-finite float
A dict whose keys are all strings not starting with "@" is a plain JSON object.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes, atomic_write_json
from .errors import RunFormatError
from .layout import state_paths
from .weights import check_safetensors_header

STATE_FORMAT = "rlhf-lens-state"
STATE_VERSION = 1

_SUPPORTED = "torch tensors, numpy arrays and scalars, int, float, str, bool, None, and dicts, lists and tuples of these"


class _Encoder:
    def __init__(self) -> None:
        self.tensors: dict[str, Any] = {}

    def _key(self, path: str) -> str:
        key = path or "root"
        n = 1
        while key in self.tensors:
            n += 1
            key = f"{path or 'root'}#{n}"
        return key

    def encode(self, value: Any, path: str, *, as_key: bool = False) -> Any:
        import numpy as np
        import torch

        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            if math.isfinite(value):
                return value
            return {"@float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
        if isinstance(value, tuple):
            return {"@tuple": [self.encode(v, f"{path}/{i}".lstrip("/"), as_key=as_key) for i, v in enumerate(value)]}
        if as_key:
            raise TypeError(
                f"save_state: dict key at '{path}' has type {type(value).__name__}; "
                "keys must be str, int, float, bool, None or tuples of these"
            )
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("@") for k in value):
                return {k: self.encode(v, f"{path}/{k}".lstrip("/")) for k, v in value.items()}
            return {"@dict": [[self.encode(k, path, as_key=True), self.encode(v, f"{path}/{k}".lstrip("/"))] for k, v in value.items()]}
        if isinstance(value, list):
            return [self.encode(v, f"{path}/{i}".lstrip("/")) for i, v in enumerate(value)]
        if isinstance(value, torch.Tensor):
            if value.layout != torch.strided:
                raise TypeError(f"save_state: tensor at '{path}' has layout {value.layout}; convert it to dense")
            key = self._key(path)
            # clone: safetensors refuses tensors that share storage
            self.tensors[key] = value.detach().to("cpu").contiguous().clone()
            return {"@tensor": key, "dtype": str(value.dtype).removeprefix("torch."), "shape": list(value.shape)}
        if isinstance(value, (np.ndarray, np.generic)):
            array = np.asarray(value)
            if array.dtype.kind not in "biufc":
                raise TypeError(f"save_state: numpy value at '{path}' has dtype {array.dtype}; only numeric and bool arrays can be stored")
            key = self._key(path)
            raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8).copy()
            self.tensors[key] = torch.from_numpy(raw)
            marker = {"@ndarray": key, "dtype": array.dtype.str, "shape": list(array.shape)}
            if isinstance(value, np.generic):
                marker["scalar"] = True
            return marker
        raise TypeError(f"save_state: cannot store {type(value).__name__} at '{path or 'root'}'; supported: {_SUPPORTED}")


def save_state(directory: str | os.PathLike[str], state: Any) -> None:
    """Write `state` to <directory>/state.safetensors and <directory>/state.json (in that order)."""
    from safetensors.torch import save as save_tensors

    encoder = _Encoder()
    skeleton = encoder.encode(state, "")
    tensor_path, json_path = state_paths(directory)
    atomic_write_bytes(tensor_path, save_tensors(encoder.tensors, metadata={"format": STATE_FORMAT}))
    atomic_write_json(json_path, {"format": STATE_FORMAT, "version": STATE_VERSION, "state": skeleton})


class _Decoder:
    def __init__(self, tensors: dict[str, Any], source: Path) -> None:
        self.tensors = tensors
        self.source = source

    def _tensor(self, key: Any) -> Any:
        if key not in self.tensors:
            raise RunFormatError(f"{self.source}: refers to tensor {key!r}, which is missing from state.safetensors")
        return self.tensors[key]

    def decode(self, value: Any) -> Any:
        import numpy as np

        if isinstance(value, list):
            return [self.decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "@tensor" in value:
            return self._tensor(value["@tensor"])
        if "@ndarray" in value:
            raw = self._tensor(value["@ndarray"]).numpy().tobytes()
            array = np.frombuffer(raw, dtype=np.dtype(value["dtype"])).reshape(value["shape"]).copy()
            return array[()] if value.get("scalar") else array
        if "@tuple" in value:
            return tuple(self.decode(v) for v in value["@tuple"])
        if "@dict" in value:
            return {self._key(k): self.decode(v) for k, v in value["@dict"]}
        if "@float" in value:
            return float(value["@float"])
        return {k: self.decode(v) for k, v in value.items()}

    def _key(self, value: Any) -> Any:
        if isinstance(value, dict) and "@tuple" in value:
            return tuple(self._key(v) for v in value["@tuple"])
        if isinstance(value, dict) and "@float" in value:
            return float(value["@float"])
        return value


def load_state(directory: str | os.PathLike[str]) -> Any:
    """Read what `save_state(directory, state)` wrote; tensors come back on the CPU."""
    from safetensors.torch import load_file

    tensor_path, json_path = state_paths(directory)
    for path in (json_path, tensor_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: this checkpoint was saved without training state")
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RunFormatError(f"{json_path}, line {err.lineno}: invalid JSON ({err.msg})") from err
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT or "state" not in doc:
        raise RunFormatError(f'{json_path}: not an rlhf-lens state file (expected "format": {STATE_FORMAT!r})')
    if doc.get("version") != STATE_VERSION:
        raise RunFormatError(
            f"{json_path}: state version {doc.get('version')!r}, this rlhf-lens reads version {STATE_VERSION}; "
            "upgrade rlhf-lens (pip install -U rlhf-lens)"
        )
    check_safetensors_header(tensor_path)  # a header that lies is refused before anything is allocated
    try:
        tensors = load_file(tensor_path)
    except Exception as err:  # safetensors raises its own error types for damaged headers
        raise RunFormatError(f"{tensor_path}: not a readable safetensors file ({err})") from err
    return _Decoder(tensors, json_path).decode(doc["state"])
