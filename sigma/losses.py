"""Keras losses whose data term the Laplace approximation and the evidence know.

:class:`GaussianNLL` is the training loss of a heteroscedastic model
(``Laplace(..., likelihood="heteroscedastic")``, :class:`sigma.likelihoods.Heteroscedastic`):
per sample, the Gaussian negative log-likelihood summed over the K targets, so Keras' mean
over the batch is E/N — the scale :class:`sigma.EvidenceCallback` gives its penalty
(α_g/(2N) ‖w_g‖²).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from sigma.likelihoods import HALF_LOG_2PI, Heteroscedastic


@keras.saving.register_keras_serializable(package="sigma")
class GaussianNLL(keras.losses.Loss):
    """Σ_k ½ ln 2π + ½ ln σ²_k + (t_k − μ_k)²/(2σ²_k) per sample, from outputs (B, 2K) in
    ``parameterisation`` ("mean_logvar": [μ | ln σ²]; "natural": [μ/σ² | −ln σ²]) and
    targets (B, K) (or (B,) for K = 1). Returns (B,); reduced by Keras (mean over the batch).
    """

    def __init__(self, parameterisation: str = "mean_logvar", name: str = "gaussian_nll", **kw):
        super().__init__(name=name, **kw)
        self.likelihood = Heteroscedastic(parameterisation)
        self.parameterisation = parameterisation

    def call(self, y_true, y_pred):
        mean, logvar = self.likelihood.moments(y_pred)
        t = tf.cast(y_true, mean.dtype)
        t = tf.reshape(t, tf.shape(mean))
        nll = HALF_LOG_2PI + 0.5 * logvar + 0.5 * tf.square(t - mean) * tf.exp(-logvar)
        return tf.reduce_sum(nll, axis=-1)

    def get_config(self):
        return {**super().get_config(), "parameterisation": self.parameterisation}


def compiled_loss(model):
    """The single loss ``model`` was compiled with (Keras' ``model.loss``: a string, a Loss or
    a function; one entry of a list or dict of one), or None."""
    loss = getattr(model, "loss", None)
    if isinstance(loss, list | tuple) and len(loss) == 1:
        loss = loss[0]
    if isinstance(loss, dict) and len(loss) == 1:
        loss = next(iter(loss.values()))
    return loss
