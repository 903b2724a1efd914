"""Predictive class probabilities from a Gaussian over the logits (MATH.md, "Classification").

The Laplace posterior gives, at each input, logits f ~ N(μ, Σ) with μ = f(x; w*) and
Σ = J(x) A⁻¹ J(x)ᵀ (K×K). The predictive probability E[softmax(f)] has no closed form:

* probit (MacKay 1992b): softmax(μ_k / sqrt(1 + π/8 · Σ_kk)), deterministic, cheap. It uses
  only the diagonal of Σ (not the correlations of the logits): against quadrature it is within
  0.02 for logit variances up to ~0.3 and off by up to ~0.05 at variances ~1;
* sampling: the average of softmax(f) over seeded draws f ~ N(μ, Σ).

A model whose last layer already applies a softmax outputs probabilities, not logits; the
Laplace approximation of the cross-entropy needs logits, so :func:`check_logits` refuses it.
"""

from __future__ import annotations

import keras
import numpy as np

from sigma._checks import as_array

METHODS = ("probit", "mc")
MAX_SAMPLES = 10**8  # draws of the logits for method="mc"
CHUNK_ELEMENTS = 2**22  # logits drawn at a time (32 MiB of float64)


def softmax(logits, heads=None) -> np.ndarray:
    """softmax along the last axis, float64, stable; with ``heads`` ((start, stop) pairs),
    one softmax per head. A head of one logit f is binary: σ(f) = P(y = 1) (the softmax over
    the logits (0, f))."""
    z = np.asarray(logits, np.float64)
    if heads is not None:
        return np.concatenate([softmax(z[..., s:e]) for s, e in heads], axis=-1)
    if z.shape[-1] == 1:
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # σ(z) without overflow
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _check_mean_cov(mean, cov):
    mean = as_array(mean, "mean", ndim=2).astype(np.float64)
    cov = as_array(cov, "cov", ndim=3).astype(np.float64)
    n, k = mean.shape
    if cov.shape != (n, k, k):
        raise ValueError(f"cov must have shape (N, K, K) = ({n}, {k}, {k}), got {cov.shape}")
    return mean, cov


def probit_probabilities(mean, cov, heads=None) -> np.ndarray:
    """softmax(μ / sqrt(1 + π/8 · diag Σ)) per input (per head with ``heads``).

    mean : (N, K) logits μ.  cov : (N, K, K) logit covariance Σ.  Returns (N, K), rows (of
    each head) sum to 1.
    """
    mean, cov = _check_mean_cov(mean, cov)
    var = np.einsum("nkk->nk", cov)
    return softmax(mean / np.sqrt(1.0 + np.pi / 8.0 * var), heads)


def sampled_probabilities(
    mean, cov, *, n_samples: int = 1000, seed: int = 0, heads=None
) -> np.ndarray:
    """E[softmax(f)], f ~ N(μ, Σ), by ``n_samples`` seeded draws per input: (N, K).

    The same seed gives the same probabilities. Σ is factored by its eigen-decomposition
    (negative round-off eigenvalues set to zero), so a singular Σ is fine.
    """
    mean, cov = _check_mean_cov(mean, cov)
    if not 1 <= int(n_samples) <= MAX_SAMPLES:
        raise ValueError(
            f"n_samples must be a positive integer of at most {MAX_SAMPLES:.0e}, got {n_samples}"
        )
    lam, vec = np.linalg.eigh(0.5 * (cov + np.swapaxes(cov, 1, 2)))
    root = vec * np.sqrt(np.maximum(lam, 0.0))[:, None, :]  # Σ = root rootᵀ
    rng = np.random.default_rng(seed)
    total, left = np.zeros(mean.shape), int(n_samples)
    chunk = max(1, CHUNK_ELEMENTS // max(mean.size, 1))  # draws at a time: bounded memory
    while left:  # the same stream of draws as one (n_samples, N, K) array
        z = rng.standard_normal((min(chunk, left), *mean.shape))
        logits = mean[None] + np.einsum("nkj,snj->snk", root, z)
        total += softmax(logits, heads).sum(axis=0)
        left -= len(z)
    return total / int(n_samples)


def _activation_name(activation) -> str | None:
    return getattr(activation, "__name__", None) or getattr(activation, "name", None)


def _is_softmax(activation) -> bool:
    return activation is keras.activations.softmax or _activation_name(activation) == "softmax"


def _squashes(last) -> str | None:
    """'softmax' or 'sigmoid' when the layer ends in that function (its activation, or a
    Softmax/Activation layer), else None."""
    if isinstance(last, keras.layers.Softmax) or _is_softmax(getattr(last, "activation", None)):
        return "softmax"
    name = _activation_name(getattr(last, "activation", None))
    if name in ("sigmoid", "hard_sigmoid"):
        return name
    return None


def check_logits(model, f=None, heads=None) -> None:
    """Refuse a model whose outputs are probabilities (a final softmax or sigmoid) instead of
    logits.

    Looks at the last layer (a ``softmax`` or ``sigmoid`` activation, a ``Softmax`` layer,
    ``Activation("softmax")``) and, when the outputs f (N, K) are given, at whether every row
    (of a head of several classes) is non-negative and sums to 1.
    """
    last = model.layers[-1] if getattr(model, "layers", None) else None
    squash = _squashes(last)
    final_softmax = squash is not None
    looks_normalised = False
    if f is not None and not final_softmax:
        f = np.asarray(f, np.float64)
        looks_normalised = any(
            len(f) > 1
            and e - s > 1
            and bool(np.all(f[:, s:e] >= 0))
            and bool(np.allclose(f[:, s:e].sum(axis=-1), 1.0, atol=1e-6))
            for s, e in (heads or [(0, f.shape[-1])])
        )
    if final_softmax or looks_normalised:
        why = (
            f"its last layer {last.name!r} applies a {squash}"
            if final_softmax
            else "every output row is non-negative and sums to 1"
        )
        raise ValueError(
            f"likelihood='classification' needs a model with linear logits, but {why}: the "
            "model outputs probabilities. Pass a model with linear logits (e.g. rebuild it "
            "with output_activation='linear' and train with "
            "keras.losses.CategoricalCrossentropy(from_logits=True), or BinaryCrossentropy("
            "from_logits=True) for one logit); the softmax (sigmoid for one logit) is applied "
            "by Laplace.predict_proba"
        )
