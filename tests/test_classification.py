"""Classification: the softmax GGN against the exact Hessian and an explicit formula, the probit
and sampled predictives against quadrature, the evidence against numerical integration."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_linear, make_mlp
from scipy.optimize import minimize

import sigma
from sigma import classification
from sigma.params import set_flat_weights


@pytest.fixture
def labelled(rng):
    x = rng.normal(size=(30, 3))
    return x, rng.integers(0, 3, size=30)


def test_ggn_equals_hessian_and_explicit_softmax_formula_for_linear_model(labelled):
    x, labels = labelled
    model = make_linear(n_in=3, n_out=3)
    set_flat_weights(model, np.random.default_rng(1).normal(size=12))
    g = sigma.gauss_newton(model, x, likelihood="classification")
    h = sigma.hessian(model, x, labels, likelihood="classification")
    np.testing.assert_allclose(g, h, rtol=1e-10, atol=1e-12)
    # explicit: J_n[k] = ∂f_k/∂w for kernel (3, 3) row-major then bias; Λ = diag(p) − p pᵀ
    p = classification.softmax(sigma.curvature.outputs(model, x))
    ref = np.zeros((12, 12))
    for xn, pn in zip(x, p, strict=True):
        j = np.concatenate([np.kron(xn, np.eye(3)), np.eye(3)], axis=1)  # (K, P)
        ref += j.T @ (np.diag(pn) - np.outer(pn, pn)) @ j
    np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("heads", [None, ((0, 3), (3, 6), (6, 7), (7, 8), (8, 12))])
def test_the_output_hessian_root_has_one_column_fewer_per_softmax_head(rng, heads):
    """Λ = diag(p) − p pᵀ has rank C − 1 (Λ 1 = 0), so L (K, K') with C − 1 columns per head
    of C classes (one per binary head) is enough: L Lᵀ = Λ block by block, and ``pseudo`` and
    ``root`` are Lᵀ and L. Logits up to ±9: a head's last class from near-certain to ~1e-8."""
    k = 5 if heads is None else 12
    lik = sigma.likelihoods.Classification(heads)
    f = rng.normal(size=(8, k)) * 3.0
    root = lik.hessian_sqrt(tf.constant(f)).numpy()
    assert root.shape == (8, k, 4 if heads is None else 2 + 2 + 1 + 1 + 3)
    assert lik.pseudo_groups(k).shape == (root.shape[2],)
    for n in range(len(f)):
        lam = np.zeros((k, k))
        for s, e in heads or ((0, k),):
            if e - s == 1:
                p = 1.0 / (1.0 + np.exp(-f[n, s]))
                lam[s, s] = p * (1.0 - p)
            else:
                p = classification.softmax(f[n, s:e][None])[0]
                lam[s:e, s:e] = np.diag(p) - np.outer(p, p)
        np.testing.assert_allclose(root[n] @ root[n].T, lam, rtol=0, atol=1e-15)
    u = rng.normal(size=(8, root.shape[2], 3))
    np.testing.assert_allclose(
        lik.root(tf.constant(f), tf.constant(u)), np.einsum("bkj,bjp->bkp", root, u), atol=1e-14
    )
    j = rng.normal(size=(8, k, 3))
    np.testing.assert_allclose(
        lik.pseudo(tf.constant(f), tf.constant(j)), np.einsum("bkj,bkp->bjp", root, j), atol=1e-14
    )


def test_the_root_of_a_confident_float32_head_keeps_its_curvature(rng):
    """The pseudo-outputs are formed in the model's dtype: a float32 head with logits of scale 10
    (most samples near-certain of one class) still gives L Lᵀ = Λ to 1e-4 of Λ's largest
    entry, because the reference class is each sample's most probable one (the last class as
    reference lost 3e-2 there, the C-column root of Λ 3e-4)."""
    f = rng.normal(size=(300, 10)) * 10.0
    root = sigma.likelihoods.Classification().hessian_sqrt(tf.constant(f, tf.float32)).numpy()
    p = classification.softmax(f)
    lam = np.einsum("bk,kl->bkl", p, np.eye(10)) - np.einsum("bk,bl->bkl", p, p)
    gram = np.einsum("bkj,blj->bkl", root.astype(np.float64), root.astype(np.float64))
    error = np.abs(gram - lam).max(axis=(1, 2)) / np.abs(lam).max(axis=(1, 2))
    assert error.max() < 1e-4


def _gauss_hermite_expectation(mean, cov, n=24):
    """E[softmax(f)], f ~ N(mean, cov) (K ≤ 3), by tensor-product Gauss–Hermite quadrature."""
    k = mean.size
    z, w = np.polynomial.hermite.hermgauss(n)
    grids = np.meshgrid(*([z] * k), indexing="ij")
    nodes = np.stack([g.ravel() for g in grids], axis=1)  # (n^K, K)
    weights = np.prod(np.stack(np.meshgrid(*([w] * k), indexing="ij")).reshape(k, -1), axis=0)
    lam, vec = np.linalg.eigh(cov)
    root = vec * np.sqrt(np.maximum(lam, 0.0))
    f = mean + np.sqrt(2.0) * nodes @ root.T
    return weights @ classification.softmax(f) / np.pi ** (k / 2)


def test_probit_and_sampling_against_quadrature(rng):
    mean = np.array([[1.0, 0.0, -0.5], [0.2, 0.1, 0.0], [-1.0, 2.0, 0.5]])
    a = rng.normal(size=(3, 3, 3))
    cov = np.einsum("nij,nkj->nik", a, a) * np.array([0.3, 1.0, 0.6])[:, None, None]
    exact = np.stack([_gauss_hermite_expectation(m, c) for m, c in zip(mean, cov, strict=True)])
    mc = classification.sampled_probabilities(mean, cov, n_samples=100_000, seed=1)
    np.testing.assert_allclose(mc, exact, atol=4e-3)  # Monte Carlo error ≈ 0.5/sqrt(n) ≈ 1.6e-3
    # probit is an approximation that ignores the correlations of the logits: within 0.02 for
    # logit variances up to ~0.3 (at variances ~1 its error reaches ~0.05; see classification.py)
    small = 0.1 * cov
    exact_small = np.stack(
        [_gauss_hermite_expectation(m, c) for m, c in zip(mean, small, strict=True)]
    )
    assert np.einsum("nkk->nk", small).max() > 0.2
    assert np.abs(classification.probit_probabilities(mean, small) - exact_small).max() < 0.02
    # the same seed gives the same draws; another seed does not
    a1 = classification.sampled_probabilities(mean, cov, n_samples=50, seed=3)
    np.testing.assert_array_equal(
        a1, classification.sampled_probabilities(mean, cov, n_samples=50, seed=3)
    )
    assert not np.array_equal(
        a1, classification.sampled_probabilities(mean, cov, n_samples=50, seed=4)
    )


def test_probit_formula_and_zero_covariance():
    mean = np.array([[1.0, 0.0, -1.0]])
    np.testing.assert_allclose(
        classification.probit_probabilities(mean, np.zeros((1, 3, 3))), classification.softmax(mean)
    )
    np.testing.assert_allclose(
        classification.sampled_probabilities(mean, np.zeros((1, 3, 3)), n_samples=3),
        classification.softmax(mean),
    )
    cov = np.diag([2.0, 0.0, 0.0])[None]  # only the first logit is scaled: 1/sqrt(1 + π/8 · 2)
    np.testing.assert_allclose(
        classification.probit_probabilities(mean, cov),
        classification.softmax(np.array([[1.0 / np.sqrt(1.0 + np.pi / 4.0), 0.0, -1.0]])),
        rtol=1e-12,
    )


@pytest.fixture
def clf(labelled):
    x, labels = labelled
    model = make_mlp(hidden=(4,), n_out=3)
    return model, x, labels, sigma.Laplace(model, x, labels, likelihood="classification", alpha=0.5)


def test_laplace_classification_predictive(clf):
    model, x, labels, la = clf
    # logit covariance J A⁻¹ Jᵀ with A = α I + G (no noise term), from explicit matrices
    a = 0.5 * np.eye(la.n_params) + la.structure.matrix  # the softmax GGN, tested above
    j = sigma.output_jacobian(model, x[:5])
    cov = la.predictive_covariance(x[:5])
    np.testing.assert_allclose(
        cov, j @ np.linalg.inv(a) @ np.swapaxes(j, 1, 2), rtol=1e-8, atol=1e-12
    )
    probs = la.predict(x[:5])
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_array_equal(probs, la.predict_proba(x[:5], method="probit"))
    mean = sigma.curvature.outputs(model, x[:5])
    np.testing.assert_allclose(probs, classification.probit_probabilities(mean, cov), rtol=1e-12)
    mc = la.predict(x[:5], method="mc", n_samples=20_000, seed=0)
    np.testing.assert_allclose(
        mc, classification.sampled_probabilities(mean, cov, n_samples=20_000, seed=0), rtol=1e-10
    )
    # one-hot targets give the same posterior as integer labels
    onehot = sigma.data_error(model, x, np.eye(3)[labels], likelihood="classification")
    np.testing.assert_allclose(onehot, la.data_error, rtol=1e-12)


def test_classification_evidence_alpha_is_stationary(clf):
    _, _, _, la = clf
    la.optimize_evidence(tol=1e-12)
    assert la.beta == 1.0
    np.testing.assert_allclose(la.alpha, la.gamma / (2 * la.weight_error), rtol=1e-9)
    h, a = 1e-5, la.alpha
    up, down = la.log_evidence(a * np.exp(h)), la.log_evidence(a * np.exp(-h))
    assert abs((up - down) / (2 * h)) < 1e-5


def test_classification_evidence_against_numerical_integration(rng):
    """Two weights (logits w₁x, w₂x): ln ∫ exp(−E(w)) N(w; 0, α⁻¹I) dw on a grid vs Laplace
    at the MAP weights (−E − αE_W − ½ ln|A| + (P/2) ln α)."""
    x = rng.normal(size=(60, 1))
    labels = (rng.random(60) < 1.0 / (1.0 + np.exp(-2.0 * x[:, 0]))).astype(int)
    alpha = 3.0

    def neg_log_lik(w):  # w (..., 2) → summed cross-entropy (...)
        logits = w[..., None, :] * x  # (..., N, 2)
        chosen = np.where(labels == 1, logits[..., 1], logits[..., 0])
        return np.sum(np.logaddexp(logits[..., 0], logits[..., 1]) - chosen, axis=-1)

    w_map = minimize(lambda w: neg_log_lik(w) + 0.5 * alpha * w @ w, np.zeros(2), tol=1e-12).x
    model = keras.Sequential(
        [keras.Input((1,), dtype="float64"), keras.layers.Dense(2, use_bias=False, dtype="float64")]
    )
    set_flat_weights(model, w_map)
    la = sigma.Laplace(model, x, labels, likelihood="classification", alpha=alpha)
    grid = np.linspace(-4.0, 4.0, 321)
    w1, w2 = np.meshgrid(grid, grid, indexing="ij")
    w = np.stack([w1, w2], axis=-1)
    log_integrand = -neg_log_lik(w) - 0.5 * alpha * np.sum(w**2, -1) + np.log(alpha / (2 * np.pi))
    m = log_integrand.max()
    exact = m + np.log(np.sum(np.exp(log_integrand - m)) * (grid[1] - grid[0]) ** 2)
    assert abs(la.log_evidence() - exact) < 0.03, (la.log_evidence(), exact)


def test_labels_with_a_trailing_axis_are_labels(labelled):
    x, labels = labelled  # Keras' sparse cross-entropy takes labels (N,) and (N, 1) alike
    model = make_mlp(hidden=(4,), n_out=3)
    flat = sigma.Laplace(model, x, labels, likelihood="classification")
    column = sigma.Laplace(model, x, labels[:, None], likelihood="classification")
    assert column.log_evidence() == flat.log_evidence()
    with pytest.raises(ValueError, match=r"integer class labels in \[0, 3\)"):
        sigma.Laplace(model, x, labels[:, None] + 1, likelihood="classification")


def test_classification_bad_input(labelled, rng):
    x, labels = labelled
    model = make_mlp(hidden=(4,), n_out=3)
    with pytest.raises(ValueError, match="must be one-hot"):
        sigma.Laplace(model, x, np.full((30, 3), 1.0 / 3.0), likelihood="classification")
    with pytest.raises(ValueError, match=r"integer class labels in \[0, 3\)"):
        sigma.Laplace(model, x, labels + 1, likelihood="classification")
    with pytest.raises(ValueError, match=r"integer class labels"):
        sigma.Laplace(model, x, labels + 0.5, likelihood="classification")
    with pytest.raises(ValueError, match="beta is fixed at 1"):
        sigma.Laplace(model, x, labels, likelihood="classification", beta=2.0)
    la = sigma.Laplace(model, x, labels, likelihood="classification")
    with pytest.raises(ValueError, match="beta is fixed at 1"):
        la.beta = 1.0
    with pytest.raises(ValueError, match="beta is fixed at 1"):
        la.log_evidence(beta=2.0)
    with pytest.raises(ValueError, match="beta is fixed at 1"):
        la.optimize_evidence(per_output=True)
    with pytest.raises(ValueError, match=r"method must be one of \(.probit., .mc.,"):
        la.predict_proba(x, method="laplace")
    with pytest.raises(ValueError, match="predict_proba needs likelihood='classification'"):
        sigma.Laplace(model, x, rng.normal(size=(30, 3))).predict_proba(x)


@pytest.mark.parametrize("head", ["activation", "layer"])
def test_softmax_outputs_are_refused(labelled, head):
    x, labels = labelled
    keras.utils.set_random_seed(0)
    layers = [
        keras.Input((3,), dtype="float64"),
        keras.layers.Dense(4, activation="tanh", dtype="float64"),
    ]
    if head == "activation":
        layers.append(keras.layers.Dense(3, activation="softmax", dtype="float64"))
    else:
        layers += [keras.layers.Dense(3, dtype="float64"), keras.layers.Softmax(dtype="float64")]
    model = keras.Sequential(layers)
    with pytest.raises(ValueError, match="needs a model with linear logits.*applies a softmax"):
        sigma.Laplace(model, x, labels, likelihood="classification")
    # outputs that are rows of probabilities are refused even without a recognisable layer
    with pytest.raises(ValueError, match="non-negative and sums to 1"):
        classification.check_logits(make_linear(), np.full((4, 2), 0.5))


def test_probabilities_are_refused_from_the_first_inputs_alone(labelled, monkeypatch):
    """The logits check reads the outputs at the first ``check_rows`` training inputs (a model
    that outputs probabilities does so everywhere), not a forward pass over all of them."""
    x, labels = labelled
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,), dtype="float64")
    logits = keras.layers.Dense(3, dtype="float64")(inputs)
    probs = keras.layers.Lambda(lambda z: keras.ops.softmax(z), dtype="float64")(logits)
    model = keras.Model(inputs, probs)  # no softmax layer to recognise: the values tell
    seen = []
    check = sigma.likelihoods.classification.Classification.check_outputs

    def spy(self, model, f, layout):
        seen.append(len(f))
        return check(self, model, f, layout)

    monkeypatch.setattr(sigma.likelihoods.classification.Classification, "check_rows", 5)
    monkeypatch.setattr(sigma.likelihoods.classification.Classification, "check_outputs", spy)
    assert len(x) > 5
    with pytest.raises(ValueError, match="non-negative and sums to 1"):
        sigma.Laplace(model, x, labels, likelihood="classification")
    assert seen == [5]


def test_alpha_scan_matches_direct_evaluation_and_restores_alpha(clf):
    _, x, labels, la = clf
    scan = sigma.lab.alpha_scan(la, [0.1, 2.0], x[:10], labels[:10])
    assert la.alpha == 0.5
    la.alpha = 2.0
    direct = sigma.metrics.classification_metrics(la.predict_proba(x[:10]), labels[:10])
    np.testing.assert_allclose(scan["nll"][1], direct["nll"])
    np.testing.assert_allclose(scan["log_evidence"][1], la.log_evidence())
    assert scan["log_evidence"].shape == (2,)
