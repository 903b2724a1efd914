"""The evidence framework against closed forms: BayesianRidge, the Gaussian marginal likelihood
of Bayesian linear regression, and the stationarity of the log evidence at the fixed point."""

import functools

import numpy as np
import pytest
from conftest import make_linear, make_mlp
from scipy.stats import multivariate_normal
from sklearn.linear_model import BayesianRidge

import sigma
from sigma import evidence
from sigma.params import set_flat_weights


@pytest.fixture
def linear_data(rng):
    x, x_new = rng.normal(size=(40, 4)), rng.normal(size=(6, 4))
    t = x @ rng.normal(size=(4, 2)) + 0.3 * rng.normal(size=(40, 2))
    return x, t, x_new


def _posterior_mean(x, t, alpha, beta):
    """m = β (α I + β ΦᵀΦ)⁻¹ Φᵀ t, one column per output (β scalar or per output)."""
    betas = np.broadcast_to(beta, (t.shape[1],))
    return np.stack(
        [
            b * np.linalg.solve(alpha * np.eye(x.shape[1]) + b * x.T @ x, x.T @ t[:, k])
            for k, b in enumerate(betas)
        ],
        axis=1,
    )


def _linear_laplace(x, t, weights, **kwargs):
    model = make_linear(n_in=x.shape[1], n_out=t.shape[1], use_bias=False)
    set_flat_weights(model, weights.ravel())  # kernel (D, K) row-major
    return sigma.Laplace(model, x, t, **kwargs)


def test_optimize_evidence_reproduces_bayesian_ridge(linear_data):
    x, t, x_new = linear_data
    t = t[:, 0]
    br = BayesianRidge(
        fit_intercept=False,
        tol=1e-12,
        max_iter=100_000,
        alpha_1=1e-12,
        alpha_2=1e-12,
        lambda_1=1e-12,
        lambda_2=1e-12,
    ).fit(x, t)
    la = _linear_laplace(x, t[:, None], br.coef_[:, None], alpha=1.0, beta=1.0)
    la.optimize_evidence(tol=1e-13, max_iter=10_000)
    np.testing.assert_allclose(la.alpha, br.lambda_, rtol=1e-6)  # our α is BR's lambda_
    np.testing.assert_allclose(la.beta, br.alpha_, rtol=1e-6)  # our β is BR's alpha_
    mean_br, std_br = br.predict(x_new, return_std=True)
    mean, std = la.predict(x_new)
    np.testing.assert_allclose(mean[:, 0], mean_br, rtol=1e-8)
    np.testing.assert_allclose(std[:, 0], std_br, rtol=1e-6)
    # γ is BR's effective number of parameters at its optimum
    lam = np.linalg.eigvalsh(x.T @ x)
    np.testing.assert_allclose(
        la.gamma, np.sum(br.alpha_ * lam / (br.lambda_ + br.alpha_ * lam)), rtol=1e-6
    )


@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_log_evidence_is_the_gaussian_marginal_likelihood(linear_data, curvature):
    """At the posterior mean MacKay's expression is exact: Σ_k ln N(t_k; 0, β⁻¹I + α⁻¹ΦΦᵀ)."""
    x, t, _ = linear_data
    alpha, beta = 0.7, 6.0
    la = _linear_laplace(
        x, t, _posterior_mean(x, t, alpha, beta), alpha=alpha, beta=beta, curvature=curvature
    )
    cov = np.eye(len(x)) / beta + x @ x.T / alpha
    ref = sum(multivariate_normal(np.zeros(len(x)), cov).logpdf(t[:, k]) for k in range(2))
    np.testing.assert_allclose(la.log_evidence(), ref, rtol=1e-10)


def test_log_evidence_on_a_grid_matches_pointwise(linear_data):
    x, t, _ = linear_data
    la = _linear_laplace(x, t, _posterior_mean(x, t, 1.0, 5.0), alpha=1.0, beta=5.0)
    alphas, betas = np.meshgrid([0.1, 1.0, 10.0], [1.0, 5.0], indexing="ij")
    grid = la.log_evidence(alphas, betas)
    assert grid.shape == (3, 2)
    for i, j in np.ndindex(grid.shape):
        la.alpha, la.beta = alphas[i, j], betas[i, j]
        np.testing.assert_allclose(grid[i, j], la.log_evidence(), rtol=1e-12)


