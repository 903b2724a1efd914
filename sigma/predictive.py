"""The predictive of a :class:`~sigma.posterior.Posterior` at checked inputs x.

    regression       σ_k²(x) = 1/β_k + g_k(x)ᵀ A⁻¹ g_k(x)        Σ(x) = β⁻¹ I + J A⁻¹ Jᵀ
    classification   logits f ~ N(f(x; w*), J A⁻¹ Jᵀ), probabilities by the probit
                     approximation or by sampling (:mod:`sigma.classification`)

Arrays are flat: (N, K) with every output of the model concatenated (the posterior's
``output_layout`` gives them their structure back). The mean is the model's own output at the
trained weights; the variance comes from the structure (:mod:`sigma.structures`).
"""

from __future__ import annotations

import numpy as np

from sigma._checks import check_finite_outputs
from sigma.classification import probabilities as class_probabilities
from sigma.curvature.engine import engine
from sigma.posterior import Posterior


def mean_and_std(post: Posterior, model, x, *, noise=True, batch_size=None, name="x"):
    """(mean, std), each (N, K) float64, for checked inputs x: std² = 1/β + gᵀA⁻¹g
    (``noise=False``: gᵀA⁻¹g alone)."""
    mean = engine(model).outputs(x)
    check_finite_outputs(model, x, mean, name)
    structure, beta = post.operator()
    var = structure.predictive_variance(model, x, post.alpha_weights(), beta, batch_size=batch_size)
    check_finite_variance(var, name)
    if noise:
        var = var + noise_variance(post)
    return mean, np.sqrt(var)


def covariance(post: Posterior, model, x, *, noise=True, batch_size=None) -> np.ndarray:
    """Σ(x) = β⁻¹ I + J A⁻¹ Jᵀ (N, K, K) for checked inputs x (classification: the logit
    covariance, no noise term)."""
    structure, beta = post.operator()
    cov = structure.predictive_covariance(
        model, x, post.alpha_weights(), beta, batch_size=batch_size
    )
    if noise and post.likelihood.has_beta:
        cov = cov + np.diag(noise_variance(post))
    return cov


def noise_variance(post: Posterior) -> np.ndarray:
    """1/β of each output's precision group, (K,); 0 for an output without a noise precision
    (a classifier's logits in a model with a likelihood per head)."""
    noise = post.groups.free[post.groups.outputs]
    return np.where(noise, 1.0 / post.noise_beta, 0.0)


def probabilities(
    post: Posterior, model, x, *, method="probit", n_samples=1000, seed=0, batch_size=None,
    name="x",
) -> np.ndarray:  # fmt: skip
    """Class probabilities (N, K), one softmax (or sigmoid) per head, for checked inputs x, by
    ``method`` (:func:`sigma.classification.probabilities`)."""
    mean = engine(model).outputs(x)
    check_finite_outputs(model, x, mean, name)
    if method == "probit":  # the variances alone: no K×K covariance per input
        structure, beta = post.operator()
        cov = structure.predictive_variance(
            model, x, post.alpha_weights(), beta, batch_size=batch_size
        )
    else:
        cov = covariance(post, model, x, noise=False, batch_size=batch_size)
    check_finite_variance(cov, name)
    return class_probabilities(
        mean, cov, method=method, n_samples=n_samples, seed=seed, heads=post.likelihood.heads
    )


def check_finite_variance(var, name: str = "x") -> None:
    """The outputs were finite; a NaN or inf variance comes from the output gradients."""
    if not np.all(np.isfinite(var)):
        bad = int(np.sum(~np.all(np.isfinite(np.reshape(var, (len(var), -1))), axis=1)))
        raise ValueError(
            f"the predictive variance is NaN or infinite for {bad} of the {len(var)} samples of "
            f"{name} although the model's outputs are finite: the gradients of the outputs "
            f"overflow inside the network. Rescale {name} (or the weights), or compute in float64"
        )


def per_head(
    post: Posterior, model, x, *, noise=True, method="probit", n_samples=1000, seed=0,
    batch_size=None, name="x",
) -> dict:  # fmt: skip
    """A likelihood per head: {output name: (mean, std) of a regression head (std² = its 1/β
    + gᵀA⁻¹g), class probabilities of a classification head}, each in its output's shape."""
    from sigma.likelihoods.heads import lik_layout

    mean = engine(model).outputs(x)
    check_finite_outputs(model, x, mean, name)
    cov = covariance(post, model, x, noise=False, batch_size=batch_size)
    check_finite_variance(cov, name)
    noise_var = noise_variance(post)
    out = {}
    for head, lik, s, e in post.likelihood.bound():
        layout = lik_layout(post.output_layout, head)
        if lik.name == "classification":
            probs = class_probabilities(
                mean[:, s:e], cov[:, s:e, s:e], method=method, n_samples=n_samples, seed=seed,
                heads=lik.heads,
            )  # fmt: skip
            out[head] = layout.unflatten(probs)
            continue
        var = np.einsum("nkk->nk", cov[:, s:e, s:e]) + (noise_var[s:e] if noise else 0.0)
        out[head] = (layout.unflatten(mean[:, s:e]), layout.unflatten(np.sqrt(var)))
    return out
