"""Convert values (numbers, numpy/torch scalars, nested containers) to strict JSON values."""

from __future__ import annotations

import math
from typing import Any, Literal


def to_jsonable(value: Any, *, where: str, nonfinite: Literal["null", "error"] = "error") -> Any:
    """Return `value` as plain JSON data: dicts with str keys, lists, str, int, float, bool, None.

    Tuples become lists; numpy scalars and one-element tensors become Python
    numbers. NaN and infinities become None when `nonfinite="null"` and raise
    ValueError when `nonfinite="error"`. Anything else raises TypeError; `where`
    names the value in the message ("metrics['loss']", "config", ...).
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        if nonfinite == "null":
            return None
        raise ValueError(f"{where} is {value!r}, which JSON cannot store; use a finite number or None")
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a key {key!r} of type {type(key).__name__}; JSON keys must be str")
            out[key] = to_jsonable(item, where=f"{where}[{key!r}]", nonfinite=nonfinite)
        return out
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item, where=f"{where}[{i}]", nonfinite=nonfinite) for i, item in enumerate(value)]
    if _is_scalar_array(value):  # numpy scalars, 0-d arrays, one-element tensors
        return to_jsonable(value.item(), where=where, nonfinite=nonfinite)
    raise TypeError(
        f"{where} has type {type(value).__name__}, which cannot be written as JSON; "
        "use numbers, strings, bools, None, lists or dicts (call .tolist() on arrays and tensors)"
    )


def _is_scalar_array(value: Any) -> bool:
    if not (hasattr(value, "dtype") and callable(getattr(value, "item", None))):
        return False
    numel = getattr(value, "numel", None)  # torch
    if callable(numel):
        return numel() == 1
    return getattr(value, "ndim", None) == 0  # numpy