def test_per_output_log_evidence_is_the_gaussian_marginal_likelihood(linear_data):
    """One β_k per output of a linear model: the outputs separate, each with its own noise."""
    x, t, _ = linear_data
    alpha, betas = 0.7, np.array([3.0, 20.0])
    la = _linear_laplace(x, t, _posterior_mean(x, t, alpha, betas), alpha=alpha, beta=betas)
    ref = sum(
        multivariate_normal(np.zeros(len(x)), np.eye(len(x)) / b + x @ x.T / alpha).logpdf(t[:, k])
        for k, b in enumerate(betas)
    )
    np.testing.assert_allclose(la.log_evidence(), ref, rtol=1e-10)
    # and the predictive noise is 1/β_k per output
    _, std = la.predict(x[:3])
    _, std_w = la.predict(x[:3], noise=False)
    np.testing.assert_allclose(std**2 - std_w**2, np.tile(1.0 / betas, (3, 1)), rtol=1e-10)


def test_per_output_matches_scalar_when_all_betas_equal(rng):
    model = make_mlp()
    x, y = rng.normal(size=(15, 3)), rng.normal(size=(15, 2))
    la = sigma.Laplace(model, x, y, alpha=0.5, beta=3.0)
    ev, gamma, std, cov = (
        la.log_evidence(),
        la.gamma,
        la.predict(x[:4])[1],
        la.predictive_covariance(x[:4]),
    )
    la.beta = [3.0, 3.0]
    assert la.beta.shape == (2,)
    np.testing.assert_allclose(la.log_evidence(), ev, rtol=1e-10)
    np.testing.assert_allclose(la.gamma, gamma, rtol=1e-10)
    np.testing.assert_allclose(la.predict(x[:4])[1], std, rtol=1e-8)
    np.testing.assert_allclose(la.predictive_covariance(x[:4]), cov, rtol=1e-8, atol=1e-12)


def test_gamma_is_p_minus_alpha_trace_of_inverse(rng, mlp64):
    x, y = rng.normal(size=(15, 3)), rng.normal(size=(15, 2))
    alpha, beta = 0.4, 7.0
    la = sigma.Laplace(mlp64, x, y, alpha=alpha, beta=beta)
    a = alpha * np.eye(la.n_params) + beta * la.structure.matrix  # G, tested elsewhere
    np.testing.assert_allclose(
        la.gamma, la.n_params - alpha * np.trace(np.linalg.inv(a)), rtol=1e-9
    )


def _dlog(la, name, value, h=1e-5):
    """Central difference of log_evidence() in ln(name) at the current value."""
    out = []
    for s in (h, -h):
        setattr(la, name, value * np.exp(s))
        out.append(la.log_evidence())
    setattr(la, name, value)
    return (out[0] - out[1]) / (2 * h)


@pytest.mark.parametrize(
    ("kwargs", "free"),
    [({}, ("alpha", "beta")), ({"fix_beta": True}, ("alpha",)), ({"fix_alpha": True}, ("beta",))],
)
def test_fixed_point_is_a_stationary_point_of_the_log_evidence(rng, kwargs, free):
    """The fixed point zeroes ∂ ln p/∂ ln α and ∂ ln p/∂ ln β (a factor 2 anywhere would not)."""
    model = make_mlp(hidden=(5,))
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(30, 2))
    la = sigma.Laplace(model, x, y, alpha=2.0, beta=3.0).optimize_evidence(tol=1e-12, **kwargs)
    assert la.evidence_result.n_iter > 1
    if "fix_beta" in kwargs:
        assert la.beta == 3.0
    if "fix_alpha" in kwargs:
        assert la.alpha == 2.0
    for name in free:
        assert abs(_dlog(la, name, getattr(la, name))) < 1e-5
    # α = γ/(2E_W) and β = (NK − γ)/(2E_D) hold at the optimum
    if "alpha" in free:
        np.testing.assert_allclose(la.alpha, la.gamma / (2 * la.weight_error), rtol=1e-9)
    if "beta" in free:
        np.testing.assert_allclose(la.beta, (60 - la.gamma) / (2 * la.data_error), rtol=1e-9)


