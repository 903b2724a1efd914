"""The structure of a model's outputs: one tensor, a list, or a dict of named outputs, each with
its own per-sample shape.

Every curvature works on the outputs flattened per sample and concatenated, f(x) ∈ R^K with
K = Σ_i K_i (``tf.nest`` order: a list in order, a dict by sorted name; an output of shape
(T, C) per sample — a value per token, per pixel — contributes K_i = T·C, row-major). An
:class:`OutputLayout` remembers the structure so that targets given per output are flattened
the same way and predictions come back the way the model returns them: a dict by name for a
model with named outputs, (N, T, C) for an output per position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf


@dataclass(frozen=True)
class OutputLayout:
    """kind : "single", "list" or "dict"; names : one per output (dict keys, or "output_i");
    sizes : K_i, the flattened size of each output per sample; shapes : each output's
    per-sample shape (default: (K_i,))."""

    kind: str
    names: tuple[str, ...]
    sizes: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self):
        if self.shapes is None:
            object.__setattr__(self, "shapes", tuple((int(s),) for s in self.sizes))

    @classmethod
    def of(cls, out) -> OutputLayout:
        """The layout of a model output (a tensor, or a list/dict of tensors)."""
        parts = tf.nest.flatten(out)
        shapes = tuple(tuple(int(d) for d in p.shape[1:]) or (1,) for p in parts)
        sizes = tuple(int(np.prod(s)) for s in shapes)
        if isinstance(out, dict):
            return cls("dict", tuple(sorted(str(k) for k in out)), sizes, shapes)
        if isinstance(out, list | tuple) and len(parts) > 1:
            return cls("list", tuple(f"output_{i}" for i in range(len(parts))), sizes, shapes)
        return cls("single", ("output",), sizes[:1] or (0,), shapes[:1] or ((0,),))

    @property
    def n_outputs(self) -> int:
        return int(sum(self.sizes))

    @property
    def heads(self) -> tuple[tuple[int, int], ...]:
        """(start, stop) of each output in the flattened K."""
        stops = np.cumsum(self.sizes)
        return tuple((int(b - s), int(b)) for s, b in zip(self.sizes, stops, strict=True))

    def positions(self, i: int) -> int:
        """How many positions output i has per sample (T for a (T, C) output; 1 for (C,))."""
        shape = self.shapes[i]
        return int(np.prod(shape[:-1])) if len(shape) > 1 else 1

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
        if self.kind == "list" and isinstance(y, dict):  # a list of named outputs, by name
            missing = [n for n in self.names if n not in y]
            unknown = [k for k in y if k not in self.names]
            if missing or unknown:
                raise ValueError(
                    f"{name} must have one entry per model output {list(self.names)}: "
                    + (f"missing {missing}" if missing else f"unknown {unknown}")
                )
            return [y[n] for n in self.names]
        if isinstance(y, dict | list | tuple) and self.kind == "single" and isinstance(y, dict):
            raise ValueError(f"{name} is a dict but the model has a single output")
        return [y]

    def unflatten(self, arr):
        """(N, K) → the model's structure of (N, *shape_i) arrays (a single output of shape
        (K,) stays (N, K))."""
        parts = [
            arr[..., s:e].reshape(arr.shape[:-1] + shape)
            for (s, e), shape in zip(self.heads, self.shapes, strict=True)
        ]
        if self.kind == "single":
            return parts[0]
        if self.kind == "dict":
            return dict(zip(self.names, parts, strict=True))
        return parts

    def describe(self) -> dict:
        """A JSON-able description (for saving); :meth:`from_description` reads it back."""
        return {
            "kind": self.kind,
            "names": list(self.names),
            "sizes": list(self.sizes),
            "shapes": [list(s) for s in self.shapes],
        }

    @classmethod
    def from_description(cls, d: dict) -> OutputLayout:
        shapes = d.get("shapes")  # absent from files written before outputs per position
        return cls(
            d["kind"],
            tuple(d["names"]),
            tuple(d["sizes"]),
            None if shapes is None else tuple(tuple(s) for s in shapes),
        )
