"""Notebook helpers: the data, networks, scans, plots and comparisons the notebooks narrate.

Everything here sits on top of the core (:class:`sigma.Laplace`, :mod:`sigma.curvature`,
:mod:`sigma.structures`, :mod:`sigma.evidence`), which never imports it:

* :mod:`.data` — the Iris split of the original notebook, digits, synthetic regression;
* :mod:`.models` — the MLPs and the small CNN, and :func:`~.models.train` (the original's
  RMSprop/MSE loop, optionally training for the posterior with the evidence);
* :mod:`.original_formula` — the original notebook's formula, kept as a documented reference;
* :mod:`.scans` — the evidence and held-out calibration over a grid of β or α;
* :mod:`.compare` — every structure on one trained model;
* :mod:`.baselines`, :mod:`.posterior` — deep ensembles, MC dropout, temperature scaling and
  training for the posterior (notebook 05);
* :mod:`.shift`, :mod:`.classifiers` — shifted and out-of-distribution digits, and every
  classifier's probabilities scored on them (notebook 06);
* :mod:`.plots` — prediction bands, evidence surfaces, calibration diagrams.
"""

from sigma.lab import (
    classifiers,
    compare,
    data,
    models,
    original_formula,
    plots,
    scans,
    shift,
    training_comparison,
)
from sigma.lab.data import IRIS_CLASSES, digits_split, iris_split, one_hot, teacher_regression
from sigma.lab.models import mlp, reinitialised_copy, small_cnn, train
from sigma.lab.original_formula import mean_loss_hessian_diag, seed_sigma, summed_beta
from sigma.lab.scans import alpha_scan, beta_scan

__all__ = [
    "IRIS_CLASSES",
    "alpha_scan",
    "classifiers",
    "compare",
    "data",
    "models",
    "plots",
    "scans",
    "original_formula",
    "training_comparison",
    "beta_scan",
    "digits_split",
    "iris_split",
    "mean_loss_hessian_diag",
    "mlp",
    "one_hot",
    "reinitialised_copy",
    "seed_sigma",
    "shift",
    "small_cnn",
    "summed_beta",
    "teacher_regression",
    "train",
]
