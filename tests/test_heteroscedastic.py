"""likelihood="heteroscedastic": Λ against finite differences of the NLL in the natural
parameters, the GGN and σ by hand on linear heads, the GGN against the finite-difference
Hessian where the two must agree, every structure, the evidence, the loss and the callback."""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_linear, make_mlp

import sigma
from sigma.likelihoods import Heteroscedastic
from sigma.losses import GaussianNLL

PARAMS = ("mean_logvar", "natural")


def _moments(f, parameterisation):
    """(μ, σ²) from outputs (N, 2K), numpy, written out independently of the package."""
    k = f.shape[1] // 2
    a, b = f[:, :k], f[:, k:]
    if parameterisation == "mean_logvar":
        return a, np.exp(b)
    return a * np.exp(-b), np.exp(-b)


def _nll(f, y, parameterisation):
    mean, var = _moments(f, parameterisation)
    return float(np.sum(0.5 * np.log(2 * np.pi * var) + 0.5 * (y - mean) ** 2 / var))


@pytest.mark.parametrize("parameterisation", PARAMS)
def test_lambda_is_the_nll_hessian_in_natural_parameters_pulled_back(parameterisation):
    # Λ_f = (∂η/∂f)ᵀ ∇²_η NLL (∂η/∂f), both factors by central finite differences
    rng = np.random.default_rng(1)
    f = rng.normal(size=(1, 2)) * [1.0, 0.7]
    y = 0.3

    def eta(fv):
        mean, var = _moments(fv[None], parameterisation)
        return np.array([mean[0, 0] / var[0, 0], -0.5 / var[0, 0]])

    def nll_eta(e):  # −η₁y − η₂y² + A(η), A = −η₁²/(4η₂) − ½ ln(−2η₂), + ½ ln 2π
        return -e[0] * y - e[1] * y**2 - e[0] ** 2 / (4 * e[1]) - 0.5 * np.log(-2 * e[1])

    h, e0 = 1e-4, eta(f[0])
    hess = np.zeros((2, 2))
    for i in range(2):
        for j in range(2):
            di, dj = np.eye(2)[i] * h, np.eye(2)[j] * h
            hess[i, j] = (
                nll_eta(e0 + di + dj) - nll_eta(e0 + di - dj) - nll_eta(e0 - di + dj)
                + nll_eta(e0 - di - dj)
            ) / (4 * h * h)  # fmt: skip
    jac = np.stack([(eta(f[0] + np.eye(2)[j] * h) - eta(f[0] - np.eye(2)[j] * h)) / (2 * h)
                    for j in range(2)], axis=1)  # fmt: skip
    expected = jac.T @ hess @ jac
    root = Heteroscedastic(parameterisation).hessian_sqrt(tf.constant(f)).numpy()[0]
    np.testing.assert_allclose(root @ root.T, expected, rtol=1e-5, atol=1e-7)
    assert np.all(np.linalg.eigvalsh(root @ root.T) > 0)


@pytest.mark.parametrize("parameterisation", PARAMS)
def test_data_error_and_loss_are_the_gaussian_nll(parameterisation):
    rng = np.random.default_rng(2)
    f, y = rng.normal(size=(7, 4)), rng.normal(size=(7, 2))
    lik = Heteroscedastic(parameterisation)
    expected = _nll(f, y, parameterisation)
    assert float(lik.data_error(tf.constant(f), tf.constant(np.hstack([y, y])))) == pytest.approx(
        expected, rel=1e-12
    )
    per_sample = GaussianNLL(parameterisation).call(tf.constant(y), tf.constant(f)).numpy()
    assert per_sample.shape == (7,) and per_sample.sum() == pytest.approx(expected, rel=1e-12)


@functools.cache
def _mlp_heads():
    """A 2-4-2 tanh MLP shared by the tests that do not change its weights."""
    return make_mlp(2, (4,), 2, seed=3)


@functools.cache
def _linear_heads(n_in=2, seed=0):
    """Shared by several tests (none changes its weights): its graphs are traced once."""
    model = make_linear(n_in, 2, seed=seed)
    w, b = model.layers[-1].get_weights()
    model.layers[-1].set_weights([0.5 * w, np.array([0.1, -0.4])])
    return model


