"""What a fitted posterior keeps of its training data and of its model's state.

Below :mod:`sigma.posterior`: fitting (:mod:`sigma.fitting`) and loading (:mod:`sigma.saving`)
build these pieces, and :func:`sigma.posterior.fit` / :func:`sigma.posterior.load` make the
posterior of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DataSummary:
    """What the evidence needs of the training data (not the data themselves).

    n_data : N samples; n_outputs : K outputs per sample (all outputs flattened);
    data_error : the likelihood's data term E (½ Σ (f − t)² for regression, the cross-entropy
    for classification), summed; data_errors : ½ Σ_n (f_nk − t_nk)² per output (K,)
    (regression) or None; group_errors : the data term of each precision group (G,) (None:
    one group, ``data_error``); output_scale : the RMS of the outputs (for telling
    interpolation from noise); batch_size : as fitted (None: automatic); input_scale : the
    largest |x| of the float training inputs (arrays; None for a dataset or a loaded
    posterior), named when an ill-conditioned A is refused; target_moments : a fingerprint of
    the targets as the likelihood takes them (one-hot labels, a heteroscedastic model's targets
    once), by which evidences of different targets are told apart
    (:func:`sigma.compare_laplaces`): the mean of each target column (class frequencies for
    labels; one mean over all entries beyond :data:`MOMENT_COLUMNS` columns), then the mean
    square of all entries (None for a posterior saved before it was kept).
    """

    n_data: int
    n_outputs: int
    data_error: float
    data_errors: np.ndarray | None
    output_scale: float
    batch_size: int | None = None
    input_scale: float | None = None
    group_errors: np.ndarray | None = None
    target_moments: tuple[float, ...] | None = None


# Targets with more columns than this are fingerprinted by one mean over all their entries.
MOMENT_COLUMNS = 256


def moments(t) -> np.ndarray:
    """Sums of targets ``t`` (N, K): Σ_n t_nk per column (or Σ over every entry when K >
    :data:`MOMENT_COLUMNS`), Σ t², and N, float64: summed over batches, :func:`target_moments`
    of the sums is that of all the targets."""
    t = np.asarray(t, np.float64).reshape(np.shape(t)[0], -1)
    columns = t.sum(axis=0) if t.shape[1] <= MOMENT_COLUMNS else [t.sum() / t.shape[1]]
    return np.concatenate([columns, [np.square(t).sum() / t.shape[1], t.shape[0]]])


def target_moments(sums) -> tuple[float, ...]:
    """The column means and the mean square of the targets from the :func:`moments` sums."""
    n = max(float(sums[-1]), 1.0)
    return tuple(float(v) / n for v in sums[:-1])


def frozen_state(model) -> list[np.ndarray]:
    """Copies of the non-trainable state the curvature depends on (normalisation statistics;
    not the random-seed state, which inference does not use)."""
    return [
        np.array(v.numpy())
        for v in model.non_trainable_variables
        if "seed_generator" not in getattr(v, "path", v.name)
    ]
