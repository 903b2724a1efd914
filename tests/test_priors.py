"""One prior precision per group of weights: against scikit-learn's ARDRegression, the exact
Gaussian marginal likelihood, explicit matrices for every structure, and the stationarity of
the evidence; the evidence's maximum found where the fixed point fails, or its absence said."""

import keras
import numpy as np
import pytest
import scipy.optimize
from conftest import make_linear, make_mlp
from sklearn.linear_model import ARDRegression

import sigma
from sigma import evidence
from sigma.params import set_flat_weights
from sigma.structures import KFAC, LowRank

F = "float64"


def test_ard_regression_is_one_group_per_weight():
    """ARDRegression (one α per weight, its `lambda_`; β its `alpha_`) with negligible
    hyper-priors and no pruning is our fixed point with prior = one group per weight."""
    rng = np.random.default_rng(3)
    x, x_new = rng.normal(size=(60, 5)), rng.normal(size=(7, 5))
    t = x @ np.array([1.5, -0.4, -2.0, 0.8, 0.7]) + 0.3 * rng.normal(size=60)
    ard = ARDRegression(
        fit_intercept=False, tol=1e-14, max_iter=100_000, threshold_lambda=1e300,
        alpha_1=1e-12, alpha_2=1e-12, lambda_1=1e-12, lambda_2=1e-12,
    ).fit(x, t)  # fmt: skip
    model = make_linear(n_in=5, n_out=1, use_bias=False)
    set_flat_weights(model, ard.coef_)
    la = sigma.Laplace(model, x, t[:, None], prior=np.arange(5), alpha=1.0, beta=1.0)
    assert la.prior_groups == tuple(f"group {g}" for g in range(5))
    la.optimize_evidence(tol=1e-13, max_iter=100_000)
    np.testing.assert_allclose(la.alpha, ard.lambda_, rtol=1e-6)
    np.testing.assert_allclose(la.beta, ard.alpha_, rtol=1e-6)
    mean_ard, std_ard = ard.predict(x_new, return_std=True)
    mean, std = la.predict(x_new)
    np.testing.assert_allclose(mean[:, 0], mean_ard, rtol=1e-8)
    np.testing.assert_allclose(std[:, 0], std_ard, rtol=1e-6)


def _two_layer_linear():
    """f(x) = Dense_a(x[:, :2]) + Dense_b(x[:, 2:]): two layers, linear in their weights."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((5,), dtype=F)
    first = keras.layers.Lambda(lambda z: z[:, :2], dtype=F)(inp)
    rest = keras.layers.Lambda(lambda z: z[:, 2:], dtype=F)(inp)
    a = keras.layers.Dense(1, dtype=F, name="a")(first)
    b = keras.layers.Dense(1, use_bias=False, dtype=F, name="b")(rest)
    return keras.Model(inp, keras.layers.Add(dtype=F)([a, b]))


def test_per_layer_alpha_maximises_the_gaussian_marginal_likelihood():
    """For a model linear in its weights the evidence is exact: maximise ln N(t; 0, β⁻¹I +
    Φ D_α⁻¹ Φᵀ) over (α_a, α_b, β) directly, put the posterior mean into the model, and the
    per-layer fixed point must return the same precisions."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, 5))
    t = x @ np.array([0.4, -0.3, 2.0, -1.5, 1.0]) + 0.5 + 0.4 * rng.normal(size=50)
    phi = np.c_[x[:, :2], np.ones(50), x[:, 2:]]  # weights: a kernel, a bias, b kernel
    groups = np.array([0, 0, 0, 1, 1, 1])

    def neg_log_marginal(z):
        alphas, beta = np.exp(z[:2]), np.exp(z[2])
        cov = phi @ np.diag(1.0 / alphas[groups]) @ phi.T + np.eye(50) / beta
        sign, logdet = np.linalg.slogdet(cov)
        return 0.5 * (logdet + t @ np.linalg.solve(cov, t) + 50 * np.log(2 * np.pi))

    res = scipy.optimize.minimize(neg_log_marginal, np.zeros(3), method="BFGS", tol=1e-12)
    alphas, beta = np.exp(res.x[:2]), np.exp(res.x[2])
    a = np.diag(alphas[groups]) + beta * phi.T @ phi
    w = beta * np.linalg.solve(a, phi.T @ t)
    model = _two_layer_linear()
    set_flat_weights(model, w)  # order: a kernel (2), a bias (1), b kernel (3)
    la = sigma.Laplace(model, x, t[:, None], prior="layer", alpha=1.0, beta=1.0)
    assert la.prior_groups == ("a", "b")
    np.testing.assert_array_equal(la.prior.groups, groups)
    la.optimize_evidence(tol=1e-13)
    np.testing.assert_allclose(la.alpha, alphas, rtol=1e-5)
    np.testing.assert_allclose(la.beta, beta, rtol=1e-5)
    # at the posterior mean the Laplace evidence is the exact marginal likelihood
    assert la.log_evidence(alpha=alphas, beta=beta) == pytest.approx(-res.fun, rel=1e-10)