@pytest.mark.parametrize("structure", ["full", "diag"])
def test_linear_heads_curvature_and_sigma_by_hand(structure):
    # f = [μ | s] = x W + b: J of output j is (x ⊗ e_j, e_j) in sigma's weight order
    rng = np.random.default_rng(3)
    x, xs = rng.normal(size=(30, 2)), rng.normal(size=(5, 2))
    model = _linear_heads()
    w, b = (v.astype(np.float64) for v in model.layers[-1].get_weights())
    y = (x @ w + b)[:, :1] + rng.normal(size=(30, 1)) * np.exp(0.5 * (x @ w + b)[:, 1:])

    def jac(xi, j):
        g = np.zeros(6)
        g[[2 * d + j for d in range(2)]] = xi
        g[4 + j] = 1.0
        return g

    s = (x @ w + b)[:, 1]
    g = sum(np.exp(-s[n]) * np.outer(jac(x[n], 0), jac(x[n], 0))
            + 0.5 * np.outer(jac(x[n], 1), jac(x[n], 1)) for n in range(30))  # fmt: skip
    np.testing.assert_allclose(
        sigma.gauss_newton(model, x, likelihood="heteroscedastic"), g, rtol=1e-10, atol=1e-12
    )
    alpha = 0.7
    la = sigma.Laplace(model, x, y, likelihood="heteroscedastic", structure=structure, alpha=alpha)
    a = alpha * np.eye(6) + (g if structure == "full" else np.diag(np.diag(g)))
    a_inv = np.linalg.inv(a)
    epistemic = np.array([jac(xi, 0) @ a_inv @ jac(xi, 0) for xi in xs])
    aleatoric = np.exp((xs @ w + b)[:, 1])
    mean, alea_std, epi_std = la.predict(xs, split=True)
    np.testing.assert_allclose(mean[:, 0], (xs @ w + b)[:, 0], rtol=1e-12)
    np.testing.assert_allclose(alea_std[:, 0] ** 2, aleatoric, rtol=1e-12)
    np.testing.assert_allclose(epi_std[:, 0] ** 2, epistemic, rtol=1e-9)
    _, std = la.predict(xs)
    np.testing.assert_allclose(std[:, 0] ** 2, aleatoric + epistemic, rtol=1e-9)
    # the evidence: ln p(D | α) = −E − α E_W − ½ ln|A| + (P/2) ln α
    e = _nll(np.c_[x @ w + b], y, "mean_logvar")
    w_all = np.concatenate([w.ravel(), b])
    expected = -e - alpha * 0.5 * w_all @ w_all - 0.5 * np.linalg.slogdet(a)[1] + 3 * np.log(alpha)
    assert la.log_evidence() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("parameterisation", PARAMS)
def test_ggn_equals_the_finite_difference_hessian_at_paired_targets(parameterisation):
    # With each input twice, y = μ ± σ, the NLL's gradient in the outputs sums to zero per
    # pair and its Hessian averages to Λ: then ∇²_w NLL = Σ Jᵀ Λ J exactly, for any network.
    rng = np.random.default_rng(4)
    model = make_mlp(2, (3,), 2, seed=1)
    x1 = rng.normal(size=(6, 2))
    x = np.concatenate([x1, x1])
    f = sigma.curvature.outputs(model, x1)
    mean, var = _moments(f, parameterisation)
    y = np.concatenate([mean + np.sqrt(var), mean - np.sqrt(var)])
    lik = Heteroscedastic(parameterisation)
    ggn = sigma.Laplace(model, x, y, likelihood=lik, structure="full").structure.matrix
    w0 = sigma.flat_weights(model).astype(np.float64)

    def grad(w):
        sigma.set_flat_weights(model, w)
        with tf.GradientTape() as tape:
            out = model(tf.constant(x), training=False)
            mu, v = _moments_tf(out, parameterisation)
            nll = tf.reduce_sum(0.5 * tf.math.log(v) + 0.5 * tf.square(y - mu) / v)
        return np.concatenate([tf.reshape(g, [-1]).numpy() for g in
                               tape.gradient(nll, model.trainable_variables)])  # fmt: skip

    h = 1e-5
    fd = np.stack([(grad(w0 + h * e) - grad(w0 - h * e)) / (2 * h) for e in np.eye(len(w0))])
    sigma.set_flat_weights(model, w0)
    np.testing.assert_allclose(ggn, 0.5 * (fd + fd.T), rtol=1e-5, atol=1e-7)


def _moments_tf(out, parameterisation):
    a, b = out[:, :1], out[:, 1:]
    if parameterisation == "mean_logvar":
        return a, tf.exp(b)
    return a * tf.exp(-b), tf.exp(-b)


