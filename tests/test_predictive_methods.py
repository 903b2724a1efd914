"""The links from a Gaussian over the logits to class probabilities (``predict_proba(method=)``):
probit, Monte Carlo with the full covariance, Lu et al.'s mean-field forms and the Laplace
bridge, each against a large-sample Monte Carlo reference on hand-made μ, Σ, and once end to end
through a fitted Laplace."""

import numpy as np
import pytest
from conftest import make_mlp

import sigma
from sigma import classification

REFERENCE_SAMPLES = 100_000  # Monte Carlo error ≈ 0.5/sqrt(n) ≈ 1.6e-3 per probability


def _gaussians(rng, n=20, k=4, variance=0.5):
    """Logit means (N, K) spread over a few units and random SPD covariances (N, K, K) with
    mean diagonal ≈ ``variance``."""
    mean = 1.5 * rng.normal(size=(n, k))
    a = rng.normal(size=(n, k, k))
    cov = np.einsum("nij,nkj->nik", a, a) * variance / k
    return mean, cov


@pytest.fixture(scope="module")
def case():
    """Hand-made logits and their reference probabilities, at Σ and Σ/10 (computed once)."""
    mean, cov = _gaussians(np.random.default_rng(0))
    return mean, cov, _reference(mean, cov), _reference(mean, 0.1 * cov)


def _reference(mean, cov, heads=None):
    return classification.sampled_probabilities(
        mean, cov, n_samples=REFERENCE_SAMPLES, seed=12345, heads=heads
    )


# measured on these draws (mean Σ_kk 0.50, largest 2.0), worst / mean |error| at Σ and worst at
# Σ/10: probit 0.091 / 0.0164, 0.013; mean_field 0.040 / 0.0097, 0.006; mean_field_diag 0.043 /
# 0.0119, 0.007; mc (2,000 draws) 0.011 / 0.0019, 0.004
@pytest.mark.parametrize(
    "method, worst, average, worst_small",
    [
        ("probit", 0.11, 0.02, 0.02),
        ("mean_field", 0.05, 0.012, 0.01),
        ("mean_field_diag", 0.055, 0.014, 0.01),
        ("mc", 0.02, 0.003, 0.007),
    ],
)
def test_methods_against_large_sample_monte_carlo(case, method, worst, average, worst_small):
    mean, cov, ref, ref_small = case
    probs = classification.probabilities(mean, cov, method=method, n_samples=2000, seed=0)
    assert probs.shape == mean.shape
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
    error = np.abs(probs - ref)
    assert error.max() < worst and error.mean() < average
    # at a tenth of the variance every form is closer
    small = classification.probabilities(mean, 0.1 * cov, method=method, n_samples=2000, seed=0)
    assert np.abs(small - ref_small).max() < worst_small


def test_mean_field_is_closer_than_probit_on_average(case):
    mean, cov, ref, _ = case
    errors = {
        m: np.abs(classification.probabilities(mean, cov, method=m) - ref).mean()
        for m in ("probit", "mean_field")
    }
    assert errors["mean_field"] < 0.8 * errors["probit"], errors


def test_mean_field_uses_the_covariance_of_logit_differences(rng):
    """A shift common to every logit does not change softmax: E[softmax(f)] = softmax(μ)
    exactly. The pairwise mean field sees it (Σ_kk + Σ_jj − 2Σ_kj = 0); the diagonal forms
    do not and shrink the probabilities towards uniform."""
    mean = np.array([[2.0, 0.0, -1.0], [0.5, 0.4, -3.0]])
    cov = 4.0 * np.ones((2, 3, 3))  # f = μ + s·1, s ~ N(0, 4)
    exact = classification.softmax(mean)
    np.testing.assert_allclose(_reference(mean, cov), exact, atol=1e-12)
    np.testing.assert_allclose(
        classification.mean_field_probabilities(mean, cov), exact, rtol=1e-12
    )
    for method in ("probit", "mean_field_diag"):
        assert np.abs(classification.probabilities(mean, cov, method=method) - exact).max() > 0.1
    # with independent logits the two mean-field forms coincide
    diag = np.stack([np.diag(d) for d in rng.uniform(0.1, 2.0, size=(2, 3))])
    np.testing.assert_allclose(
        classification.mean_field_probabilities(mean, diag),
        classification.mean_field_probabilities(mean, diag, full=False),
        rtol=1e-12,
    )


