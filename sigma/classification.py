"""Predictive class probabilities from a Gaussian over the logits (MATH.md, "Classification").

The Laplace posterior gives, at each input, logits f ~ N(μ, Σ) with μ = f(x; w*) and
Σ = J(x) A⁻¹ J(x)ᵀ (K×K). The predictive probability E[softmax(f)] has no closed form:

* probit (MacKay 1992b): softmax(μ_k / sqrt(1 + π/8 · Σ_kk)), deterministic, cheap. It uses
  only the diagonal of Σ (not the correlations of the logits): against quadrature it is within
  0.02 for logit variances up to ~0.3 and off by up to ~0.05 at variances ~1;
* sampling ("mc"): the average of softmax(f) over seeded draws f ~ N(μ, Σ) with the full
  K×K covariance; the reference the others are tested against;
* mean field (Lu, Ie & Sha 2020, "Mean-field approximation to Gaussian-softmax integral"):
  write softmax_k(f) = 1 / Σ_j exp(f_j − f_k) and replace each pairwise sigmoid by its probit
  approximation, p_k ∝ 1 / Σ_j exp((μ_j − μ_k) / sqrt(1 + λ0 s_kj)), λ0 = π/8.
  "mean_field" uses the variance of the difference of two logits, s_kj = Σ_kk + Σ_jj − 2Σ_kj
  (the correlations enter: a shift common to all logits, which softmax ignores, changes
  nothing); "mean_field_diag" uses s_kj = Σ_kk + Σ_jj (independent logits). Lu et al.'s
  third form, s_kj = Σ_kk alone, is probit. Rows are renormalised to sum to 1;
* Laplace bridge (Hobbhahn, Kristiadi & Hennig 2022): the Dirichlet whose Laplace
  approximation in the softmax basis is N(μ, Σ), α_k = (1 − 2/K + e^{μ_k} Σ_l e^{−μ_l}/K²)/Σ_kk,
  after projecting μ, Σ onto logits that sum to zero (f − mean(f), which leaves softmax(f)
  unchanged); the probabilities are its mean α / Σ_l α_l. Deterministic, O(K) per input, and
  a cruder approximation than the others at small variances (it is not softmax(μ) at Σ = 0).
  For two classes (and a one-logit binary head) it is exactly softmax(μ) (sigmoid(μ)) whatever
  Σ: after centring both logits have the same variance and 1 − 2/K = 0, so α_k ∝ e^{μ_k}. For
  a general Σ it can differ from the Monte Carlo E[softmax(f)] markedly.

Every method takes one-logit (binary) heads as the two logits (0, f).

A model whose last layer already applies a softmax outputs probabilities, not logits; the
Laplace approximation of the cross-entropy needs logits, so :func:`check_logits` refuses it.
"""

from __future__ import annotations

import keras
import numpy as np

from sigma._checks import as_array

