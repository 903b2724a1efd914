"""Priors over the weights: one prior precision α_g per group of weights (docs/math.md,
"Weight groups"; MacKay 1992 gave each layer's weights and biases their own).

    w_g ~ N(0, α_g⁻¹ I),   E_Wg = ½ w_gᵀ w_g,   A = D_α + β C,   D_α = diag(α_g on group g)

A :class:`Prior` assigns every weight the posterior covers (package order, see
:mod:`sigma.params`) to a group:

* ``"scalar"`` — one group, one α for all weights (the default);
* ``"layer"`` — one group per layer (a Dense layer's kernel and bias together);
* ``"variable"`` — one group per trainable variable (kernel and bias separately);
* an integer array (P,) of group ids 0 … G−1 — any grouping; one group per weight is
  automatic relevance determination (ARD).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sigma import keras_compat

KINDS = ("scalar", "layer", "variable")


@dataclass(frozen=True)
class Prior:
    """Groups of the posterior's weights that share a prior precision.

    groups : (P,) group id of each weight, 0 … G−1, every group non-empty.
    names : (G,) a name per group (layer names, variable paths, or "group g").
    kind : "scalar", "layer", "variable" or "groups" (given as an array).
    """

    groups: np.ndarray
    names: tuple[str, ...]
    kind: str

    @property
    def n_groups(self) -> int:
        return len(self.names)

    @property
    def sizes(self) -> np.ndarray:
        """P_g, the number of weights in each group, (G,)."""
        return np.bincount(self.groups, minlength=self.n_groups)

    @property
    def scalar(self) -> bool:
        return self.n_groups == 1

    def per_weight(self, alpha) -> float | np.ndarray:
        """α as the structures take it: a float for one group, else α_g of each weight (P,)."""
        alpha = np.asarray(alpha, np.float64)
        return float(alpha.reshape(-1)[0]) if self.scalar else alpha[self.groups]

    def weight_errors(self, w) -> np.ndarray:
        """E_Wg = ½ Σ_{p in g} w_p², (G,)."""
        return 0.5 * np.bincount(self.groups, weights=np.asarray(w, np.float64) ** 2,
                                 minlength=self.n_groups)  # fmt: skip

    def group_sums(self, values) -> np.ndarray:
        """Σ_{p in g} values_p for each group, (G,)."""
        return np.bincount(self.groups, weights=values, minlength=self.n_groups)


def build_prior(spec, variables, owners: dict, sizes=None) -> Prior:
    """The :class:`Prior` for ``spec`` over ``variables`` (the posterior's weights, in order).

    spec : "scalar", "layer", "variable", or an integer array (P,) of group ids 0 … G−1.
    variables : the variables the posterior covers, in package order.
    owners : {id(variable): name of the layer that owns it}.
    sizes : the number of weights the posterior covers in each variable (default: all of
        them; fewer for a variable selected in part, :mod:`sigma.weights`).
    Raises ValueError naming ``prior`` for anything else, a wrong length, a non-integer id or
    an empty group.
    """
    if sizes is None:
        sizes = [int(np.prod(v.shape)) for v in variables]
    sizes = [int(n) for n in sizes]
    p = int(sum(sizes))
    if isinstance(spec, str):
        if spec not in KINDS:
            raise ValueError(
                f"prior must be one of {KINDS} or an integer array of {p} group ids, got {spec!r}"
            )
        if spec == "scalar":
            return Prior(np.zeros(p, np.int64), ("all",), "scalar")
        labels = [owners.get(id(v), _path(v)) if spec == "layer" else _path(v) for v in variables]
        names = tuple(dict.fromkeys(labels))
        per_var = [names.index(label) for label in labels]
        return Prior(np.repeat(np.array(per_var, np.int64), sizes), names, spec)
    if isinstance(spec, bool) or spec is None or np.ndim(spec) != 1:
        raise ValueError(
            f"prior must be one of {KINDS} or an integer array of {p} group ids, got "
            f"{type(spec).__name__}"
            + (f" of shape {np.shape(spec)}" if hasattr(spec, "shape") else "")
        )
    groups = np.asarray(spec)
    if groups.dtype.kind == "b":  # two groups: False → 0, True → 1
        groups = groups.astype(np.int64)
    if groups.dtype.kind not in "iuf" or not np.all(np.isfinite(groups)):
        raise ValueError(
            f"prior as an array must hold finite integer group ids 0 … G−1, got dtype "
            f"{groups.dtype}" + ("" if groups.dtype.kind not in "iuf" else " with NaN or inf")
        )
    if groups.shape != (p,):
        raise ValueError(
            f"prior as an array must hold one group id per weight of the posterior, shape "
            f"({p},), got shape {groups.shape}"
        )
    if not (np.issubdtype(groups.dtype, np.integer) or np.all(groups == np.round(groups))):
        raise ValueError("prior as an array must hold integer group ids 0 … G−1")
    if groups.size and groups.max() >= p:
        raise ValueError(
            f"prior group ids must be < {p} (G ≤ P groups numbered 0 … G−1), got {groups.max()}"
        )
    groups = groups.astype(np.int64)
    if groups.min() < 0:
        raise ValueError(f"prior group ids must be ≥ 0, got {groups.min()}")
    used = np.bincount(groups)
    empty = np.flatnonzero(used == 0)
    if empty.size:
        raise ValueError(
            f"prior groups must be numbered 0 … G−1 without gaps: group {int(empty[0])} is "
            f"empty (ids run to {int(groups.max())})"
        )
    return Prior(groups, tuple(f"group {g}" for g in range(used.size)), "groups")


def _path(variable) -> str:
    return str(getattr(variable, "path", None) or variable.name)


def owners_of(model) -> dict:
    """{id(variable): layer label} for every trainable variable a layer of ``model`` owns (its
    Keras path, unique within the model: :func:`sigma.keras_compat.layer_labels`)."""
    owners = {}
    labels = keras_compat.layer_labels(model)
    for layer in keras_compat.layers(model, include_self=True):
        for v in keras_compat.own_variables(layer):
            owners.setdefault(id(v), labels[id(layer)])
    return owners
