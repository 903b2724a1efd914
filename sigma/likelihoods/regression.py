"""Gaussian regression with a noise precision β: E_D = ½ Σ (f − t)², Λ = I (L = I)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sigma.likelihoods.base import Groups, Likelihood, flat_targets


class Regression(Likelihood):
    """t ~ N(f, β⁻¹) for every output value: one β for all outputs (every position of an
    output per position, every output of a model with several), or one β per output column
    with ``per_output=True``."""

    name = "regression"
    family = "Gaussian regression"  # a density of real targets, noise fixed or modelled
    noise = True

    def __init__(self, per_output: bool = False):
        self.per_output = bool(per_output)

    @property
    def key(self) -> tuple:
        return (self.name,)  # the curvature does not depend on the grouping of β

    def describe(self) -> dict:
        return {"name": self.name, "per_output": self.per_output}

    def with_beta(self, beta) -> Regression:
        return Regression(per_output=True) if np.ndim(beta) != 0 else self

    def regrouped(self, per_output: bool) -> Regression:
        return Regression(per_output=per_output)

    def groups(self, k: int) -> Groups:
        if not self.per_output:
            return Groups.one("noise", k, "noise")
        return Groups(tuple(f"output {i}" for i in range(k)), ("noise",) * k, np.arange(k))

    def data_error(self, f, t):
        """E_D = ½ Σ_n Σ_k (f_nk − t_nk)² (tensor, summed)."""
        return 0.5 * tf.reduce_sum(tf.square(f - t))

    def group_errors(self, f, t, groups: Groups):
        """½ Σ (f − t)² over each group's outputs, (G,)."""
        per_output = 0.5 * tf.reduce_sum(tf.square(f - t), axis=0)  # (K,)
        return tf.math.unsorted_segment_sum(per_output, groups.outputs, groups.n_groups)

    def targets(self, y, n: int, k: int, name: str = "y", x_name: str = "x", layout=None):
        """Targets (n, K): per output in its own shape ((N, K_i), (N, T, C) for an output per
        position, (N,) for one value), or one (N, K) array for all outputs."""
        parts = [y] if layout is None else layout.split(y, name)
        if layout is None:
            return flat_targets(y, n, (k,), name, x_name)
        if len(parts) > 1:
            return np.concatenate(
                [
                    flat_targets(p, n, shape, f"{name}[{label!r}]", x_name)
                    for p, shape, label in zip(parts, layout.shapes, layout.names, strict=True)
                ],
                axis=1,
            )
        shape = layout.shapes[0] if len(layout.shapes) == 1 else (k,)
        try:
            return flat_targets(parts[0], n, shape, name, x_name)
        except ValueError:
            if len(layout.shapes) == 1:
                raise
            return flat_targets(parts[0], n, (k,), name, x_name)  # one array for all outputs

    # -- behaviour ------------------------------------------------------------------------------
    def predictive(self, mean, second, *, noise_var, layout=None, noise=True, split=False, **_):
        """(mean, std), std² = 1/β + gᵀA⁻¹g (``noise=False``: gᵀA⁻¹g); ``split``: (mean, the
        noise's std 1/√β, the weights' std)."""
        shape = (lambda a: a) if layout is None else layout.unflatten
        if split:
            aleatoric = np.broadcast_to(np.sqrt(noise_var), mean.shape).copy()
            return shape(mean), shape(aleatoric), shape(np.sqrt(second))
        return shape(mean), shape(np.sqrt(second + (noise_var if noise else 0.0)))

    def score(self, prediction, y, metric: str) -> float:
        from sigma import metrics

        return metrics.gaussian_nll(*prediction, y)

    conformal = "interval"

    def penalty_scale(self, n: int, k: int, beta: float) -> float:
        return 1.0 / (float(beta) * n * k)

    def serve(self, mean, var, noise):
        return {"mean": mean, "std": tf.sqrt(var + noise)}
