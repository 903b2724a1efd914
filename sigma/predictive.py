"""The predictive of a :class:`~sigma.posterior.Posterior` at checked inputs x.

    f ~ N(f(x; w*), J A⁻¹ Jᵀ)          (the linearised network; J = ∂f/∂w at the trained weights)

The mean is the model's own output; J A⁻¹ Jᵀ comes from the structure (its diagonal, or the
K×K covariance per input when the likelihood needs it), and the likelihood turns the two into
what the user asked for (:meth:`sigma.likelihoods.Likelihood.predictive`): σ² = 1/β + gᵀA⁻¹g
for regression, class probabilities by a link for a classifier, the noise head's σ²(x) plus the
weight uncertainty of the mean for a heteroscedastic model, a dict by output for a likelihood
per head.
"""

from __future__ import annotations

import numpy as np

import sigma
from sigma._checks import check_finite_outputs
from sigma.curvature.engine import engine


def predict(post: sigma.Posterior, model, x, *, batch_size=None, name="x", flat=False,
            mean=None, **options):  # fmt: skip
    """The prediction of ``post``'s likelihood at checked inputs x (options: ``noise``,
    ``split``, ``method``, ``n_samples``, ``seed``, as the likelihood reads them), in the
    model's output structure (``flat``: (N, K) arrays). ``mean``: the network's outputs at x
    (:func:`outputs`) when the caller already has them (a search predicting at the same
    inputs for many posteriors)."""
    lik = post.likelihood
    if mean is None:
        mean = outputs(model, x, name)
    second = weight_uncertainty(
        post, model, x, lik.predictive_form(**options), batch_size=batch_size, name=name
    )
    layout = None if flat else post.output_layout
    return lik.predictive(
        mean, second, noise_var=noise_variance(post), layout=layout, name=name, **options
    )


def outputs(model, x, name="x") -> np.ndarray:
    """The network's outputs f(x; w*) (N, K) at checked inputs x; non-finite ones refused
    naming ``name``."""
    mean = engine(model).outputs(x)
    check_finite_outputs(model, x, mean, name)
    return mean


def weight_uncertainty(post: sigma.Posterior, model, x, form: str, *, batch_size=None, name="x"):
    """J A⁻¹ Jᵀ at checked inputs x: its diagonal (N, K) for ``form="variance"``, else the
    covariance (N, K, K), float64; a NaN or inf is refused naming ``name``."""
    structure, beta = post.operator()
    alpha = post.alpha_weights()
    if form == "variance":
        out = structure.predictive_variance(model, x, alpha, beta, batch_size=batch_size)
    else:
        out = structure.predictive_covariance(model, x, alpha, beta, batch_size=batch_size)
    check_finite_variance(out, name)
    return out


def covariance(post: sigma.Posterior, model, x, *, noise=True, batch_size=None) -> np.ndarray:
    """Σ(x) = β⁻¹ I + J A⁻¹ Jᵀ (N, K, K) for checked inputs x (no noise term for outputs
    without a noise precision: a classifier's logits)."""
    cov = weight_uncertainty(post, model, x, "covariance", batch_size=batch_size)
    if noise:
        cov = cov + np.diag(noise_variance(post))
    return cov


def noise_variance(post: sigma.Posterior) -> np.ndarray:
    """1/β of each output's precision group, (K,); 0 for an output without a noise precision
    (a classifier's logits, a heteroscedastic head)."""
    noise = post.groups.free[post.groups.outputs]
    return np.where(noise, 1.0 / post.noise_beta, 0.0)


def check_finite_variance(var, name: str = "x") -> None:
    """The outputs were finite; a NaN or inf variance comes from the output gradients."""
    if not np.all(np.isfinite(var)):
        bad = int(np.sum(~np.all(np.isfinite(np.reshape(var, (len(var), -1))), axis=1)))
        raise ValueError(
            f"the predictive variance is NaN or infinite for {bad} of the {len(var)} samples of "
            f"{name} although the model's outputs are finite: the gradients of the outputs "
            f"overflow inside the network. Rescale {name} (or the weights), or compute in float64"
        )
