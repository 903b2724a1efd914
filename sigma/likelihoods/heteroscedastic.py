"""Gaussian regression with the model's own noise variance σ²(x): 2K outputs per sample,
[mean part | variance part] (Immer et al. 2023). No β: the noise is the model's."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sigma._checks import as_array
from sigma.likelihoods.base import HALF_LOG_2PI, Likelihood, check_rows_cols

PARAMETERISATIONS = ("mean_logvar", "natural")


class Heteroscedastic(Likelihood):
    """Gaussian regression with an input-dependent noise variance σ²(x), read from the model.

    The model has 2K outputs per sample (one output of width 2K, or a list of two outputs of
    width K each, in this order), split [first K | last K] into two heads per target:

    * ``parameterisation="mean_logvar"`` (default): f = [μ | s], s = ln σ² (a linear head:
      σ² = eˢ is positive and finite for every finite s);
    * ``parameterisation="natural"``: f = [η₁ | r] with η₁ = μ/σ² the first natural
      parameter and r = ln(−2η₂) = −ln σ² (the log precision; η₂ = −1/(2σ²) = −eʳ/2 < 0).

    A head that outputs σ² itself (softplus, relu, a raw linear output) or η₂ directly can reach
    0, ∞ or the wrong sign and is not accepted (:func:`sigma.heteroscedastic.check_heads`).

    Data term (summed): E = Σ_n Σ_k ½ ln 2π + ½ ln σ²_nk + (t_nk − μ_nk)²/(2σ²_nk).
    The GGN's Λ_n is the Hessian of E in the natural parameters η = (μ/σ², −1/(2σ²)) — the
    covariance of the sufficient statistics (t, t²), positive definite, free of t —
    pulled back through the link η(f) (Immer et al. 2023), 2×2 per target:

        mean_logvar:  Λ = diag(1/σ², ½)                 L = diag(1/σ, 1/√2)
        natural:      Λ = [[σ², −μ], [−μ, μ²/σ² + ½]]    L = [[σ, 0], [−μ/σ, 1/√2]]

    (Λ = L Lᵀ, in the [mean part, variance part] coordinates of each target.) No β.
    Targets are (N, K) (or (N,) for K = 1); internally each head gets the target, (N, 2K).
    """

    name = "heteroscedastic"
    noise = False
    beta_message = (
        "beta has no meaning for likelihood='heteroscedastic': the noise variance is the "
        "model's own variance head σ²(x), not a precision β; leave beta at its default (1) "
        "and set or optimise alpha only"
    )

    def __init__(self, parameterisation: str = "mean_logvar"):
        if parameterisation not in PARAMETERISATIONS:
            raise ValueError(
                f"parameterisation must be one of {PARAMETERISATIONS}, got {parameterisation!r}"
            )
        self.parameterisation = parameterisation

    @property
    def key(self) -> tuple:
        return (self.name, self.parameterisation)

    def describe(self) -> dict:
        return {"name": self.name, "parameterisation": self.parameterisation}

    def moments(self, f):
        """(μ, ln σ²), each (B, K), from the outputs f (B, 2K); tensors or arrays."""
        k = f.shape[-1] // 2
        a, b = f[..., :k], f[..., k:]
        if self.parameterisation == "mean_logvar":
            return a, b
        exp = np.exp if isinstance(f, np.ndarray) else tf.exp
        return a * exp(-b), -b

    def data_error(self, f, t):
        """Σ of the Gaussian NLL ½ ln 2π + ½ ln σ² + (t − μ)²/(2σ²) (tensor, summed); t
        (B, 2K) or (B, K) (only its first K columns are read)."""
        k = f.shape[-1] // 2
        mean, logvar = self.moments(f)
        t = t[:, :k]
        nll = HALF_LOG_2PI + 0.5 * logvar + 0.5 * tf.square(t - mean) * tf.exp(-logvar)
        return tf.reduce_sum(nll)

    def hessian_sqrt(self, f):
        """L_n (B, 2K, 2K) with L Lᵀ = Λ_n (see the class docstring): per target k, the 2×2
        root on rows/columns (k, K + k)."""
        mean, logvar = self.moments(f)
        sd = tf.exp(0.5 * logvar)
        half = tf.fill(tf.shape(sd), tf.cast(np.sqrt(0.5), f.dtype))
        if self.parameterisation == "mean_logvar":
            return tf.linalg.diag(tf.concat([1.0 / sd, half], axis=1))
        top = tf.concat([tf.linalg.diag(sd), tf.zeros_like(tf.linalg.diag(sd))], axis=2)
        bottom = tf.concat([tf.linalg.diag(-mean / sd), tf.linalg.diag(half)], axis=2)
        return tf.concat([top, bottom], axis=1)

    def targets(self, y, n: int, k: int, name: str = "y", x_name: str = "x", layout=None):
        """Targets (n, k/2) (or (n,) for one target) as (n, k): each head's target is y."""
        if k % 2:
            raise ValueError(
                f"likelihood='heteroscedastic' needs 2K outputs per sample, [mean part | "
                f"variance part], got {k} outputs"
            )
        if isinstance(y, dict | list | tuple):
            raise ValueError(
                f"{name} for likelihood='heteroscedastic' must be one (N, K) array of targets "
                f"(K = {k // 2}), got a {type(y).__name__}"
            )
        arr = as_array(y, name, ndim=(1, 2))
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.shape[1] != k // 2 and arr.shape[0] == n:
            raise ValueError(
                f"{name} has {arr.shape[1]} columns but the model's {k} outputs are "
                f"{k // 2} targets' [mean | variance] heads: expected shape ({n}, {k // 2})"
            )
        check_rows_cols(arr, n, k // 2, name, x_name)
        return np.concatenate([arr, arr], axis=1)