def _explicit(la):
    """A = D_α + βC with C the structure's own curvature as an explicit matrix."""
    s = la.structure
    c = s.matrix() if callable(s.matrix) else s.matrix
    return np.diag(np.broadcast_to(la.posterior.alpha_weights(), (la.n_params,))) + la.beta * c


def _lowrank_matrix(s):
    c = (s.vectors * s.eigenvalues) @ s.vectors.T
    return c + np.diag(s.residual_diagonal) if s.residual_diagonal is not None else c


@pytest.mark.parametrize(
    ("structure", "options", "prior"),
    [
        ("full", {}, "variable"),
        pytest.param("diag", {}, "variable", marks=pytest.mark.slow),
        pytest.param("kfac", {}, "layer", marks=pytest.mark.slow),
        # kernel and bias apart: the rescaled Kronecker factor
        ("kfac", {}, "variable"),
        pytest.param("last_layer", {}, "variable", marks=pytest.mark.slow),
        # Woodbury, with the exact diagonal of the rest
        pytest.param("lowrank", {"rank": 8}, "variable", marks=pytest.mark.slow),
        ("lowrank", {"rank": 8, "diag": False}, "layer"),
    ],  # the edit loop (make test-fast) keeps full, kfac by variable and pure lowrank
)
def test_every_structure_honours_the_groups_exactly(rng, structure, options, prior):
    model = make_mlp()
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 2))
    la = sigma.Laplace(
        model, x, y, structure=structure, structure_options=options, prior=prior, beta=2.0,
        alpha=np.linspace(0.5, 3.0, 6 if prior == "variable" else 3)[
            : 2 if structure == "last_layer" else None
        ],
    )  # fmt: skip
    s = la.structure
    if structure == "lowrank":
        a = np.diag(la.posterior.alpha_weights()) + la.beta * _lowrank_matrix(s)
    else:
        a = _explicit(la)
    alpha_w, beta = la.posterior.alpha_weights(), la.beta
    np.testing.assert_allclose(s.logdet(alpha_w, beta), np.linalg.slogdet(a)[1], rtol=1e-10)
    inverse = np.linalg.inv(a)
    np.testing.assert_allclose(s.inverse_diagonal(alpha_w, beta), np.diag(inverse), rtol=1e-8)
    idx = np.arange(la.n_params) if structure != "last_layer" else np.arange(54 - 10, 54)
    j = sigma.output_jacobian(model, x[:4])[:, :, idx]
    ref = np.einsum("nkp,pq,nlq->nkl", j, inverse, j)
    np.testing.assert_allclose(la.predictive_covariance(x[:4], noise=False), ref, rtol=1e-7)
    gammas = la.prior.sizes - la.posterior.alpha * la.prior.group_sums(np.diag(inverse))
    np.testing.assert_allclose(la.gammas, gammas, rtol=1e-8, atol=1e-10)


