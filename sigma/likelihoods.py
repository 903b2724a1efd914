"""Likelihoods: the data term of the loss and its Hessian with respect to the outputs.

For a likelihood with data term E(f, t) (summed over samples), the generalised Gauss–Newton
matrix is G = Σ_n J_nᵀ Λ_n J_n with Λ_n = ∂²E/∂f² at f(x_n) (MATH.md). Each likelihood gives
a square root L_n with Λ_n = L_n L_nᵀ, so every curvature structure can work with the
"sensitivities" L_nᵀ J_n and never needs Λ itself.

* regression: E_D = ½ Σ (f − t)², Λ = I (so L = I), precision β scales it.
* classification: E = −Σ_n Σ_k t_nk log softmax(f_n)_k on logits f, Λ = diag(p) − p pᵀ,
  L = diag(√p) − p √pᵀ (one checks L Lᵀ = diag(p) − 2 p pᵀ + p pᵀ Σ p = Λ). No β (fixed to 1).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sigma._checks import as_array


class Regression:
    name = "regression"
    has_beta = True

    def data_error(self, f, t):
        """E_D = ½ Σ_n Σ_k (f_nk − t_nk)² (tensor, summed)."""
        return 0.5 * tf.reduce_sum(tf.square(f - t))

    def hessian_sqrt(self, f):
        """None stands for L = I (Λ = I)."""
        return None

    def targets(self, y, n: int, k: int, name: str = "y", x_name: str = "x") -> np.ndarray:
        """Targets of shape (n, k); a 1-D y is accepted when k == 1."""
        arr = as_array(y, name, ndim=(1, 2))
        if arr.ndim == 1:
            if k != 1:
                raise ValueError(
                    f"{name} must have shape (N, K) = ({n}, {k}) to match the model's {k} "
                    f"outputs, got shape {arr.shape}"
                )
            arr = arr[:, None]
        _check_rows_cols(arr, n, k, name, x_name)
        return arr


class Classification:
    name = "classification"
    has_beta = False

    def data_error(self, f, t):
        """Cross-entropy −Σ t log softmax(f) on logits f (tensor, summed)."""
        return -tf.reduce_sum(t * tf.nn.log_softmax(f, axis=-1))

    def hessian_sqrt(self, f):
        """L_n = diag(√p_n) − p_n √p_nᵀ, shape (B, K, K), with L Lᵀ = diag(p) − p pᵀ."""
        p = tf.nn.softmax(f, axis=-1)
        sp = tf.sqrt(p)
        return tf.linalg.diag(sp) - p[:, :, None] * sp[:, None, :]

    def targets(self, y, n: int, k: int, name: str = "y", x_name: str = "x") -> np.ndarray:
        """One-hot (n, k) targets, or integer labels (n,) in [0, k) converted to one-hot."""
        arr = as_array(y, name, ndim=(1, 2))
        if arr.ndim == 1:
            if not np.all(arr == np.round(arr)) or (arr.size and (arr.min() < 0 or arr.max() >= k)):
                raise ValueError(
                    f"{name} as a 1-D array must hold integer class labels in [0, {k}), got "
                    f"values in [{arr.min()}, {arr.max()}]"
                )
            arr = np.eye(k)[arr.astype(int)]
        _check_rows_cols(arr, n, k, name, x_name)
        if not (np.all((arr == 0) | (arr == 1)) and np.all(arr.sum(axis=1) == 1)):
            raise ValueError(
                f"{name} must be one-hot (each row a single 1, zeros elsewhere) or integer "
                "labels for likelihood='classification'"
            )
        return arr


def _check_rows_cols(arr, n, k, name, x_name="x"):
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} rows but {x_name} has {n}: they must match")
    if arr.shape[1] != k:
        raise ValueError(
            f"{name} has {arr.shape[1]} columns but the model has {k} outputs: "
            f"expected shape ({n}, {k})"
        )


LIKELIHOODS = {"regression": Regression, "classification": Classification}


def get(likelihood) -> Regression | Classification:
    """A likelihood object from its name (or the object itself)."""
    if isinstance(likelihood, Regression | Classification):
        return likelihood
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {tuple(LIKELIHOODS)}, got {likelihood!r}")
    return LIKELIHOODS[likelihood]()
