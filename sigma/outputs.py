"""The structure of a model's outputs: one tensor, a list, or a dict of named outputs.

Every curvature works on the outputs flattened per sample and concatenated, f(x) ∈ R^K with
K = Σ_i K_i (``tf.nest`` order: a list in order, a dict by sorted name). An
:class:`OutputLayout` remembers the structure so that targets given per output are flattened
the same way and predictions come back the way the model returns them (a dict by name for a
model with named outputs). For classification each output is its own softmax head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf


@dataclass(frozen=True)
class OutputLayout:
    """kind : "single", "list" or "dict"; names : one per output (dict keys, or "output_i");
    sizes : K_i, the flattened size of each output per sample."""

    kind: str
    names: tuple[str, ...]
    sizes: tuple[int, ...]

    @classmethod
    def of(cls, out) -> OutputLayout:
        """The layout of a model output (a tensor, or a list/dict of tensors)."""
        parts = tf.nest.flatten(out)
        sizes = tuple(int(np.prod(p.shape[1:])) for p in parts)
        if isinstance(out, dict):
            return cls("dict", tuple(sorted(str(k) for k in out)), sizes)
        if isinstance(out, list | tuple) and len(parts) > 1:
            return cls("list", tuple(f"output_{i}" for i in range(len(parts))), sizes)
        return cls("single", ("output",), sizes[:1] if sizes else (0,))

    @property
    def n_outputs(self) -> int:
        return int(sum(self.sizes))

    @property
    def heads(self) -> tuple[tuple[int, int], ...]:
        """(start, stop) of each output in the flattened K."""
        stops = np.cumsum(self.sizes)
        return tuple((int(b - s), int(b)) for s, b in zip(self.sizes, stops, strict=True))

    def split(self, y, name: str = "y") -> list:
        """Targets given per output (a list, or a dict by name) as a list in layout order;
        anything else is one array for all outputs together."""
        if self.kind == "dict" and isinstance(y, dict):
            missing = [n for n in self.names if n not in y]
            unknown = [k for k in y if k not in self.names]
            if missing or unknown:
                raise ValueError(
                    f"{name} must have one entry per model output {list(self.names)}: "
                    + (f"missing {missing}" if missing else f"unknown {unknown}")
                )
            return [y[n] for n in self.names]
        if self.kind != "single" and isinstance(y, list | tuple) and len(y) == len(self.sizes):
            return list(y)
        if isinstance(y, dict | list | tuple) and self.kind == "single" and isinstance(y, dict):
            raise ValueError(f"{name} is a dict but the model has a single output")
        return [y]

    def unflatten(self, arr):
        """(N, K) → the model's structure of (N, K_i) arrays (a single output stays (N, K))."""
        if self.kind == "single":
            return arr
        parts = [arr[..., s:e] for s, e in self.heads]
        if self.kind == "dict":
            return dict(zip(self.names, parts, strict=True))
        return parts