def test_kfac_refuses_a_prior_that_splits_output_units(rng):
    model = make_mlp()
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 2))
    groups = np.arange(54) % 2  # alternating weights: varies across a layer's columns
    with pytest.raises(ValueError, match="'kfac' needs one prior precision per input row"):
        sigma.Laplace(model, x, y, structure="kfac", prior=groups)
    s = KFAC().fit(model, x, likelihood="regression", curvature="ggn", batch_size=None)
    assert s.eigenvalues.shape == (54,)


@pytest.mark.parametrize("prior", ["layer", "variable"])
def test_the_evidence_is_stationary_in_every_log_precision_at_the_optimum(rng, prior):
    model = make_mlp(hidden=(6,), seed=2)
    set_flat_weights(model, rng.normal(size=sigma.num_params(model)))  # biases not all zero
    x = rng.normal(size=(30, 3))
    y = np.tanh(x @ rng.normal(size=(3, 2))) + 0.2 * rng.normal(size=(30, 2))
    la = sigma.Laplace(model, x, y, prior=prior).optimize_evidence(tol=1e-12)
    alphas, beta, h = la.alpha, la.beta, 1e-5
    for g in range(len(alphas)):
        up, down = alphas.copy(), alphas.copy()
        up[g] *= np.exp(h)
        down[g] *= np.exp(-h)
        d = (la.log_evidence(alpha=up) - la.log_evidence(alpha=down)) / (2 * h)
        assert abs(d) < 1e-5 * la.prior.sizes[g], (g, d)
    d = (la.log_evidence(beta=beta * np.exp(h)) - la.log_evidence(beta=beta * np.exp(-h))) / (2 * h)
    assert abs(d) < 1e-5 * la.n_data * la.n_outputs, d
    assert la.gammas.shape == (len(la.prior_groups),)
    assert la.gamma == pytest.approx(la.gammas.sum())


def test_p_much_larger_than_n_converges_to_the_interior_maximum():
    """P = 200 ≫ N = 5: the fixed point oscillates for thousands of iterations; the direct
    maximisation finds the maximum that scipy finds on the same closed form."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 200))
    t = x @ (rng.normal(size=200) / 14) + 0.1 * rng.normal(size=5)
    w = np.linalg.solve(x.T @ x + 3.0 * np.eye(200), x.T @ t)  # a ridge fit: E_D > 0
    model = make_linear(n_in=200, n_out=1, use_bias=False)
    set_flat_weights(model, w)
    la = sigma.Laplace(model, x, t[:, None])
    with pytest.raises(evidence.EvidenceError):  # MacKay's iteration alone does not get there
        evidence.optimize(
            la.structure.eigenvalues, data_error=la.data_error, weight_error=la.weight_error,
            n_params=200, n_obs=5, alpha=1.0, beta=1.0, max_iter=1000,
        )  # fmt: skip
    la.optimize_evidence(tol=1e-12)
    assert la.evidence_result.method == "direct"
    res = scipy.optimize.minimize(
        lambda z: -la.log_evidence(alpha=np.exp(z[0]), beta=np.exp(z[1])),
        np.log([1.0, 1.0]), method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20_000},
    )  # fmt: skip
    np.testing.assert_allclose([la.alpha, la.beta], np.exp(res.x), rtol=1e-4)
    assert la.log_evidence() >= -res.fun - 1e-8


def test_a_network_that_interpolates_its_data_gets_the_boundary_error():
    """P ≥ NK and E_D at round-off: the evidence grows without bound as β → ∞."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 8)).astype("float32")
    model = make_linear(n_in=8, n_out=1, use_bias=False, dtype="float32")
    t = np.asarray(model(x)).astype(np.float64)  # exactly what the model predicts (float32)
    la = sigma.Laplace(model, x, t, beta=1.0)
    with pytest.raises(evidence.EvidenceBoundaryError, match="interpolates its training data") as e:
        la.optimize_evidence()
    assert e.value.which == ["beta"] and "fix_beta=True" in str(e.value)
    assert la.evidence_result is None and la.beta == 1.0  # unchanged
    la.optimize_evidence(fix_beta=True)  # the advertised remedy works
    assert la.alpha > 0