def test_kfac_is_exact_when_lambda_is_constant():
    # one Dense layer and a variance head that does not depend on x: Λ is the same for every
    # sample, so G = (Σ a aᵀ) ⊗ Λ is a Kronecker product and KFAC is exact
    rng = np.random.default_rng(5)
    x = rng.normal(size=(20, 3))
    model = make_linear(3, 2, seed=2)
    w, _ = model.layers[-1].get_weights()
    w[:, 1] = 0.0
    model.layers[-1].set_weights([w, np.array([0.2, -1.0])])
    y = rng.normal(size=(20, 1))
    xs = rng.normal(size=(4, 3))
    full = sigma.Laplace(model, x, y, likelihood="heteroscedastic", structure="full", alpha=0.3)
    kfac = sigma.Laplace(model, x, y, likelihood="heteroscedastic", structure="kfac", alpha=0.3)
    for a, b in zip(full.predict(xs, split=True), kfac.predict(xs, split=True), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9)


def test_natural_parameterisation_predicts_the_delta_method_variance():
    rng = np.random.default_rng(6)
    x, xs = rng.normal(size=(25, 2)), rng.normal(size=(3, 2))
    model = _mlp_heads()
    y = rng.normal(size=(25, 1))
    lik = Heteroscedastic("natural")
    la = sigma.Laplace(model, x, y, likelihood=lik, structure="full", alpha=2.0)
    f = sigma.curvature.outputs(model, xs)
    jac = sigma.output_jacobian(model, xs)  # (N, 2, P)
    a_inv = np.linalg.inv(2.0 * np.eye(la.n_params) + la.structure.matrix)
    mu, var = _moments(f, "natural")
    grad_mu = var * jac[:, 0] + (-mu) * jac[:, 1]  # ∂μ/∂w = σ² ∂η₁/∂w − μ ∂r/∂w
    epistemic = np.einsum("np,pq,nq->n", grad_mu, a_inv, grad_mu)
    mean, alea, epi = la.predict(xs, split=True)
    np.testing.assert_allclose(mean[:, 0], mu[:, 0], rtol=1e-12)
    np.testing.assert_allclose(alea[:, 0] ** 2, var[:, 0], rtol=1e-12)
    np.testing.assert_allclose(epi[:, 0] ** 2, epistemic, rtol=1e-8)


def test_the_evidence_chooses_alpha_and_beta_is_refused():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(40, 2))
    model = _mlp_heads()
    y = rng.normal(size=(40, 1))
    la = sigma.Laplace(model, x, y, likelihood="heteroscedastic", structure="full")
    la.optimize_evidence()
    alpha = la.alpha
    for a in (alpha * 0.8, alpha * 1.25):  # a maximum in α
        assert la.log_evidence(alpha=a) < la.log_evidence()
    with pytest.raises(ValueError, match="beta has no meaning.*heteroscedastic"):
        sigma.Laplace(model, x, y, likelihood="heteroscedastic", beta=2.0)
    with pytest.raises(ValueError, match="beta has no meaning"):
        la.beta = 3.0
    with pytest.raises(ValueError, match="predict_proba needs"):
        la.predict_proba(x)


def _head_model(activation):
    keras.utils.set_random_seed(0)
    inp = keras.Input((2,), dtype="float64")
    h = keras.layers.Dense(4, activation="tanh", dtype="float64")(inp)
    mean = keras.layers.Dense(1, dtype="float64")(h)
    var = keras.layers.Dense(1, activation=activation, dtype="float64")(h)
    return keras.Model(inp, keras.layers.Concatenate(dtype="float64")([mean, var]))


def test_bad_input_is_refused_naming_what_is_expected():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(10, 2)), rng.normal(size=(10, 1))
    with pytest.raises(ValueError, match="'softplus'.*can reach 0 or ∞.*mean_logvar"):
        sigma.Laplace(_head_model("softplus"), x, y, likelihood="heteroscedastic")
    with pytest.raises(ValueError, match="'relu'.*natural"):
        sigma.Laplace(_head_model("relu"), x, y, likelihood=Heteroscedastic("natural"))
    sigma.Laplace(_head_model(None), x, y, likelihood="heteroscedastic")  # linear: accepted
    bad = y.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="^y contains 1 NaN"):
        sigma.Laplace(_head_model(None), x, bad, likelihood="heteroscedastic")
    with pytest.raises(ValueError, match="2K outputs"):
        sigma.Laplace(make_mlp(2, (3,), 3), x, y, likelihood="heteroscedastic")
    with pytest.raises(ValueError, match=r"expected shape \(10, 1\)"):
        sigma.Laplace(make_mlp(2, (3,), 2), x, np.c_[y, y], likelihood="heteroscedastic")
    huge = make_linear(2, 2, seed=0)
    huge.layers[-1].set_weights([np.zeros((2, 2)), np.array([0.0, 800.0])])
    with pytest.raises(ValueError, match="ln σ² = 800.*log-variance, not a variance"):
        sigma.Laplace(huge, x, y, likelihood="heteroscedastic")
    with pytest.raises(ValueError, match="parameterisation must be one of"):
        Heteroscedastic("variance")


