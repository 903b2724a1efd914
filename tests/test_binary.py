"""Binary classifiers (one logit, Bernoulli likelihood with a sigmoid link) against Bayesian
logistic regression written out by hand: the GGN p(1 − p) φφᵀ, the probit predictive and the
log evidence; labels and sigmoid outputs checked."""

import keras
import numpy as np
import pytest

import sigma
from sigma import classification, metrics
from sigma.params import set_flat_weights

ALPHA = 2.0


@pytest.fixture
def logistic(rng):
    x = rng.normal(size=(40, 3))
    y = (x @ np.array([1.0, -2.0, 0.5]) + rng.normal(size=40) > 0).astype(float)
    model = keras.Sequential(
        [keras.Input((3,), dtype="float64"), keras.layers.Dense(1, dtype="float64")]
    )
    w = np.array([0.7, -1.1, 0.3, 0.2])  # kernel (3,), bias
    set_flat_weights(model, w)
    return model, x, y, w


def reference(x, y, w, x_test):
    """Bayesian logistic regression by hand: A = αI + Σ p(1 − p) φφᵀ, probit, evidence."""
    phi = np.c_[x, np.ones(len(x))]
    f = phi @ w
    p = 1.0 / (1.0 + np.exp(-f))
    a = ALPHA * np.eye(4) + phi.T @ (phi * (p * (1 - p))[:, None])
    phi_t = np.c_[x_test, np.ones(len(x_test))]
    var = np.einsum("ni,ij,nj->n", phi_t, np.linalg.inv(a), phi_t)
    proba = 1.0 / (1.0 + np.exp(-(phi_t @ w) / np.sqrt(1.0 + np.pi / 8.0 * var)))
    cross_entropy = np.sum(np.logaddexp(0.0, f) - y * f)
    evidence = (
        -cross_entropy - 0.5 * ALPHA * w @ w + 2.0 * np.log(ALPHA) - 0.5 * np.linalg.slogdet(a)[1]
    )
    return proba, evidence, cross_entropy, a


@pytest.mark.parametrize(
    "structure, options",
    [("full", None), ("last_layer", None), ("lowrank", {"rank": 4, "diag": False})],
)
def test_binary_matches_bayesian_logistic_regression(logistic, structure, options):
    model, x, y, w = logistic
    proba, evidence, cross_entropy, _ = reference(x, y, w, x[:7])
    la = sigma.Laplace(
        model,
        x,
        y,
        likelihood="classification",
        alpha=ALPHA,
        structure=structure,
        structure_options=options,
    )
    assert la.data_error == pytest.approx(cross_entropy, rel=1e-12)
    got = la.predict_proba(x[:7])
    assert got.shape == (7, 1)
    np.testing.assert_allclose(got[:, 0], proba, rtol=1e-10)
    assert la.log_evidence() == pytest.approx(evidence, rel=1e-10)


@pytest.mark.parametrize("structure", ["diag", "kfac"])
def test_binary_diag_and_kfac_approximate_the_reference(logistic, structure):
    model, x, y, w = logistic
    proba, evidence, cross_entropy, _ = reference(x, y, w, x[:7])
    la = sigma.Laplace(model, x, y, likelihood="classification", alpha=ALPHA, structure=structure)
    assert la.data_error == pytest.approx(cross_entropy, rel=1e-12)
    np.testing.assert_allclose(la.predict_proba(x[:7])[:, 0], proba, atol=0.02)
    assert la.log_evidence() == pytest.approx(evidence, abs=0.5)


def test_binary_ggn_is_the_hessian_of_a_linear_logit(logistic):
    model, x, y, w = logistic
    _, _, _, a = reference(x, y, w, x[:1])
    for curvature in ("ggn", "hessian"):
        la = sigma.Laplace(
            model, x, y, likelihood="classification", alpha=ALPHA, curvature=curvature
        )
        cov = la.predictive_covariance(x[:5], noise=False)
        phi = np.c_[x[:5], np.ones(5)]
        np.testing.assert_allclose(
            cov[:, 0, 0], np.einsum("ni,ij,nj->n", phi, np.linalg.inv(a), phi), rtol=1e-10
        )


def test_binary_sampled_predictive_against_quadrature(logistic):
    model, x, y, _ = logistic
    la = sigma.Laplace(model, x, y, likelihood="classification", alpha=0.05)
    mean = sigma.curvature.outputs(model, x[:4])[:, 0]
    var = la.predictive_covariance(x[:4], noise=False)[:, 0, 0]
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)  # ∫ σ(μ + s z) N(z) dz
    exact = (1 / (1 + np.exp(-(mean[:, None] + np.sqrt(var)[:, None] * nodes)))) @ weights
    exact /= np.sqrt(2 * np.pi)
    sampled = la.predict_proba(x[:4], method="mc", n_samples=200_000, seed=1)[:, 0]
    np.testing.assert_allclose(sampled, exact, atol=3e-3)
    assert np.all(np.abs(la.predict_proba(x[:4])[:, 0] - exact) < 0.02)  # probit


