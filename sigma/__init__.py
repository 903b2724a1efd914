"""sigma: error bars for any Keras network, by automatic differentiation.

The Laplace approximation around trained weights (docs/math.md):
``Laplace(model, x, y).predict(x_new)`` returns the predictive mean and σ per output.

The package is layered; each layer imports only those below it:

* the core — :func:`sigma.fit` (a model and its data to a
  :class:`~sigma.posterior.Posterior`, the value that predicts, gives the evidence and
  returns new posteriors at other precisions; :mod:`sigma.fitting` computes its pieces, and
  the posterior's module, on top of the core, makes the value of them), :mod:`sigma.laplace`
  (the :class:`Laplace`
  facade over it), :mod:`sigma.structures`
  (one file per structure of the posterior precision), :mod:`sigma.curvature` (one engine
  computing every curvature, traced once per model), :mod:`sigma.evidence`,
  :mod:`sigma.likelihoods`, :mod:`sigma.classification`,
  :mod:`sigma.conformal`, :mod:`sigma.selection` (:func:`compare_models`: the evidence
  chooses among candidate networks; :func:`compare_laplaces`: among fitted Laplaces),
  :mod:`sigma.losses`, :mod:`sigma.metrics`, :mod:`sigma.memory`, :mod:`sigma.params`;
* :mod:`sigma.lab` — the notebook helpers (data, models, the original formula, scans, plots);
* :mod:`sigma.sweep` — papermill sweeps and HTML reports, which never import the layers above.

Public names are resolved on first use (PEP 562), so ``python -m sigma.sweep`` starts without
loading TensorFlow; ``sigma.Laplace`` imports the core when first touched.
"""

import importlib as _importlib
import os as _os
import sys as _sys

from sigma._version import __version__ as __version__

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

_EXPORTS = {
    "EvidenceCallback": "sigma.callbacks",
    "Laplace": "sigma.laplace",
    "Posterior": "sigma.posterior",
    "compare_models": "sigma.selection",
    "compare_laplaces": "sigma.selection",
    "fit": "sigma.posterior",
    "load": "sigma.posterior",
    "curvature_product": "sigma.curvature",
    "data_error": "sigma.curvature",
    "gauss_newton": "sigma.curvature",
    "hessian": "sigma.curvature",
    "output_jacobian": "sigma.curvature",
    "flat_weights": "sigma.params",
    "full_precision": "sigma.params",
    "num_params": "sigma.params",
    "set_flat_weights": "sigma.params",
}
_SUBMODULES = {
    "callbacks", "classification", "conformal", "curvature", "evidence", "fitting",
    "keras_compat", "lab", "laplace", "likelihoods", "losses", "memory", "metrics", "params", "posterior",
    "predictive", "priors", "selection", "structures", "sweep", "tuning", "weights",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


# What the core needs and the distribution installs; a missing one is named with the fix.
_REQUIRED = {"tensorflow": "tensorflow-cpu==2.21.0", "keras": "keras==3.15.1"}


def _import(module: str):
    try:
        return _importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name not in _REQUIRED:
            raise
        raise ImportError(
            f"sigma needs {exc.name} ({_REQUIRED[exc.name]}), which is not installed in this "
            f"Python ({_sys.executable}): pip install keras-sigma installs it"
        ) from exc


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(_import(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = _import(f"sigma.{name}")
    else:
        raise AttributeError(f"module 'sigma' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | _SUBMODULES)