@pytest.mark.slow  # trains a network with the callback
def test_evidence_callback_trains_a_heteroscedastic_model():
    rng = np.random.default_rng(9)
    x = rng.uniform(-1, 1, size=(64, 1))
    y = np.sin(2 * x) + (0.05 + 0.3 * (x + 1)) * rng.normal(size=x.shape)
    model = make_mlp(1, (8,), 2, seed=5)
    model.compile(keras.optimizers.Adam(1e-2), GaussianNLL())
    cb = sigma.EvidenceCallback(x, y, structure="full", prior="layer", every=3, verbose=0)
    model.fit(x, y, epochs=6, batch_size=64, verbose=0, callbacks=[cb])
    la = cb.laplace
    assert la.likelihood.name == "heteroscedastic"
    assert [h["epoch"] for h in cb.history] == [3, 6]
    assert np.all(np.asarray(la.alpha) > 0) and "beta" not in repr(la.likelihood.key)
    # the penalty is α_g/(2N) per weight: the loss scale E/N of GaussianNLL
    strengths = np.concatenate([s.numpy().ravel() for s in cb._strength])
    np.testing.assert_allclose(
        strengths, la.prior.per_weight(la.posterior.alpha) / (2 * 64), rtol=1e-6
    )
    _, alea, epi = la.predict(np.array([[-0.9], [0.9]]), split=True)
    assert alea[1, 0] > alea[0, 0]  # the noise grows with x, and the head learned it


def test_the_compiled_gaussian_nll_says_which_form_the_heads_are_in():
    """issue 28: a model compiled with GaussianNLL("natural") and given as
    likelihood="heteroscedastic" was read as [μ | ln σ²]: σ 1.7 for a true noise of 0.58.
    The name follows the compiled loss's form (σ and μ from the outputs by hand); an explicit
    Heteroscedastic of the other form is refused, naming both."""
    rng = np.random.default_rng(16)
    x, y = rng.normal(size=(20, 2)), rng.normal(size=(20, 1))
    model = make_mlp(2, (4,), 2, seed=3)  # compiled here: not the shared _mlp_heads()
    model.compile(keras.optimizers.Adam(1e-2), GaussianNLL("natural"))
    la = sigma.Laplace(model, x, y, likelihood="heteroscedastic")
    assert la.likelihood.parameterisation == "natural"
    mean, var = _moments(np.asarray(model(x[:5])), "natural")
    got_mean, noise, _ = la.predict(x[:5], split=True)
    np.testing.assert_allclose(noise, np.sqrt(var), rtol=1e-10)
    np.testing.assert_allclose(got_mean, mean, rtol=1e-10)
    with pytest.raises(
        ValueError,
        match=r"^likelihood=Heteroscedastic\('mean_logvar'\) reads .* compiled with "
        r"sigma.losses.GaussianNLL\('natural'\)",
    ):
        sigma.Laplace(model, x, y, likelihood=Heteroscedastic("mean_logvar"))
    model.compile(keras.optimizers.Adam(1e-2), GaussianNLL())
    assert sigma.Laplace(model, x, y, likelihood="heteroscedastic").likelihood.parameterisation == (
        "mean_logvar"
    )
    with pytest.raises(
        ValueError, match=r"Heteroscedastic\('natural'\).*GaussianNLL\('mean_logvar'"
    ):
        sigma.Laplace(model, x, y, likelihood=Heteroscedastic("natural"))