def test_per_output_fixed_point_is_stationary(rng):
    model = make_mlp(hidden=(5,))
    x = rng.normal(size=(30, 3))
    y = rng.normal(size=(30, 2)) * np.array([0.2, 2.0])  # very different noise per output
    la = sigma.Laplace(model, x, y, alpha=1.0, beta=1.0).optimize_evidence(
        per_output=True, tol=1e-12
    )
    betas = la.beta
    assert betas.shape == (2,) and betas[0] > 3 * betas[1]
    assert abs(_dlog(la, "alpha", la.alpha)) < 1e-5
    for k in range(2):
        h = 1e-5
        vals = []
        for s in (h, -h):
            b = betas.copy()
            b[k] *= np.exp(s)
            la.beta = b
            vals.append(la.log_evidence())
        assert abs((vals[0] - vals[1]) / (2 * h)) < 1e-5
    la.beta = betas
    # β_k = (N − γ_k)/(2 E_Dk), γ_k = β_k Tr(A⁻¹ C_k) with C_k from the output's own Jacobian
    gammas = la.beta_gammas
    j = sigma.output_jacobian(model, x)
    blocks = np.einsum("nkp,nkq->kpq", j, j)
    a = la.alpha * np.eye(j.shape[2]) + np.einsum("k,kpq->pq", betas, blocks)
    ref = betas * np.einsum("pq,kqp->k", np.linalg.inv(a), blocks)
    np.testing.assert_allclose(gammas, ref, rtol=1e-9)
    np.testing.assert_allclose(betas, (30 - gammas) / (2 * la.data_errors), rtol=1e-9)
    np.testing.assert_allclose(gammas.sum(), la.gamma, rtol=1e-9)
    # the per-output evidence beats the best single β
    single = sigma.Laplace(model, x, y).optimize_evidence()
    assert la.log_evidence() > single.log_evidence()


def test_one_beta_per_output_with_every_structure_but_lowrank(rng, mlp64):
    """(curvature='hessian' is refused in test_negative_hessian_eigenvalues_...)"""
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 2))
    with pytest.raises(ValueError, match="structure 'lowrank' .* takes one precision group"):
        sigma.Laplace(mlp64, x, y, structure="lowrank", beta=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"one positive precision per output, shape \(2,\)"):
        sigma.Laplace(mlp64, x, y, beta=[1.0, 2.0, 3.0])
    full = sigma.Laplace(mlp64, x, y, beta=[1.0, 2.0], alpha=0.5)
    for structure in ("diag", "kfac", "ekfac"):
        la = sigma.Laplace(mlp64, x, y, structure=structure, beta=[1.0, 2.0], alpha=0.5)
        assert la.beta.shape == (2,) and la.beta_groups == ("output 0", "output 1")
        # one output at a time: σ of each output is its own β's, as full's
        la.beta = [1.0, 2.0]
        _, std = la.predict(x[:3], noise=False)
        mean, std_diag = la.predict(x[:3], noise=True)
        np.testing.assert_allclose(std_diag**2 - std**2, np.broadcast_to([1.0, 0.5], (3, 2)))
    _, std_full = full.predict(x[:3])
    assert np.all(np.isfinite(std_full))


@pytest.fixture
def indefinite(rng):
    """An MLP far from a minimum: its exact Hessian has negative eigenvalues."""
    model = make_mlp(hidden=(6,), seed=3)
    x = rng.normal(size=(20, 3))
    y = 5.0 + 3.0 * rng.normal(size=(20, 2))
    return model, x, y


