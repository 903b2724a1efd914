"""The weight vector w: ``model.trainable_variables``, each flattened row-major, concatenated.

This fixes the order of the P weights in every (P,), (P, P) and (N, K, P) array of the package.
The curvature engine (:mod:`sigma.curvature.engine`) differentiates the model as a pure
function of this one vector.
"""

from __future__ import annotations

import numpy as np


def num_params(model) -> int:
    """P, the number of trainable weights."""
    return int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))


def flat_weights(model) -> np.ndarray:
    """The current weights as a (P,) array in the package's order (model dtype)."""
    return np.concatenate([np.ravel(v.numpy()) for v in model.trainable_variables])


def set_flat_weights(model, w) -> None:
    """Assign a (P,) vector back to ``model.trainable_variables``."""
    w = np.asarray(w)
    if w.shape != (num_params(model),):
        raise ValueError(f"w must have shape ({num_params(model)},), got {w.shape}")
    offset = 0
    for v in model.trainable_variables:
        size = int(np.prod(v.shape))
        v.assign(w[offset : offset + size].reshape(v.shape).astype(v.dtype))
        offset += size
