"""The likelihood's temperature: Laplace(..., temperature=T) is the Laplace approximation of the
tempered likelihood p(y | f)^(1/T), whose Gauss–Newton curvature is G/T and whose data term in
the evidence is the cross-entropy/T. Checked against those quantities built by hand."""

import warnings

import numpy as np
import pytest
import scipy.optimize
from conftest import make_mlp

import sigma
from sigma.evidence import EvidenceBoundaryError


@pytest.fixture
def problem(rng):
    x = rng.normal(size=(30, 3))
    labels = rng.integers(0, 3, size=30)
    return make_mlp(hidden=(4,), n_out=3), x, labels


def _by_hand(la_plain, model, x_test, alpha, temperature):
    """J (αI + G/T)⁻¹ Jᵀ and −E/T − αE_W − ½ ln|αI + G/T| + (P/2) ln α from the untempered
    GGN G (tests/test_classification.py checks it against an explicit formula)."""
    g = la_plain.structure.matrix
    p = g.shape[0]
    a = alpha * np.eye(p) + g / temperature
    j = sigma.output_jacobian(model, x_test)
    cov = j @ np.linalg.inv(a) @ np.swapaxes(j, 1, 2)
    evidence = (
        -la_plain.data_error / temperature
        - alpha * la_plain.weight_error
        - 0.5 * np.linalg.slogdet(a)[1]
        + 0.5 * p * np.log(alpha)
    )
    return cov, evidence


@pytest.mark.parametrize("temperature", [0.1, 0.5, 3.0])
def test_tempered_curvature_and_evidence_by_hand(problem, temperature):
    model, x, labels = problem
    plain = sigma.Laplace(model, x, labels, likelihood="classification")
    la = sigma.Laplace(
        model, x, labels, likelihood="classification", temperature=temperature, alpha=0.7
    )
    assert la.temperature == temperature and la.beta == pytest.approx(1.0 / temperature)
    cov, ev = _by_hand(plain, model, x[:6], 0.7, temperature)
    np.testing.assert_allclose(la.predictive_covariance(x[:6]), cov, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(la.log_evidence(), ev, rtol=1e-10)
    np.testing.assert_allclose(la.log_evidence(2.0), _by_hand(plain, model, x[:1], 2.0, temperature)[1], rtol=1e-10)  # fmt: skip
    # the evidence's optimum: α = γ/(2E_W) with γ from G/T, a stationary point; β stays 1/T
    la.optimize_evidence(tol=1e-12)
    assert la.temperature == pytest.approx(temperature) and la.evidence_result.beta == la.beta
    lam = np.linalg.eigvalsh(plain.structure.matrix) / temperature
    gamma = np.sum(lam / (lam + la.alpha))
    np.testing.assert_allclose(la.gamma, gamma, rtol=1e-8)
    np.testing.assert_allclose(la.alpha, gamma / (2 * la.weight_error), rtol=1e-8)
    h = 1e-5
    slope = (la.log_evidence(la.alpha * np.exp(h)) - la.log_evidence(la.alpha * np.exp(-h))) / (
        2 * h
    )
    assert abs(slope) < 1e-5


def test_tempered_evidence_with_prior_groups_and_diag(problem):
    """The non-spectral evidence path (one α per layer; the diagonal structure) tempers too."""
    model, x, labels = problem
    t, alphas = 0.4, np.array([0.5, 2.0])
    layered = sigma.Laplace(
        model, x, labels, likelihood="classification", prior="layer", alpha=alphas, temperature=t
    )
    plain = sigma.Laplace(model, x, labels, likelihood="classification")
    g = plain.structure.matrix
    d = layered.prior.per_weight(alphas)
    a = np.diag(d) + g / t
    ev = (
        -plain.data_error / t
        - float(alphas @ layered.weight_errors)
        - 0.5 * np.linalg.slogdet(a)[1]
        + 0.5 * float(layered.prior.sizes @ np.log(alphas))
    )
    np.testing.assert_allclose(layered.log_evidence(), ev, rtol=1e-10)
    layered.optimize_evidence(tol=1e-10)
    assert layered.beta == pytest.approx(1.0 / t)
    diag = sigma.Laplace(
        model, x, labels, likelihood="classification", structure="diag", temperature=t
    )
    a_diag = 1.0 + np.diag(g) / t
    ev_diag = (
        -plain.data_error / t
        - plain.weight_error
        - 0.5 * np.sum(np.log(a_diag))
    )  # fmt: skip
    np.testing.assert_allclose(diag.log_evidence(), ev_diag, rtol=1e-10)
    j = sigma.output_jacobian(model, x[:4])
    np.testing.assert_allclose(
        diag.predictive_covariance(x[:4]),
        np.einsum("nkp,p,njp->nkj", j, 1.0 / a_diag, j),
        rtol=1e-8,
        atol=1e-14,
    )


def test_temperature_one_is_the_plain_likelihood_and_cold_is_confident(problem):
    model, x, labels = problem
    plain = sigma.Laplace(model, x, labels, likelihood="classification", alpha=0.5)
    one = sigma.Laplace(model, x, labels, likelihood="classification", alpha=0.5, temperature=1)
    np.testing.assert_array_equal(plain.predict_proba(x), one.predict_proba(x))
    assert plain.log_evidence() == one.log_evidence()
    hot = sigma.Laplace(model, x, labels, likelihood="classification", alpha=0.5, temperature=10)
    cold = sigma.Laplace(model, x, labels, likelihood="classification", alpha=0.5, temperature=0.1)
    conf = {k: v.predict_proba(x).max(axis=1).mean() for k, v in (("hot", hot), ("cold", cold))}
    assert conf["hot"] < plain.predict_proba(x).max(axis=1).mean() < conf["cold"]


def test_temperature_survives_save_and_load(problem, tmp_path):
    model, x, labels = problem
    la = sigma.Laplace(model, x, labels, likelihood="classification", temperature=0.25)
    la.optimize_evidence()
    back = sigma.Laplace.load(la.save(tmp_path / "t.npz"), model)
    assert back.temperature == pytest.approx(0.25)
    np.testing.assert_allclose(back.log_evidence(), la.log_evidence(), rtol=1e-12)
    np.testing.assert_allclose(back.predict_proba(x), la.predict_proba(x), rtol=1e-12)


@pytest.mark.parametrize("bad", [0, -1.0, np.nan, np.inf, "2", True, None, [1.0]])
def test_bad_temperature(problem, bad):
    model, x, labels = problem
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        sigma.Laplace(model, x, labels, likelihood="classification", temperature=bad)


def test_temperature_is_for_classification(rng):
    model = make_mlp(n_out=2)
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 2))
    with pytest.raises(ValueError, match="temperature applies to likelihood='classification'"):
        sigma.Laplace(model, x, y, temperature=2.0)
    assert sigma.Laplace(model, x, y, temperature=1.0).temperature == 1.0
    # a heteroscedastic model ([μ | ln σ²], its own noise): not tempered either
    with pytest.raises(ValueError, match="likelihood='heteroscedastic'"):
        sigma.Laplace(model, x, y[:, :1], likelihood="heteroscedastic", temperature=0.5)
    assert sigma.Laplace(model, x, y[:, :1], likelihood="heteroscedastic").temperature == 1.0


