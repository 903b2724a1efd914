"""NumPy values as JSON: the one converter the saved Laplace header (:mod:`sigma.saving`) and
the sweep records (:mod:`sigma.sweep.records`) share. Pure Python and NumPy (no TensorFlow),
so the sweep machinery may import it."""

from __future__ import annotations

import math
import os

import numpy as np


def to_jsonable(value, name: str = "value", *, what: str = "JSON"):
    """``value`` with NumPy arrays/scalars, tuples and paths turned into JSON types.

    Dict keys become strings; non-finite floats become ``None``. ``name`` is the key path used
    in the TypeError raised for anything else (e.g. a Keras model), ``what`` the destination
    it names.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, f"{name}[{k!r}]", what=what) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v, f"{name}[{i}]", what=what) for i, v in enumerate(value)]
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        arr = np.asarray(value)
        if arr.dtype.kind in "biuf":
            return to_jsonable(arr.tolist(), name, what=what)
    raise TypeError(f"{name} is a {type(value).__name__}, which cannot be stored in {what}")
