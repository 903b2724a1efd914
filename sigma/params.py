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


def full_precision(model, dtype: str = "float32"):
    """A copy of ``model`` whose layers compute and store weights in ``dtype`` (float32 or
    float64), holding the same weights: for computing σ of a model trained in half precision
    (float16, bfloat16 or a mixed policy), where the curvature and its eigenvalues are not
    reliable. Sequential and functional models (``keras.models.clone_model``); a subclassed
    model must be rebuilt by its own code under ``keras.config.set_dtype_policy(dtype)``.
    """
    import keras

    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError("model must be a built keras.Model")

    def clone(layer):
        if isinstance(layer, keras.Model):  # a nested model: its own layers, recursively
            return full_precision(layer, dtype)
        return layer.__class__.from_config({**layer.get_config(), "dtype": dtype})

    def retyped(t):  # float inputs in ``dtype``; integer inputs (indices) as they are
        kind = np.dtype(str(t.dtype)) if str(t.dtype) != "bfloat16" else np.dtype("float32")
        keep = t.dtype if kind.kind in "iub" else dtype
        return keras.Input(batch_shape=t.shape, dtype=keep, name=getattr(t, "name", None))

    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    try:
        if inputs:
            tensors = [retyped(t) for t in inputs]
            tensors = tensors[0] if len(tensors) == 1 else tensors
            copy = keras.models.clone_model(model, input_tensors=tensors, clone_function=clone)
        else:
            copy = keras.models.clone_model(model, clone_function=clone)
    except Exception as exc:
        raise ValueError(
            f"model could not be cloned ({type(exc).__name__}: {exc}); a subclassed model must "
            f"be rebuilt by its own code under keras.config.set_dtype_policy({dtype!r}) and "
            "given the weights with set_weights"
        ) from exc
    copy.set_weights([np.asarray(w, np.float64).astype(dtype) for w in model.get_weights()])
    return copy