@pytest.mark.slow  # trains a network with the callback
def test_evidence_callback_takes_the_form_of_the_compiled_loss():
    """issue 28: EvidenceCallback(likelihood=Heteroscedastic("natural")) on a model compiled
    with GaussianNLL("natural") was refused ("likelihood=<object> but the compiled loss is a
    heteroscedastic loss"); the other form is refused naming both, before fit changes
    anything."""
    rng = np.random.default_rng(17)
    x, y = rng.normal(size=(24, 2)), rng.normal(size=(24, 1))
    model = make_mlp(2, (4,), 2, seed=3)  # compiled here: not the shared _mlp_heads()
    model.compile(keras.optimizers.Adam(1e-3), GaussianNLL("natural"))
    cb = sigma.EvidenceCallback(
        x, y, likelihood=Heteroscedastic("natural"), structure="full", every=1, verbose=0
    )
    model.fit(x, y, epochs=1, batch_size=24, verbose=0, callbacks=[cb])
    assert cb.laplace.likelihood.parameterisation == "natural" and len(cb.history) == 1
    bad = sigma.EvidenceCallback(x, y, likelihood=Heteroscedastic("mean_logvar"), verbose=0)
    with pytest.raises(
        ValueError, match=r"Heteroscedastic\('mean_logvar'\).*GaussianNLL\('natural'"
    ):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[bad])
    assert all(v.regularizer is None for v in model.trainable_variables) and not bad.history