def test_zero_covariance_gives_softmax_and_formulas():
    mean = np.array([[1.0, 0.0, -1.0, 3.0]])
    zero = np.zeros((1, 4, 4))
    for method in ("probit", "mc", "mean_field", "mean_field_diag"):
        np.testing.assert_allclose(
            classification.probabilities(mean, zero, method=method, n_samples=3),
            classification.softmax(mean),
            rtol=1e-12,
        )
    # mean field by its formula for one input, K = 2: p_0 = 1/(1 + exp((μ1 − μ0)/sqrt(1 + λ s)))
    m, c = np.array([[0.7, -0.4]]), np.array([[[1.3, 0.2], [0.2, 0.5]]])
    s = 1.3 + 0.5 - 2 * 0.2
    p0 = 1.0 / (1.0 + np.exp(-1.1 / np.sqrt(1.0 + np.pi / 8.0 * s)))
    np.testing.assert_allclose(
        classification.mean_field_probabilities(m, c), [[p0, 1 - p0]], rtol=1e-12
    )


def _dirichlet_laplace(alpha):
    """Hobbhahn et al.'s Laplace approximation of Dirichlet(α) in the softmax basis: the
    zero-sum logits μ_k = ln α_k − mean(ln α) and their covariance (N, K, K)."""
    k = alpha.shape[1]
    inv = 1.0 / alpha
    total = inv.sum(axis=1)[:, None, None]
    cov = -(inv[:, :, None] + inv[:, None, :]) / k + total / k**2
    idx = np.arange(k)
    cov[:, idx, idx] = inv * (1.0 - 2.0 / k) + total[:, :, 0] / k**2
    log = np.log(alpha)
    return log - log.mean(axis=1, keepdims=True), cov


def test_laplace_bridge_inverts_the_dirichlet_laplace_approximation(rng):
    """The bridge maps the Laplace approximation of Dirichlet(α) back to α: its mean
    probabilities are α/Σα exactly; for a concentrated Dirichlet the Gaussian over the logits
    is close to it, so the bridge is close to the Monte Carlo E[softmax]. A shift common to the
    logits changes nothing (projection onto zero-sum logits)."""
    alpha = rng.uniform(3.0, 10.0, size=(10, 5))
    mean, cov = _dirichlet_laplace(alpha)
    probs = classification.bridge_probabilities(mean, cov)
    np.testing.assert_allclose(probs, alpha / alpha.sum(axis=1, keepdims=True), rtol=1e-12)
    assert np.abs(probs - _reference(mean, cov)).max() < 0.015  # measured 0.011
    shifted = classification.bridge_probabilities(mean + 3.0, cov + 2.0)
    np.testing.assert_allclose(shifted, probs, rtol=1e-10)
    # a wide Dirichlet (α ≈ 0.5–2) is far from Gaussian in the logits: the bridge is off by more
    wide = _dirichlet_laplace(rng.uniform(0.5, 2.0, size=(10, 3)))
    assert np.abs(classification.bridge_probabilities(*wide) - _reference(*wide)).max() > 0.03


def _numpy_monte_carlo(mean, cov, n=50_000, seed=7):
    """E[softmax(f)], f ~ N(μ, Σ), by numpy's own sampler (rng.multivariate_normal, one input
    at a time): a reference independent of sigma's sampled_probabilities. (N, K)."""
    rng = np.random.default_rng(seed)
    out = []
    for m, c in zip(mean, cov, strict=True):
        f = rng.multivariate_normal(m, c, size=n, method="eigh")
        e = np.exp(f - f.max(axis=1, keepdims=True))
        out.append((e / e.sum(axis=1, keepdims=True)).mean(axis=0))
    return np.array(out)


def test_two_class_bridge_is_softmax_of_the_mean_whatever_the_covariance(rng):
    """For K = 2 the centred logits ±(f_1 − f_0)/2 have equal variances, the bridge's 1 − 2/K
    vanishes, so α_k ∝ e^{μ_k}: the bridge is softmax(μ) (a one-logit head: sigmoid(μ)) for any
    Σ, while E[softmax(f)] (an independent numpy Monte Carlo) moves far from it."""
    mean = 2.0 * rng.normal(size=(20, 2))
    a = rng.normal(size=(20, 2, 2))
    cov = 3.0 * np.einsum("nij,nkj->nik", a, a)
    bridge = classification.bridge_probabilities(mean, cov)
    np.testing.assert_allclose(bridge, classification.softmax(mean), rtol=1e-12, atol=1e-15)
    one = classification.probabilities(mean[:, :1], cov[:, :1, :1], method="bridge", heads=[(0, 1)])
    np.testing.assert_allclose(one[:, 0], 1.0 / (1.0 + np.exp(-mean[:, 0])), rtol=1e-12)
    # measured 0.24: the variance is ignored entirely
    assert np.abs(bridge - _numpy_monte_carlo(mean, cov)).max() > 0.1