def test_optimize_prior_lowers_the_held_out_nll(rng):
    model = make_mlp(hidden=(8,), seed=1)
    x = rng.normal(size=(60, 3))
    y = np.sin(x @ rng.normal(size=(3, 2))) + 0.1 * rng.normal(size=(60, 2))
    la = sigma.Laplace(model, x[:40], y[:40], alpha=100.0, beta=0.5)
    before = sigma.metrics.gaussian_nll(*la.predict(x[40:]), y[40:])
    la.optimize_prior(x[40:], y[40:])
    after = sigma.metrics.gaussian_nll(*la.predict(x[40:]), y[40:])
    assert after < before
    assert la.prior_result["value"] == pytest.approx(after, rel=1e-9)
    assert la.prior_result["evaluations"] > 3
    with pytest.raises(ValueError, match=r"^y_val has 19 rows but x_val has 20"):
        la.optimize_prior(x[40:], y[41:])
    with pytest.raises(ValueError, match=r"^x_val has shape \(20, 4\)"):
        la.optimize_prior(np.c_[x[40:], x[40:, :1]], y[40:])
    with pytest.raises(ValueError, match="metric must be one of"):
        la.optimize_prior(x[40:], y[40:], metric="accuracy")


def test_optimize_prior_names_the_precision_that_ends_at_a_bound(rng):
    """issue 28: α and β searched together (Nelder–Mead); from β₀ a thousandth of the
    noise precision of the held-out residuals, β can only end at the upper bound (span 10)."""
    model = make_mlp(hidden=(8,), seed=1)
    x = rng.normal(size=(60, 3))
    y = np.sin(x @ rng.normal(size=(3, 2))) + 0.1 * rng.normal(size=(60, 2))
    la = sigma.Laplace(model, x[:40], y[:40], alpha=1.0)
    residual = np.mean((la.predict(x[40:])[0] - y[40:]) ** 2)
    la.beta = 1e-3 / residual
    start = la.posterior
    with pytest.warns(RuntimeWarning, match=r"beta at the upper bound .*span=10 now") as caught:
        la.optimize_prior(x[40:], y[40:], span=10.0)
    assert la.prior_result["at_bound"].get("beta") == "upper"
    assert la.beta == pytest.approx(1e-2 / residual, rel=2e-3)
    with pytest.warns(RuntimeWarning, match=r"beta at the upper bound") as direct:
        start.optimize_prior(x[40:], y[40:], span=10.0)  # the Posterior's own method
    # each names the line that called it, not a line inside sigma
    assert caught[0].filename == direct[0].filename == __file__
    assert caught[0].lineno != direct[0].lineno


def test_bad_priors_are_refused_with_their_name(rng):
    model = make_mlp()
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 2))
    with pytest.raises(
        ValueError, match=r"^prior must be one of \('scalar', 'layer', 'variable'\)"
    ):
        sigma.Laplace(model, x, y, prior="per-unit")
    with pytest.raises(
        ValueError, match=r"one group id per weight of the posterior, shape \(54,\)"
    ):
        sigma.Laplace(model, x, y, prior=np.zeros(10, int))
    with pytest.raises(ValueError, match="group 1 is empty"):
        sigma.Laplace(model, x, y, prior=np.r_[np.zeros(50, int), np.full(4, 2)])
    with pytest.raises(ValueError, match=r"one prior precision per group, shape \(3,\)"):
        sigma.Laplace(model, x, y, prior="layer", alpha=[1.0, 2.0])
    la = sigma.Laplace(model, x, y, prior="layer", alpha=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="^alpha must be a real number"):
        la.log_evidence(alpha="a")
    la.beta = [1.0, 2.0]  # one β per output with one α per layer: both kinds of groups
    assert la.beta.shape == (2,) and np.isfinite(la.log_evidence())


