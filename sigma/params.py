"""The weight vector w: ``model.trainable_variables``, each flattened row-major, concatenated.

This fixes the order of the P weights in every (P,), (P, P) and (N, K, P) array of the package,
and gives a pure function f(w, x) of a flat weight vector via ``Model.stateless_call``, so
curvature is a plain derivative with respect to one tensor.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


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


def unflatten(model, w_flat: tf.Tensor) -> list[tf.Tensor]:
    """Split a (P,) tensor into tensors shaped like ``model.trainable_variables``."""
    sizes = [int(np.prod(v.shape)) for v in model.trainable_variables]
    parts = tf.split(w_flat, sizes)
    return [tf.reshape(p, v.shape) for p, v in zip(parts, model.trainable_variables, strict=True)]


def functional_forward(model):
    """Return ``f(w_flat, x) -> (N, K)``: the model at weights ``w_flat``, in inference mode.

    Uses ``stateless_call`` so no variable is assigned and the function can be differentiated
    with respect to ``w_flat`` (nested tapes, jacobians). Non-trainable state (normalisation
    statistics) is read from the model as it is.
    """
    non_trainable = [v.value for v in model.non_trainable_variables]
    # Model.__call__ drops `training` for a call() without it; stateless_call does not.
    kwargs = {"training": False} if getattr(model, "_call_has_training_arg", True) else {}

    def forward(w_flat, x):
        out, _ = model.stateless_call(unflatten(model, w_flat), non_trainable, x, **kwargs)
        return tf.reshape(out, (tf.shape(out)[0], -1))

    return forward