def test_negative_hessian_eigenvalues_are_refused_or_clipped(indefinite):
    model, x, y = indefinite
    kept = sigma.Laplace(model, x, y, curvature="hessian", alpha=500.0)
    lam = kept.structure.eigenvalues.copy()  # of H, tested against finite differences elsewhere
    n_neg = int(np.sum(lam < -1e-9 * np.abs(lam).max()))
    assert n_neg > 0 and 500.0 + lam.min() > 0
    with pytest.raises(ValueError, match="one beta per output needs curvature='ggn'"):
        kept.optimize_evidence(per_output=True)
    for call in (kept.optimize_evidence, kept.log_evidence, lambda: kept.gamma):
        with pytest.raises(
            ValueError, match=rf"has {n_neg} negative eigenvalue\(s\).*most negative"
        ):
            call()
    with pytest.warns(
        RuntimeWarning,
        match=rf"{n_neg} negative eigenvalue\(s\) out of {sigma.num_params(model)} \(most negative {lam.min():.4g}",
    ):
        la = sigma.Laplace(model, x, y, curvature="hessian", alpha=1e-3, negative="clip")
    assert la.structure.eigenvalues.min() >= 0
    la.optimize_evidence()
    # evidence and γ from the positive part of H
    clipped = np.maximum(lam, 0.0)
    ref = evidence.log_evidence(
        clipped,
        data_error=la.data_error,
        weight_error=la.weight_error,
        n_params=la.n_params,
        n_obs=40,
        alpha=la.alpha,
        beta=la.beta,
    )
    np.testing.assert_allclose(la.log_evidence(), ref, rtol=1e-9)
    _, std = la.predict(x)
    assert np.all(np.isfinite(std)) and np.all(std**2 >= 1.0 / la.beta)


def test_divergence_and_non_convergence_raise_with_last_values():
    # rank P = 5 ≥ NK = 3: γ → 5 > NK, so β ← (NK − γ)/(2E_D) turns negative
    with pytest.raises(evidence.EvidenceError, match="diverged.*last valid alpha=.*beta=") as err:
        evidence.optimize(
            np.full(5, 100.0),
            data_error=0.1,
            weight_error=1.0,
            n_params=5,
            n_obs=3,
            alpha=1.0,
            beta=1.0,
        )
    assert err.value.alpha > 0 and err.value.beta > 0
    with pytest.raises(evidence.EvidenceError, match="did not converge in 2 iterations") as err:
        evidence.optimize(
            np.arange(1.0, 6.0),
            data_error=3.0,
            weight_error=1.0,
            n_params=8,
            n_obs=30,
            alpha=1.0,
            beta=1.0,
            max_iter=2,
        )
    assert err.value.n_iter == 2 and err.value.alpha == err.value.alpha  # a number, not None
    with pytest.raises(ValueError, match="E_D = 0.*fix_beta=True"):
        evidence.optimize(
            np.ones(3), data_error=0.0, weight_error=1.0, n_params=3, n_obs=9, alpha=1.0, beta=1.0
        )


def test_evidence_functions_check_their_inputs():
    with pytest.raises(ValueError, match="negative eigenvalue"):
        evidence.effective_parameters(np.array([1.0, -0.5]), 2, alpha=1.0)
    with pytest.raises(ValueError, match="alpha must be finite and > 0"):
        evidence.log_evidence(
            np.ones(2), data_error=1.0, weight_error=1.0, n_params=2, n_obs=4, alpha=0.0, beta=1.0
        )
    with pytest.raises(ValueError, match="eigenvalues has 3 entries but n_params is 2"):
        evidence.effective_parameters(np.ones(3), 2, alpha=1.0)
    # γ counts the zero eigenvalues as undetermined: Σ βc/(βc + α) over the given ones only
    np.testing.assert_allclose(
        evidence.effective_parameters([1.0, 3.0], 5, alpha=1.0, beta=1.0), 0.5 + 0.75
    )


def test_optimize_from_alpha_zero(linear_data):
    x, t, _ = linear_data
    la = _linear_laplace(x, t, _posterior_mean(x, t, 1.0, 5.0), alpha=0.0, beta=5.0)
    ref = _linear_laplace(x, t, _posterior_mean(x, t, 1.0, 5.0), alpha=1.0, beta=5.0)
    la.optimize_evidence(tol=1e-12)
    ref.optimize_evidence(tol=1e-12)
    np.testing.assert_allclose([la.alpha, la.beta], [ref.alpha, ref.beta], rtol=1e-8)


