"""Which weights the posterior covers (``Laplace(..., weights=...)``), apart from how its
curvature is stored (``structure=``).

The package's weight vector is ``model.trainable_variables``, each flattened row-major,
concatenated (:mod:`sigma.params`; length P). A :class:`Selection` picks P_s ≤ P of them; the
posterior is then N(w*_s, A_s⁻¹) over those, every other weight held at its trained value
(a subnetwork Laplace; Daxberger et al. 2021). The curvature, the prior, the evidence and the
predictive all live on the selected weights, in package order.

``weights=`` takes

* ``"all"`` — every trainable weight (the default);
* ``"last_layer"`` — the trainable variables of the model's last Dense layer (kernel and bias;
  for a LoRA-enabled layer its adapters and bias);
* a list of variables — each one of ``model.trainable_variables`` (e.g. a layer's
  ``trainable_variables``, or Keras' LoRA adapters ``lora_kernel_a``, ``lora_kernel_b``);
* a boolean mask per variable — a list with one entry per trainable variable, each a boolean
  array of the variable's shape (or a plain ``True``/``False`` for all or none of it), or a
  dict ``{variable: mask}``.
"""

from __future__ import annotations

import hashlib

import keras
import numpy as np

from sigma import keras_compat

KINDS = ("all", "last_layer")


class Selection:
    """The selected weights of a model.

    parts : ((position in ``model.trainable_variables``, flat indices (n,) int64 or None for
        the whole variable), ...) in package order.
    sizes : the number of selected weights of each part.
    index : (P_s,) positions of the selected weights in the full weight vector (P,).
    kind : "all", "last_layer", "variables" or "mask" (how it was asked for).
    """

    def __init__(self, kind: str, parts, variable_sizes):
        self.kind = kind
        self.parts = tuple(
            (int(i), None if c is None else np.asarray(c, np.int64)) for i, c in parts
        )
        self.variable_sizes = tuple(int(s) for s in variable_sizes)
        self.sizes = tuple(
            self.variable_sizes[i] if c is None else int(c.size) for i, c in self.parts
        )
        offsets = np.concatenate([[0], np.cumsum(self.variable_sizes)]).astype(np.int64)
        pieces = [
            np.arange(offsets[i], offsets[i + 1]) if c is None else offsets[i] + c
            for i, c in self.parts
        ]
        self.index = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
        digest = hashlib.sha256(self.index.tobytes()).hexdigest()[:16]
        self.key = (len(self.variable_sizes), digest)

    @property
    def n_params(self) -> int:
        """P_s, the number of selected weights."""
        return int(self.index.size)

    @property
    def full(self) -> bool:
        """Every trainable weight, in order: the engine of the whole model serves it."""
        return self.n_params == sum(self.variable_sizes)

    def columns(self) -> dict:
        """{position: flat indices or None} of the selected variables."""
        return dict(self.parts)

    def variables(self, model) -> list:
        """The selected variables (each whole or in part), in package order."""
        tv = model.trainable_variables
        return [tv[i] for i, _ in self.parts]

    def describe(self) -> dict:
        """JSON-able: the kind and, per selected variable, its position and flat indices."""
        return {
            "kind": self.kind,
            "parts": [[i, None if c is None else c.tolist()] for i, c in self.parts],
        }

    def __repr__(self):
        return f"Selection({self.kind!r}, P={self.n_params} of {sum(self.variable_sizes)})"


def _sizes(model) -> list[int]:
    return [int(np.prod(v.shape)) for v in model.trainable_variables]


def from_description(model, description: dict) -> Selection:
    """The :class:`Selection` :meth:`Selection.describe` described, for ``model`` (ValueError
    when its trainable variables no longer have those positions and sizes)."""
    sizes = _sizes(model)
    parts = description["parts"]
    for i, cols in parts:
        if not 0 <= int(i) < len(sizes) or (cols is not None and max(cols, default=-1) >= sizes[i]):
            raise ValueError(
                "the model's trainable variables do not match the saved selection of weights"
            )
    return Selection(description["kind"], parts, sizes)


def from_index(model, index, kind: str = "mask") -> Selection:
    """The :class:`Selection` of the weights at positions ``index`` (P_s,) of the model's full
    weight vector (increasing; as :attr:`Selection.index`); ValueError when they do not fit."""
    sizes = _sizes(model)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    index = np.asarray(index, np.int64).ravel()
    if index.size == 0 or index[0] < 0 or index[-1] >= offsets[-1] or np.any(np.diff(index) <= 0):
        raise ValueError(
            f"the saved selection of weights does not fit this model's {offsets[-1]} weights"
        )
    parts = []
    for i, size in enumerate(sizes):
        lo, hi = np.searchsorted(index, [offsets[i], offsets[i + 1]])
        if hi - lo == size:
            parts.append((i, None))
        elif hi > lo:
            parts.append((i, index[lo:hi] - offsets[i]))
    return Selection(kind, parts, sizes)


