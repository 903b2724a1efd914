"""Keras losses whose data term the Laplace approximation and the evidence know.

:class:`GaussianNLL` is the training loss of a heteroscedastic model
(``Laplace(..., likelihood="heteroscedastic")``, :class:`sigma.likelihoods.Heteroscedastic`):
per sample, the Gaussian negative log-likelihood summed over the K targets, so Keras' mean
over the batch is E/N — the scale :class:`sigma.EvidenceCallback` gives its penalty
(α_g/(2N) ‖w_g‖²).
"""

from __future__ import annotations

# defined beside the likelihood whose data term it is (its heads are read by that likelihood)
from sigma.likelihoods.heteroscedastic import GaussianNLL, compiled_loss

__all__ = ["GaussianNLL", "compiled_loss"]