def test_save_and_load_keep_the_parameterisation(tmp_path):
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(15, 2)), rng.normal(size=(15, 1))
    model = _mlp_heads()
    la = sigma.Laplace(model, x, y, likelihood=Heteroscedastic("natural"), alpha=1.5)
    back = sigma.Laplace.load(la.save(tmp_path / "fit.npz"), model)
    assert back.likelihood.parameterisation == "natural"
    for a, b in zip(la.predict(x, split=True), back.predict(x, split=True), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    with pytest.raises(ValueError, match="to_keras supports .*='mean_logvar' only"):
        la.to_keras()


@pytest.mark.parametrize(
    ("structure", "options"), [("lowrank", {"rank": 6, "seed": 0}), ("last_layer", None)]
)
def test_lowrank_at_full_rank_and_last_layer_of_a_linear_model_equal_full(structure, options):
    rng = np.random.default_rng(11)
    x, xs = rng.normal(size=(20, 2)), rng.normal(size=(4, 2))
    model = _linear_heads()  # P = 6, one Dense layer
    y = rng.normal(size=(20, 1))
    full = sigma.Laplace(model, x, y, likelihood="heteroscedastic", alpha=0.5)
    other = sigma.Laplace(
        model, x, y, likelihood="heteroscedastic", alpha=0.5, structure=structure,
        structure_options=options,
    )  # fmt: skip
    for a, b in zip(full.predict(xs, split=True), other.predict(xs, split=True), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-12)


def test_conformalize_a_heteroscedastic_laplace():
    rng = np.random.default_rng(12)
    x, y = rng.normal(size=(20, 2)), rng.normal(size=(20, 1))
    la = sigma.Laplace(_linear_heads(), x, y, likelihood="heteroscedastic", alpha=0.5)
    x_cal, y_cal = rng.normal(size=(50, 2)), rng.normal(size=(50, 1))
    mean, std = la.predict(x_cal)
    q = np.sort(np.abs(y_cal - mean) / std, axis=0)[int(np.ceil(51 * 0.9)) - 1]
    lo, hi = la.conformalize(x_cal, y_cal).interval(x, 0.9)
    mean_x, std_x = la.predict(x)
    np.testing.assert_allclose(hi - lo, 2 * q * std_x, rtol=1e-12)
    np.testing.assert_allclose((hi + lo) / 2, mean_x, rtol=1e-12)


@pytest.mark.parametrize("structure", ["full", "kfac"])
def test_a_dataset_gives_what_the_arrays_give(structure):
    rng = np.random.default_rng(13)
    x, y = rng.normal(size=(30, 2)), rng.normal(size=(30,))
    model = _mlp_heads()
    arrays = sigma.Laplace(model, x, y, likelihood="heteroscedastic", structure=structure)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    streamed = sigma.Laplace(model, data, likelihood="heteroscedastic", structure=structure)
    assert streamed.data_error == pytest.approx(arrays.data_error, rel=1e-12)
    for a, b in zip(arrays.predict(x[:4], split=True), streamed.predict(x[:4], split=True),
                    strict=True):  # fmt: skip
        np.testing.assert_allclose(a, b, rtol=1e-9)
    assert streamed.optimize_evidence().alpha == pytest.approx(
        arrays.optimize_evidence().alpha, rel=1e-6
    )


def test_optimize_prior_finds_the_alpha_of_the_smallest_held_out_nll():
    rng = np.random.default_rng(14)
    x, y = rng.normal(size=(30, 2)), rng.normal(size=(30, 1))
    x_val, y_val = rng.normal(size=(40, 2)), 2.0 * rng.normal(size=(40, 1))
    la = sigma.Laplace(_mlp_heads(), x, y, likelihood="heteroscedastic", alpha=1.0)

    def held_out(alpha):  # the Gaussian NLL per value, written out
        la.alpha = alpha
        mean, std = la.predict(x_val)
        return np.mean(0.5 * np.log(2 * np.pi * std**2) + 0.5 * (y_val - mean) ** 2 / std**2)

    grid = np.geomspace(1e-3, 1e3, 61)
    values = [held_out(a) for a in grid]
    best = min(values)
    assert np.argmin(values) == 0  # noisier held-out targets: the most weight uncertainty
    la.alpha = 1.0
    with pytest.warns(RuntimeWarning, match=r"alpha at the lower bound"):  # issue 28
        la.optimize_prior(x_val, y_val, span=1e3, tol=1e-6)
    assert la.prior_result["value"] <= best + 1e-7
    assert la.prior_result["value"] == pytest.approx(held_out(la.alpha), rel=1e-12)
    assert la.prior_result["at_bound"] == {"alpha": "lower"}
    with pytest.raises(ValueError, match=r"metric must be one of \('nll',\) for heteroscedastic"):
        la.optimize_prior(x_val, y_val, metric="brier")


def test_optimize_prior_says_when_its_search_ends_at_a_bound():
    """issue 28: from α₀ = 1e3 with span 10 the held-out NLL grows with α over the whole
    range (checked on a grid): the search ends at α₀/span and says so, naming span."""
    rng = np.random.default_rng(14)
    x, y = rng.normal(size=(30, 2)), rng.normal(size=(30, 1))
    x_val, y_val = rng.normal(size=(40, 2)), 2.0 * rng.normal(size=(40, 1))
    la = sigma.Laplace(_mlp_heads(), x, y, likelihood="heteroscedastic")

    def held_out(alpha):
        la.alpha = alpha
        return sigma.metrics.gaussian_nll(*la.predict(x_val), y_val)

    assert np.all(np.diff([held_out(a) for a in np.geomspace(1e2, 1e4, 9)]) > 0)
    la.alpha = 1e3
    with pytest.warns(RuntimeWarning, match=r"alpha at the lower bound .*span=10 now"):
        la.optimize_prior(x_val, y_val, span=10.0)
    assert la.prior_result["at_bound"] == {"alpha": "lower"}
    assert la.alpha == pytest.approx(1e2, rel=2e-3)


@pytest.mark.parametrize("structure", ["full", "kfac"])
def test_to_keras_serves_mean_and_std_with_the_noise_head(structure, tmp_path):
    rng = np.random.default_rng(15)
    x, y = rng.normal(size=(25, 2)), rng.normal(size=(25, 1))
    la = sigma.Laplace(_mlp_heads(), x, y, likelihood="heteroscedastic", structure=structure)
    served = la.to_keras()
    out = served(x[:6])
    mean, std = la.predict(x[:6])
    np.testing.assert_allclose(np.asarray(out["mean"]), mean, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["std"]), std, rtol=1e-6)
    if structure == "full":
        served.save(tmp_path / "m.keras")
        back = keras.saving.load_model(tmp_path / "m.keras")
        np.testing.assert_allclose(np.asarray(back(x[:6])["std"]), std, rtol=1e-6)


def test_an_infinite_aleatoric_variance_at_a_test_input_is_refused():
    """ln σ² > 709.8 at a test input: predict raises naming x and ln σ², the served model
    refuses in its graph (both gave std = inf with only a numpy warning)."""
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(20, 2)), rng.normal(size=(20, 1))
    model = make_linear(2, 2, seed=0)
    model.layers[-1].set_weights([np.array([[0.1, 1.0], [0.2, 0.0]]), np.zeros(2)])
    la = sigma.Laplace(model, x, y, likelihood="heteroscedastic", structure="full", alpha=1.0)
    far = np.array([[800.0, 0.0]])  # ln σ² = 800
    assert np.all(np.isfinite(la.predict(x[:3])[1]))
    with pytest.raises(ValueError, match=r"ln σ² = 800 at some samples of x"):
        la.predict(far)
    served = la.to_keras()
    assert np.all(np.isfinite(served(x[:3])["std"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="sigma: the variance head's σ²"):
        served(far)