def test_lowrank_diag_against_the_explicit_matrix_and_full(rng):
    """lowrank+diag: C ≈ UΛUᵀ + diag(diag(G) − diag(UΛUᵀ)); its diagonal is G's exactly."""
    model = make_mlp(hidden=(8, 6))
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(30, 2))
    la = sigma.Laplace(model, x, y, structure="lowrank", structure_options={"rank": 6})
    s = la.structure
    g = sigma.gauss_newton(model, x)
    np.testing.assert_allclose(np.diag(_lowrank_matrix(s)), np.diag(g), rtol=1e-9)
    assert not s.evidence_from_eigenvalues and isinstance(s, LowRank)
    a = la.alpha * np.eye(la.n_params) + la.beta * _lowrank_matrix(s)
    j = sigma.output_jacobian(model, x[:5])
    ref = np.einsum("nkp,pq,nlq->nkl", j, np.linalg.inv(a), j)
    np.testing.assert_allclose(la.predictive_covariance(x[:5], noise=False), ref, rtol=1e-8)
    la.optimize_evidence()
    assert la.gamma > 0 and np.isfinite(la.log_evidence())


def test_optimize_prior_refuses_a_validation_set_too_small_for_the_metric(rng):
    """issue 19: one held-out point would set α and β to match its one residual."""
    model = make_mlp(n_out=1)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(30, 1))
    la = sigma.Laplace(model, x[:20], y[:20], alpha=2.0, beta=3.0)
    with pytest.raises(ValueError, match=r"x_val has 1 sample.*needs at least 3 .*beta=False"):
        la.optimize_prior(x[:1], y[:1])
    with pytest.raises(ValueError, match=r"x_val has 1 sample.*1 precision needs at least 2"):
        la.optimize_prior(x[:1], y[:1], beta=False)
    assert (la.alpha, la.beta, la.prior_result) == (2.0, 3.0, None)  # nothing overwritten
    la.optimize_prior(x[20:22], y[20:22], beta=False, max_iter=3)  # the minimum is enough
    la.optimize_prior(x[20:23], y[20:23], max_iter=3)
    labels = rng.integers(0, 2, 30)  # the same model as a one-logit binary classifier
    lc = sigma.Laplace(model, x[:20], labels[:20], likelihood="classification")
    with pytest.raises(ValueError, match=r"x_val has 9 sample.*at least 10 held-out samples"):
        lc.optimize_prior(x[20:29], labels[20:29], metric="ece")
    with pytest.raises(ValueError, match=r"x_val has 1 sample.*at least 2"):
        lc.optimize_prior(x[:1], labels[:1], metric="brier")
    assert lc.prior_result is None
    lc.optimize_prior(x[20:30], labels[20:30], metric="ece", max_iter=3)


def test_a_huge_alpha_is_named_as_the_cause_of_an_ill_conditioned_precision(rng):
    """Groups' alphas 1e12 and 1e-6 apart make A ill-conditioned: the refusal names the
    largest alpha, not the curvature, as what sets A's largest eigenvalue."""
    model = make_mlp(n_in=2, hidden=(3,), n_out=1)
    x = rng.normal(size=(20, 2))
    la = sigma.Laplace(model, x, rng.normal(size=(20, 1)), prior="layer", structure="full")
    alpha = np.full(len(la.prior_groups), 1e-6)
    alpha[0] = 1e12
    with pytest.raises(ValueError, match=r"the largest alpha \(1e\+12\)") as info:
        la.alpha = alpha
        la.predict(x)
    assert "beta*C's largest eigenvalue" not in str(info.value)