def final_dense(model) -> keras.layers.Dense:
    """The model's last Dense layer with trainable weights (ValueError when there is none)."""
    layers = keras_compat.layers(model)
    dense = [la for la in layers if isinstance(la, keras.layers.Dense)]
    if not dense:
        raise ValueError(
            "weights='last_layer' needs a model with a keras Dense layer (its last one is the "
            "last layer)"
        )
    try:
        n_outputs = len(model.outputs or [None])
    except (AttributeError, ValueError):  # a subclassed model declares none
        n_outputs = 1
    if n_outputs > 1:
        raise ValueError(
            f"weights='last_layer' is ambiguous for a model with {n_outputs} outputs (each has "
            "its own last layer): list the variables of the heads, e.g. weights=[*model."
            "get_layer(name).trainable_variables, ...]"
        )
    layer = dense[-1]
    if not layer.trainable_variables:
        raise ValueError(
            f"weights='last_layer': the last Dense layer {layer.name!r} has no trainable "
            "weights (layer.trainable is False)"
        )
    return layer


def select(model, weights="all") -> Selection:
    """The :class:`Selection` for ``weights`` (see the module docstring) on ``model``.

    Raises ValueError naming ``weights`` for anything else: a variable that is not one of the
    model's trainable variables, a mask of the wrong shape or type, or nothing selected (an
    empty list, or masks that are all False), saying what to pass instead.
    """
    tv = model.trainable_variables
    sizes = _sizes(model)
    pos = {id(v): i for i, v in enumerate(tv)}
    if weights is None or (isinstance(weights, str) and weights == "all"):
        return Selection("all", [(i, None) for i in range(len(tv))], sizes)
    if isinstance(weights, str):
        if weights == "last_layer":
            layer = final_dense(model)
            chosen = sorted(pos[id(v)] for v in layer.trainable_variables if id(v) in pos)
            return Selection("last_layer", [(i, None) for i in chosen], sizes)
        raise ValueError(
            f"weights must be one of {KINDS}, a list of the model's trainable variables or a "
            f"boolean mask per trainable variable, got {weights!r}"
        )
    if isinstance(weights, dict):
        masks = {}
        for var, mask in weights.items():
            if id(var) not in pos:
                raise ValueError(
                    f"weights: {_name(var)} is not one of the model's trainable variables"
                )
            masks[pos[id(var)]] = mask
        return _from_masks(masks, tv, sizes)
    if isinstance(weights, list | tuple):
        items = list(weights)
        if not items:
            raise ValueError(
                f"weights is an empty {type(weights).__name__}: it selects no weight. Pass "
                "weights='all' (the default) for every trainable weight, 'last_layer', a list "
                "of some of the model's trainable variables, or one boolean mask per "
                f"trainable variable ({len(tv)}) with at least one True entry"
            )
        if all(_is_variable(v) for v in items):
            chosen = []
            for var in items:
                if id(var) not in pos:
                    raise ValueError(
                        f"weights: {_name(var)} is not one of the model's trainable variables "
                        f"(model.trainable_variables; a frozen variable has no posterior)"
                    )
                chosen.append(pos[id(var)])
            if len(set(chosen)) != len(chosen):
                raise ValueError("weights lists a variable more than once")
            return Selection("variables", [(i, None) for i in sorted(chosen)], sizes)
        if len(items) != len(tv):
            raise ValueError(
                f"weights as masks must hold one boolean mask per trainable variable "
                f"({len(tv)}), got {len(items)} entries"
            )
        return _from_masks(dict(enumerate(items)), tv, sizes)
    raise ValueError(
        f"weights must be one of {KINDS}, a list of the model's trainable variables or a "
        f"boolean mask per trainable variable, got {type(weights).__name__}"
    )


def _is_variable(v) -> bool:
    return isinstance(v, keras.Variable) or hasattr(v, "assign") and hasattr(v, "shape")


def _name(var) -> str:
    return repr(str(getattr(var, "path", None) or getattr(var, "name", type(var).__name__)))


def _from_masks(masks: dict, tv, sizes) -> Selection:
    parts = []
    for i in sorted(masks):
        mask = masks[i]
        if isinstance(mask, bool | np.bool_):
            if mask:
                parts.append((i, None))
            continue
        m = np.asarray(mask)
        if m.dtype != np.bool_:
            raise ValueError(
                f"weights: the mask of {_name(tv[i])} must be boolean (or True/False), got "
                f"dtype {m.dtype}"
            )
        if m.shape != tuple(tv[i].shape):
            raise ValueError(
                f"weights: the mask of {_name(tv[i])} must have the variable's shape "
                f"{tuple(tv[i].shape)}, got {m.shape}"
            )
        flat = np.flatnonzero(m.ravel())
        if flat.size == sizes[i]:
            parts.append((i, None))
        elif flat.size:
            parts.append((i, flat))
    if not parts:
        raise ValueError(
            "weights selects no weight (every mask is False): give at least one True entry, "
            "or weights='all' (the default) for every trainable weight"
        )
    return Selection("mask", parts, sizes)