def test_setting_the_temperature_is_a_refit_at_that_temperature(problem):
    model, x, labels = problem
    la = sigma.Laplace(model, x, labels, likelihood="classification", alpha=0.5)
    la.temperature = 0.2
    fresh = sigma.Laplace(model, x, labels, likelihood="classification", alpha=0.5, temperature=0.2)
    assert la.temperature == pytest.approx(0.2)
    np.testing.assert_allclose(la.predict_proba(x), fresh.predict_proba(x), rtol=1e-10)
    np.testing.assert_allclose(la.log_evidence(), fresh.log_evidence(), rtol=1e-12)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        la.temperature = -1.0
    assert la.temperature == pytest.approx(0.2)


def test_served_model_carries_the_temperature(problem):
    model, x, labels = problem
    la = sigma.Laplace(model, x, labels, likelihood="classification", temperature=0.3, alpha=0.5)
    served = la.to_keras()
    np.testing.assert_allclose(
        np.asarray(served(x[:5])), la.predict_proba(x[:5]), rtol=1e-6, atol=1e-8
    )


def test_a_tiny_temperature_is_refused_by_name_and_the_hint_says_temperature(problem):
    """T = 1e-300 was refused as "beta must be at most 1e+150 … got 1e+300"; an ill-conditioned
    classifier was told to use "a smaller beta", which it cannot set."""
    model, x, labels = problem
    with pytest.raises(ValueError, match=r"^temperature must be at least 1e-150.*got 1e-300"):
        sigma.Laplace(model, x, labels, likelihood="classification", temperature=1e-300)
    la = sigma.Laplace(model, x, labels, likelihood="classification")
    with pytest.raises(ValueError, match=r"^temperature must be at least"):
        la.temperature = 1e-200
    with pytest.raises(ValueError, match=r"largest eigenvalue") as e:  # T at its bound
        sigma.Laplace(model, x, labels, likelihood="classification", temperature=1e-150)
    assert "or a larger temperature" in str(e.value) and "smaller beta" not in str(e.value)