def test_failed_optimisation_leaves_the_laplace_unchanged(linear_data):
    x, t, _ = linear_data
    la = _linear_laplace(x, t, _posterior_mean(x, t, 1.0, 5.0), alpha=1.0, beta=5.0)
    with pytest.raises(
        evidence.EvidenceError, match="did not converge in 1 iterations.*last alpha="
    ):
        la.optimize_evidence(max_iter=1)
    assert (la.alpha, la.beta, la.evidence_result) == (1.0, 5.0, None)


@pytest.mark.parametrize("scale, interior", [(1e-20, True), (1e-30, False)])
def test_a_fixed_point_beyond_the_search_box_is_the_edge_of_the_space(scale, interior):
    """With a curvature c·scale the data barely touch (a tempered classifier, no β), the
    evidence's stationary point is α* ≈ √(Σc·scale / (2E_W)) (there γ ≈ Σc·scale/α ≪ 1 and
    ½γ = αE_W). At scale 1e-20 it lies 10 decades below P/(2E_W) and is the maximum; at 1e-30
    it lies 15 decades below, beyond the 12 of the direct search's box: the edge, α → 0.
    (Started there: from elsewhere the fixed point α ← Σc·scale/(2E_W α) alternates between
    two values, and the direct search takes over.)"""
    c = np.linspace(1.0, 3.0, 10) * scale
    weight_error, p = 2.5, 10
    expected = np.sqrt(c.sum() / (2.0 * weight_error))
    for direct in (True, False):
        call = functools.partial(
            evidence.maximize, evidence.eigen_terms(c, p), weight_errors=[weight_error],
            sizes=[p], errors=[1.0], counts=[0], noise=[False], alphas=[expected], betas=[1.0],
            fix_beta=True, direct=direct,
        )  # fmt: skip
        if interior:
            assert float(call().alpha) == pytest.approx(expected, rel=1e-6)
        else:
            with pytest.raises(evidence.EvidenceBoundaryError, match=r"alpha → 0") as e:
                call()
            assert e.value.which == ["alpha"]


def test_a_slow_fixed_point_hands_over_to_the_direct_search_at_the_same_maximum():
    """With one α per layer MacKay's fixed point converges linearly and slowly (its steps
    shrink by ~0.85 each: 131 iterations here, each a Cholesky factorisation of A for a full
    structure); maximize hands over to the direct search once tol is more than evidence.SLOW
    iterations away, and reaches the same maximum in a fraction of the evaluations."""
    from sigma.evidence import posterior as posterior_evidence

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = np.sin(x @ rng.normal(size=(3, 2))) + 0.1 * rng.normal(size=(60, 2))
    post = sigma.Laplace(make_mlp(hidden=(16, 16)), x, y, structure="full", prior="layer").posterior
    terms = posterior_evidence.terms(post)
    calls = []

    def counted(a, b):
        calls.append(1)
        return terms(a, b)

    start = dict(
        weight_errors=post.weight_errors, sizes=post.prior.sizes, errors=post.group_errors,
        counts=post.group_counts, noise=post.groups.free, alphas=post.alpha, betas=post.beta,
    )  # fmt: skip
    slow = evidence.maximize(counted, fixed_point_iter=1000, direct=False, **start)
    n_slow = len(calls)
    calls.clear()
    fast = evidence.maximize(counted, **start)
    assert slow.method == "fixed point" and slow.n_iter > 100
    assert fast.method == "direct" and len(calls) < n_slow / 4
    np.testing.assert_allclose(fast.alpha, slow.alpha, rtol=1e-7)
    np.testing.assert_allclose(fast.beta, slow.beta, rtol=1e-7)
    assert fast.log_evidence == pytest.approx(slow.log_evidence, abs=1e-9)
    # and to tol: the fixed point finishes what L-BFGS-B on ln p cannot resolve
    for result in (slow, fast):
        residual = np.log(result.gammas / (2.0 * post.weight_errors * result.alpha))
        assert np.max(np.abs(residual)) < 1e-8
