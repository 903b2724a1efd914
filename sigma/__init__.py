"""sigma: error bars for any Keras network, by automatic differentiation.

The Laplace approximation around trained weights (shared/design/MATH.md):
``Laplace(model, x, y).predict(x_new)`` returns the predictive mean and σ per output.

Names are imported lazily (PEP 562), so ``python -m sigma.sweep`` or ``sigma.runs`` start
without loading TensorFlow; ``sigma.Laplace`` or ``sigma.plots`` import what they need on
first use.
"""

import importlib as _importlib
import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

_EXPORTS = {
    "Laplace": "sigma.laplace",
    "data_error": "sigma.curvature",
    "gauss_newton": "sigma.curvature",
    "hessian": "sigma.curvature",
    "output_jacobian": "sigma.curvature",
    "digits_split": "sigma.data",
    "iris_split": "sigma.data",
    "one_hot": "sigma.data",
    "mlp": "sigma.models",
    "reinitialised_copy": "sigma.models",
    "train": "sigma.models",
    "flat_weights": "sigma.params",
    "num_params": "sigma.params",
    "set_flat_weights": "sigma.params",
    "mean_loss_hessian_diag": "sigma.seed",
    "seed_sigma": "sigma.seed",
    "summed_beta": "sigma.seed",
}
_SUBMODULES = {
    "classification", "compare", "curvature", "data", "diag", "distribute", "evidence", "kfac",
    "laplace", "last_layer", "layers", "likelihoods", "lowrank", "memory", "metrics", "models",
    "params", "plots", "reports", "runs", "seed", "structures", "sweep", "sweep_plots",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(_importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = _importlib.import_module(f"sigma.{name}")
    else:
        raise AttributeError(f"module 'sigma' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | _SUBMODULES)