def test_optimize_prior_says_when_its_search_ends_at_a_bound(problem, rng):
    """issue 28: (α alone, temperature=False) on a tempered classifier whose held-out NLL
    keeps falling as α grows across
    the whole range searched (α₀ = 1e-3, span 10: checked on a grid), the search ends at
    span × α₀ — and says so, naming span, in a warning and in ``prior_result["at_bound"]``.
    Where the grid's minimum is inside the range, nothing is said."""
    model, x, labels = problem
    x_val, labels_val = rng.normal(size=(20, 3)), rng.integers(0, 3, size=20)
    la = sigma.Laplace(model, x, labels, likelihood="classification", temperature=0.01)

    def held_out(alpha):
        la.alpha = alpha
        return sigma.metrics.nll(la.predict_proba(x_val), labels_val)

    assert np.all(np.diff([held_out(a) for a in np.geomspace(1e-4, 1e-2, 9)]) < 0)
    la.alpha = 1e-3
    with pytest.warns(RuntimeWarning, match=r"alpha at the upper bound .*span=10 now"):
        la.optimize_prior(x_val, labels_val, temperature=False, span=10.0)
    assert la.prior_result["at_bound"] == {"alpha": "upper"}
    assert la.alpha == pytest.approx(1e-2, rel=2e-3)  # within 2·tol (in ln) of the bound

    grid = np.geomspace(1e-4, 10.0, 29)  # (below 2e-5, A = αI + G/T is ill-conditioned)
    best = grid[np.argmin([held_out(a) for a in grid])]
    assert grid[1] < best < grid[-2]  # an interior minimum of the range searched, [1e-7, 10]
    la.alpha = 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        la.optimize_prior(x_val, labels_val, temperature=False, span=1e4)
    assert la.prior_result["at_bound"] == {}
    assert la.alpha == pytest.approx(best, rel=0.6)  # the grid's step is a factor 1.5


@pytest.mark.parametrize("structure", ["full", "diag", "kfac"])
@pytest.mark.parametrize("prior", ["scalar", "layer"])
def test_a_huge_temperature_is_the_evidence_boundary(problem, structure, prior):
    """issue 28: at T = 1e30 the data weigh 1e-30 of the prior and γ ≈ 1e-21: the evidence's
    slope in ln α is −α E_W alone, which fell below the direct search's absolute tolerance at
    α ≈ 1e-7 — an "optimum" with uniform probabilities and no error. The maximum, if any,
    lies more than 12 decades below P/(2E_W), where the search's box ends: it is the edge of
    the space, α → 0, and optimize_evidence says so without changing the Laplace."""
    model, x, labels = problem
    la = sigma.Laplace(
        model, x, labels, likelihood="classification", temperature=1e30, structure=structure,
        prior=prior,
    )  # fmt: skip
    before = la.alpha
    with pytest.raises(EvidenceBoundaryError, match=r"alpha.* → 0") as e:
        la.optimize_evidence()
    assert all(name.startswith("alpha") for name in e.value.which)
    assert "temperature=1e+30" in "".join(getattr(e.value, "__notes__", []))
    assert np.all(la.alpha == before) and la.evidence_result is None


def test_a_large_temperature_finds_the_evidence_maximum_where_the_terms_balance(problem):
    """issue 28: at T = 1e20 the maximum is interior (≈ 3e-10, 10 decades below P/(2E_W)),
    where ½γ(α) = α E_W, γ(α) = Σ λ_i/(λ_i + α) with λ the eigenvalues of G/T (G by the
    untempered Laplace, the root by Brent's method); the search stopped 2 decades above it."""
    model, x, labels = problem
    lam = (
        np.linalg.eigvalsh(
            sigma.Laplace(model, x, labels, likelihood="classification").structure.matrix
        )
        / 1e20
    )
    lam = lam[lam > 0]
    la = sigma.Laplace(model, x, labels, likelihood="classification", temperature=1e20)

    def slope(log_alpha):
        alpha = np.exp(log_alpha)
        return 0.5 * np.sum(lam / (lam + alpha)) - alpha * la.weight_error

    root = np.exp(scipy.optimize.brentq(slope, np.log(1e-20), np.log(1e-3), xtol=1e-14))
    la.optimize_evidence()
    assert la.alpha == pytest.approx(root, rel=1e-5)


def test_the_temperature_search_stays_inside_its_range(problem, rng):
    """The ends of the search are start ÷ span and start × span exactly: a search centred on
    T = 0.01 with span 100 never reports a T above 1 (t0·exp(ln span) rounds to 1 + 4e-16)."""
    model, x, labels = problem
    x_val, labels_val = rng.normal(size=(20, 3)), rng.integers(0, 3, size=20)
    la = sigma.Laplace(model, x, labels, likelihood="classification", temperature=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the best T may be at a bound
        la.optimize_prior(x_val, labels_val, span=100.0)
    tried = [t for t, _ in la.prior_result["values"]]
    assert min(tried) == 1e-4 and max(tried) == 1.0
    assert 1e-4 <= la.temperature <= 1.0