METHODS = ("probit", "mc", "mean_field", "mean_field_diag", "bridge")
LAMBDA0 = np.pi / 8.0  # the probit approximation σ(x) ≈ Φ(sqrt(π/8) x)
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

    mean : (N, K) logits μ.  cov : (N, K, K) logit covariance Σ, or its diagonal (N, K) (all
    this method reads).  Returns (N, K), rows (of each head) sum to 1.
    """
    var = _variances(mean, cov)
    return softmax(np.asarray(mean, np.float64) / np.sqrt(1.0 + np.pi / 8.0 * var), heads)


def _variances(mean, cov) -> np.ndarray:
    """diag Σ (N, K) from a covariance (N, K, K) or the variances themselves."""
    if np.ndim(cov) == 2:
        var = as_array(cov, "var", ndim=2).astype(np.float64)
        if var.shape != np.shape(mean):
            raise ValueError(f"var must have the shape of mean {np.shape(mean)}, got {var.shape}")
        return var
    return np.einsum("nkk->nk", _check_mean_cov(mean, cov)[1])


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
    root_t = np.swapaxes(root, 1, 2)  # logits_s = μ + root z_s, as a batched product
    rng = np.random.default_rng(seed)
    total, left = np.zeros(mean.shape), int(n_samples)
    chunk = max(1, CHUNK_ELEMENTS // max(mean.size, 1))  # draws at a time: bounded memory
    while left:  # the same stream of draws as one (n_samples, N, K) array
        z = rng.standard_normal((min(chunk, left), *mean.shape))
        logits = mean[None] + np.matmul(z.transpose(1, 0, 2), root_t).transpose(1, 0, 2)
        total += softmax(logits, heads).sum(axis=0)
        left -= len(z)
    return total / int(n_samples)


def _activation_name(activation) -> str | None:
    return getattr(activation, "__name__", None) or getattr(activation, "name", None)


def _is_softmax(activation) -> bool:
    return activation is keras.activations.softmax or _activation_name(activation) == "softmax"


def final_squash(last) -> str | None:
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
    squash = final_squash(last)
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


def _binary_as_pair(mean, cov):
    """A one-logit head f as the two logits (0, f): (N, 2) and (N, 2, 2)."""
    n = len(mean)
    pair_mean = np.concatenate([np.zeros((n, 1)), mean], axis=1)
    pair_cov = np.zeros((n, 2, 2))
    pair_cov[:, 1, 1] = cov[:, 0, 0]
    return pair_mean, pair_cov


def _per_head(function, mean, cov, heads):
    """Apply ``function(mean (N, K_h), cov (N, K_h, K_h)) -> (N, K_h)`` to every head; a head
    of one logit goes through as the pair (0, f) and returns P(y = 1)."""
    out = []
    for s, e in heads or [(0, mean.shape[1])]:
        m, c = mean[:, s:e], cov[:, s:e, s:e]
        out.append(function(*_binary_as_pair(m, c))[:, 1:] if e - s == 1 else function(m, c))
    return np.concatenate(out, axis=1)


def _logsumexp(z, axis):
    top = z.max(axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.sum(np.exp(z - top), axis=axis))


def _mean_field(mean, cov, full):
    var = np.einsum("nkk->nk", cov)
    spread = var[:, :, None] + var[:, None, :]  # s_kj
    if full:
        spread = spread - 2.0 * cov
    spread = np.maximum(spread, 0.0)  # round-off of a variance of a difference
    z = (mean[:, None, :] - mean[:, :, None]) / np.sqrt(1.0 + LAMBDA0 * spread)  # (μ_j − μ_k)/…
    log_p = -_logsumexp(z, axis=2)  # ln p_k = −ln Σ_j exp(z_kj)
    return softmax(log_p)  # renormalised


def mean_field_probabilities(mean, cov, *, full: bool = True, heads=None) -> np.ndarray:
    """Lu et al.'s (2020) mean-field approximation of E[softmax(f)], f ~ N(μ, Σ): (N, K).

    p_k ∝ 1 / Σ_j exp((μ_j − μ_k) / sqrt(1 + π/8 · s_kj)), rows renormalised; with ``full``
    s_kj = Σ_kk + Σ_jj − 2Σ_kj (the variance of f_k − f_j, the full covariance), else
    s_kj = Σ_kk + Σ_jj. mean : (N, K). cov : (N, K, K). Deterministic.
    """
    mean, cov = _check_mean_cov(mean, cov)
    return _per_head(lambda m, c: _mean_field(m, c, bool(full)), mean, cov, heads)


def _bridge(mean, cov):
    k = mean.shape[1]
    centre = np.eye(k) - 1.0 / k  # f ↦ f − mean(f): softmax is unchanged
    mean = mean @ centre
    var = np.einsum("nkk->nk", centre @ cov @ centre)
    var = np.maximum(var, np.finfo(np.float64).eps * (1.0 + var.max(axis=1, keepdims=True)))
    # ln(e^{μ_k} Σ_l e^{−μ_l} / K²), then ln(1 − 2/K + that) (1 − 2/K ≥ 0 for K ≥ 2)
    log_tail = mean + _logsumexp(-mean, axis=1)[:, None] - 2.0 * np.log(k)
    log_num = np.logaddexp(np.log(1.0 - 2.0 / k), log_tail) if k > 2 else log_tail
    return softmax(log_num - np.log(var))  # the Dirichlet's mean α / Σ α


def bridge_probabilities(mean, cov, heads=None) -> np.ndarray:
    """The mean of the Laplace bridge's Dirichlet (Hobbhahn et al. 2022) for logits N(μ, Σ):
    (N, K). μ, Σ are first projected onto zero-sum logits (f − mean(f)); only the diagonal of
    the projected Σ enters (floored at round-off). For K = 2 (and a one-logit head) the two
    projected variances are equal and the result is softmax(μ) (sigmoid(μ)) for any Σ; for a
    general Σ it can be far from E[softmax(f)]. mean : (N, K). cov : (N, K, K)."""
    mean, cov = _check_mean_cov(mean, cov)
    return _per_head(_bridge, mean, cov, heads)


def check_method(method) -> str:
    """One of :data:`METHODS`, else ValueError naming ``method``."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


# the methods that read only the logits' variances: the predictive gives them without a K×K
# covariance per input (thousands of classes, a softmax per token)
DIAGONAL_METHODS = ("probit", "mean_field_diag")


def probabilities(
    mean, cov, *, method: str = "probit", n_samples: int = 1000, seed: int = 0, heads=None
) -> np.ndarray:
    """E[softmax(f)], f ~ N(μ, Σ), by ``method`` (:data:`METHODS`): (N, K), one softmax per
    head. mean : (N, K). cov : (N, K, K), or the variances (N, K) for the methods of
    :data:`DIAGONAL_METHODS`. ``n_samples`` and ``seed`` apply to "mc"."""
    method = check_method(method)
    if np.ndim(cov) == 2:
        if method not in DIAGONAL_METHODS:
            raise ValueError(f"method={method!r} needs the logits' covariance, not their variances")
        if method == "mean_field_diag":
            var = _variances(mean, cov)
            cov = var[:, :, None] * np.eye(var.shape[1])[None]
            return mean_field_probabilities(mean, cov, full=False, heads=heads)
    if method == "probit":
        return probit_probabilities(mean, cov, heads)
    if method == "mc":
        return sampled_probabilities(mean, cov, n_samples=n_samples, seed=seed, heads=heads)
    if method == "bridge":
        return bridge_probabilities(mean, cov, heads)
    return mean_field_probabilities(mean, cov, full=method == "mean_field", heads=heads)
