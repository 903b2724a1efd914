"""sigma: error bars for any Keras network, by automatic differentiation.

The Laplace approximation around trained weights (shared/design/MATH.md):
``Laplace(model, x, y).predict(x_new)`` returns the predictive mean and σ per output.
"""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from sigma import classification, evidence, metrics, plots  # noqa: E402, F401
from sigma.curvature import data_error, gauss_newton, hessian, output_jacobian  # noqa: E402
from sigma.data import iris_split, one_hot  # noqa: E402
from sigma.laplace import Laplace  # noqa: E402
from sigma.models import mlp, reinitialised_copy, train  # noqa: E402
from sigma.params import flat_weights, num_params, set_flat_weights  # noqa: E402
from sigma.seed import mean_loss_hessian_diag, seed_sigma, summed_beta  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Laplace",
    "data_error",
    "flat_weights",
    "gauss_newton",
    "hessian",
    "iris_split",
    "mean_loss_hessian_diag",
    "mlp",
    "num_params",
    "one_hot",
    "output_jacobian",
    "reinitialised_copy",
    "seed_sigma",
    "set_flat_weights",
    "summed_beta",
    "train",
]