def test_binary_evidence_is_stationary_and_labels_as_column(logistic):
    model, x, y, _ = logistic
    la = sigma.Laplace(model, x, y[:, None], likelihood="classification")
    alpha = la.optimize_evidence().alpha
    for step in (1.01, 1 / 1.01):
        assert la.log_evidence(alpha=alpha * step) < la.log_evidence(alpha=alpha)


def test_binary_bad_labels_and_sigmoid_outputs(logistic):
    model, x, y, _ = logistic
    with pytest.raises(ValueError, match="labels 0 or 1 for a binary classifier"):
        sigma.Laplace(model, x, y + 1, likelihood="classification")
    with pytest.raises(ValueError, match="labels 0 or 1"):
        sigma.Laplace(model, x, np.full(40, 0.5), likelihood="classification")
    with pytest.raises(ValueError, match=r"y has 39 rows but x has 40"):
        sigma.Laplace(model, x, y[:39], likelihood="classification")
    squashed = keras.Sequential(
        [
            keras.Input((3,), dtype="float64"),
            keras.layers.Dense(1, activation="sigmoid", dtype="float64"),
        ]
    )
    with pytest.raises(ValueError, match="applies a sigmoid.*BinaryCrossentropy"):
        sigma.Laplace(squashed, x, y, likelihood="classification")


def test_binary_metrics_and_serving(logistic, tmp_path):
    model, x, y, _ = logistic
    la = sigma.Laplace(model, x, y, likelihood="classification", alpha=ALPHA)
    p = la.predict_proba(x)
    two = np.c_[1 - p, p]
    assert metrics.nll(p, y) == pytest.approx(metrics.nll(two, y.astype(int)))
    assert metrics.accuracy(p, y[:, None]) == pytest.approx(np.mean((p[:, 0] > 0.5) == y))
    assert classification.softmax(np.array([[800.0], [-800.0]])).ravel().tolist() == [1.0, 0.0]
    served = la.to_keras()(x[:6])
    np.testing.assert_allclose(np.asarray(served), p[:6], rtol=1e-10)


def test_evidence_callback_with_binary_cross_entropy(logistic):
    model, x, y, _ = logistic
    model.compile(keras.optimizers.Adam(0.05), keras.losses.BinaryCrossentropy(from_logits=True))
    cb = sigma.EvidenceCallback(x, y, structure="full", prior="scalar", every=2)
    model.fit(x, y, epochs=4, batch_size=40, verbose=0, callbacks=[cb])
    assert [h["epoch"] for h in cb.history] == [2, 4]
    assert np.all(np.isfinite(cb.laplace.alpha)) and cb.laplace.likelihood.name == "classification"


def test_binary_save_and_load(logistic, tmp_path):
    model, x, y, _ = logistic
    la = sigma.Laplace(model, x, y, likelihood="classification", alpha=ALPHA, structure="kfac")
    la.save(tmp_path / "binary.npz")
    back = sigma.Laplace.load(tmp_path / "binary.npz", model)
    np.testing.assert_allclose(back.predict_proba(x[:5]), la.predict_proba(x[:5]), rtol=1e-12)
    assert back.log_evidence() == pytest.approx(la.log_evidence(), rel=1e-12)


def test_one_label_array_for_several_heads_is_refused(rng):
    x = keras.Input((3,), dtype="float64")
    model = keras.Model(
        x, [keras.layers.Dense(1, dtype="float64")(x), keras.layers.Dense(3, dtype="float64")(x)]
    )
    data = rng.normal(size=(6, 3))
    with pytest.raises(ValueError, match=r"one \(N, 4\) array of targets per head side by side"):
        sigma.Laplace(model, data, np.array([0, 1, 1, 0, 1, 0]), likelihood="classification")
    la = sigma.Laplace(
        model, data, [np.array([0, 1, 1, 0, 1, 0]), np.array([0, 2, 1, 0, 1, 2])],
        likelihood="classification",
    )  # fmt: skip
    p_binary, p_three = la.predict_proba(data)
    assert p_binary.shape == (6, 1) and np.allclose(p_three.sum(axis=1), 1.0)


def test_binary_cross_entropy_over_several_logits_is_refused_by_the_callback(rng):
    model = keras.Sequential(
        [keras.Input((3,), dtype="float64"), keras.layers.Dense(3, dtype="float64")]
    )
    model.compile("sgd", keras.losses.BinaryCrossentropy(from_logits=True))
    x = rng.normal(size=(8, 3))
    cb = sigma.EvidenceCallback(x, np.eye(3)[rng.integers(0, 3, 8)], structure="full")
    with pytest.raises(ValueError, match=r"multi-label model"):
        model.fit(x, np.eye(3)[rng.integers(0, 3, 8)], epochs=1, verbose=0, callbacks=[cb])