def test_references_and_the_bridge_against_an_independent_monte_carlo(case):
    """sigma's sampled reference agrees with numpy's sampler (measured 0.0018 worst); the
    bridge, for a general Σ, can be far from E[softmax] (measured worst 0.55, mean 0.14 on
    these draws, where probit is within 0.09)."""
    mean, cov, ref, _ = case
    independent = _numpy_monte_carlo(mean, cov)
    assert np.abs(ref - independent).max() < 0.008  # two Monte Carlo errors of ~2e-3
    probit = classification.probabilities(mean, cov, method="probit")
    assert np.abs(probit - independent).max() < 0.11
    bridge = classification.bridge_probabilities(mean, cov)
    assert np.abs(bridge - independent).max() > 0.3


def test_binary_heads_and_several_heads(rng):
    """A one-logit head is the pair (0, f); every method then agrees with its two-class form,
    and with the Monte Carlo reference."""
    mean = rng.normal(size=(10, 4))
    a = rng.normal(size=(10, 4, 4))
    cov = 0.3 * np.einsum("nij,nkj->nik", a, a)
    heads = [(0, 1), (1, 4)]
    ref = _reference(mean, cov, heads)
    # measured worst errors: probit 0.066, mean_field 0.044, mean_field_diag 0.049
    for method, tol in (("probit", 0.08), ("mean_field", 0.055), ("mean_field_diag", 0.06)):
        p = classification.probabilities(mean, cov, method=method, heads=heads)
        assert p.shape == (10, 4)
        np.testing.assert_allclose(p[:, 1:].sum(axis=1), 1.0, rtol=1e-12)
        pair_mean = np.stack([np.zeros(10), mean[:, 0]], axis=1)
        pair_cov = np.zeros((10, 2, 2))
        pair_cov[:, 1, 1] = cov[:, 0, 0]
        two = classification.probabilities(pair_mean, pair_cov, method=method)
        np.testing.assert_allclose(p[:, 0], two[:, 1], rtol=1e-12)
        assert np.abs(p - ref).max() < tol, method
    p = classification.probabilities(mean, cov, method="bridge", heads=heads)
    np.testing.assert_allclose(p[:, 1:].sum(axis=1), 1.0, rtol=1e-12)
    assert np.all((p >= 0) & (p <= 1))


def test_extreme_logits_stay_finite():
    mean = np.array([[800.0, -800.0, 0.0], [1e4, 0.0, 0.0]])
    cov = np.broadcast_to(np.eye(3), (2, 3, 3)).copy()
    for method in ("mean_field", "mean_field_diag", "bridge"):
        p = classification.probabilities(mean, cov, method=method)
        assert np.all(np.isfinite(p)), method
        np.testing.assert_allclose(p[:, 0], 1.0, atol=1e-12)


def test_laplace_predict_proba_methods_end_to_end(rng):
    """Through a fitted Laplace: each method is its pure function of (f(x), J A⁻¹ Jᵀ), close to
    a large-sample Monte Carlo reference; the same seed gives the same probabilities."""
    x = rng.normal(size=(40, 3))
    labels = rng.integers(0, 3, size=40)
    model = make_mlp(hidden=(6,), n_out=3)
    la = sigma.Laplace(model, x, labels, likelihood="classification", alpha=0.3)
    xt = rng.normal(size=(8, 3)) * 2.0
    mean = sigma.curvature.outputs(model, xt)
    cov = la.predictive_covariance(xt)
    assert np.einsum("nkk->nk", cov).max() > 0.5  # enough weight uncertainty to matter
    ref = _reference(mean, cov)
    # logit variances 9 on average here; measured worst errors: probit 0.050, mean_field 0.035,
    # mean_field_diag 0.073, mc (2,000 draws) 0.009 (the bridge: 0.14)
    for method, tol in (
        ("probit", 0.065), ("mean_field", 0.045), ("mean_field_diag", 0.09), ("mc", 0.02),
    ):  # fmt: skip
        probs = la.predict_proba(xt, method=method, n_samples=2000, seed=7)
        np.testing.assert_allclose(
            probs,
            classification.probabilities(mean, cov, method=method, n_samples=2000, seed=7),
            rtol=1e-10,
        )
        assert np.abs(probs - ref).max() < tol, method
    bridge = la.predict_proba(xt, method="bridge")
    np.testing.assert_allclose(bridge, classification.bridge_probabilities(mean, cov), rtol=1e-10)
    np.testing.assert_array_equal(
        la.predict_proba(xt, method="mc", n_samples=500, seed=3),
        la.predict_proba(xt, method="mc", n_samples=500, seed=3),
    )
    with pytest.raises(ValueError, match=r"method must be one of \('probit', 'mc', 'mean_field'"):
        la.predict_proba(xt, method="laplace")
    with pytest.raises(ValueError, match="n_samples must be at most"):
        la.predict_proba(xt, method="mc", n_samples=10**9)
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        la.predict_proba(xt, method="mc", n_samples=0)
    with pytest.raises(ValueError, match="method must be one of"):
        classification.probabilities(mean, cov, method=None)
