"""Notebook helpers: the data, networks, scans, plots and comparisons the notebooks narrate.

Everything here sits on top of the core (:class:`sigma.Laplace`, :mod:`sigma.curvature`,
:mod:`sigma.structures`, :mod:`sigma.evidence`), which never imports it:

* :mod:`.data` — the Iris split of the original notebook, digits, synthetic regression;
* :mod:`.models` — the one MLP builder (:func:`~.models.mlp`, dropout optional), the small
  CNN, the one trainer :func:`~.models.train` (the original's RMSprop/MSE loop by default, or
  Adam with a cosine-decayed step; optionally training for the posterior with the evidence),
  and :class:`~.models.Recipe`, the one set of training settings the comparisons share;
* :mod:`.original_formula` — the original notebook's formula, kept as a documented reference;
* :mod:`.scans` — the evidence and held-out calibration over a grid of β or α;
* :mod:`.compare` — every structure on one trained model;
* :mod:`.baselines`, :mod:`.training_comparison` — deep ensembles, MC dropout, temperature
  scaling, and the scoring of notebook 05's comparison (its evidence methods are the
  notebook's own cells);
* :mod:`.shift`, :mod:`.classifiers` — shifted and out-of-distribution digits, and every
  classifier's probabilities scored on them (notebook 06);
* :mod:`.noise` — heteroscedastic and conformal regression (notebook 07);
* :mod:`.occam` — the evidence choosing among candidate networks, against held-out data
  (notebook 09);
* :mod:`.plots` — prediction bands, evidence surfaces, calibration diagrams.
"""

import importlib as _importlib
import importlib.util as _util

# What the helpers import beyond the core's dependencies: the "notebooks" extra (import name ->
# distribution). `pip install keras-sigma` alone gives the core; sigma.lab says what is missing
# on import rather than failing inside a notebook's third cell.
NOTEBOOKS_EXTRA = {"sklearn": "scikit-learn", "matplotlib": "matplotlib", "pandas": "pandas"}


class MissingExtra(ImportError):
    """A package of the ``notebooks`` extra is not installed; the message says what to install."""


def _require_notebooks_extra() -> None:
    missing = [dist for mod, dist in NOTEBOOKS_EXTRA.items() if _util.find_spec(mod) is None]
    if missing:
        raise MissingExtra(
            "sigma.lab (the notebooks' data, networks and plots) needs the 'notebooks' extra; "
            f"missing: {', '.join(missing)}. Install it with: pip install 'keras-sigma[notebooks]' "
            "(the core, sigma.Laplace and sigma.fit, works without it)"
        )


_require_notebooks_extra()

# Names resolved on first use (PEP 562), as in :mod:`sigma`: ``from sigma.lab.data import ...``
# (the sweep report's notebook) loads scikit-learn only, not TensorFlow.
_SUBMODULES = {
    "baselines", "classifiers", "compare", "data", "models", "noise", "occam", "original_formula",
    "plots", "scans", "sequences", "shift", "training_comparison",
}  # fmt: skip
_EXPORTS = {
    "IRIS_CLASSES": "data",
    "digits_split": "data",
    "iris_split": "data",
    "one_hot": "data",
    "teacher_regression": "data",
    "Recipe": "models",
    "mlp": "models",
    "reinitialised_copy": "models",
    "small_cnn": "models",
    "train": "models",
    "mean_loss_hessian_diag": "original_formula",
    "seed_sigma": "original_formula",
    "summed_beta": "original_formula",
    "alpha_scan": "scans",
    "beta_scan": "scans",
}

__all__ = sorted(_SUBMODULES | set(_EXPORTS))


def __getattr__(name):
    if name in _SUBMODULES:
        value = _importlib.import_module(f"sigma.lab.{name}")
    elif name in _EXPORTS:
        value = getattr(_importlib.import_module(f"sigma.lab.{_EXPORTS[name]}"), name)
    else:
        raise AttributeError(f"module 'sigma.lab' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | _SUBMODULES)
