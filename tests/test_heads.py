"""A likelihood per output head: each regression head with its own β, the classifier's logits
with theirs (none), the evidence summing the heads' data terms — never one β pooled over a
regression output and logits."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import sigma

RNG = np.random.default_rng(0)
NOISE = 0.1  # the regression head's true noise


def _data(n=240, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(n, 2)).astype("f4")
    price = (0.8 * x[:, :1] - 0.5 * x[:, 1:] + 0.3 * x[:, :1] * x[:, 1:]) + NOISE * rng.normal(
        size=(n, 1)
    )
    kind = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)
    return x, price.astype("f4"), kind


@pytest.fixture(scope="module")
def two_heads():
    """A shared trunk, a 'price' head (regression) and a 'kind' head (3 logits), trained."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((2,))
    h = keras.layers.Dense(24, activation="tanh")(inp)
    price = keras.layers.Dense(1, name="price")(h)
    kind = keras.layers.Dense(3, name="kind")(h)
    model = keras.Model(inp, [price, kind])
    model.compile(
        keras.optimizers.Adam(0.02),
        loss={"price": "mse",
              "kind": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
    )  # fmt: skip
    x, price_y, kind_y = _data()
    # 400 full-batch Adam steps as one epoch of a repeated dataset (400 epochs of fit paid
    # Keras' per-epoch overhead 400 times: 20-50 s)
    batch = tf.data.Dataset.from_tensors((x, {"price": price_y, "kind": kind_y}))
    model.fit(batch.repeat(400), epochs=1, verbose=0)
    return model, x, price_y, kind_y


LIK = {"price": "regression", "kind": "classification"}


@pytest.mark.parametrize("structure", ["full", "kfac", "diag", "ekfac"])
def test_each_head_has_its_likelihood_and_the_regression_head_its_noise(two_heads, structure):
    model, x, price_y, kind_y = two_heads
    y = {"price": price_y, "kind": kind_y}
    la = sigma.Laplace(model, x, y, likelihood=LIK, structure=structure).optimize_evidence()
    assert la.beta_groups == ("price", "kind")
    beta_price, inverse_temperature = la.beta
    assert inverse_temperature == 1.0  # the classifier's logits: no noise precision
    assert 0.7 * NOISE < beta_price**-0.5 < 1.4 * NOISE  # the regression head's own noise
    out = la.predict(x[:5])
    mean, std = out["price"]
    assert mean.shape == std.shape == (5, 1) and np.all(std > beta_price**-0.5)
    assert out["kind"].shape == (5, 3)
    np.testing.assert_allclose(out["kind"].sum(-1), 1.0, rtol=1e-12)
    assert set(la.predict_proba(x[:5])) == {"kind"}


def test_one_likelihood_for_mixed_heads_is_refused(two_heads):
    model, x, price_y, kind_y = two_heads
    with pytest.raises(ValueError, match=r"outputs are of different kinds .*likelihood=\{"):
        sigma.Laplace(model, x, {"price": price_y, "kind": np.eye(3)[kind_y]})


def test_the_evidence_is_the_sum_of_the_heads_terms_and_stationary_in_beta(two_heads):
    model, x, price_y, kind_y = two_heads
    y = {"price": price_y, "kind": kind_y}
    la = sigma.Laplace(model, x, y, likelihood=LIK, structure="full").optimize_evidence(tol=1e-12)
    # explicit: A = αI + β J_pᵀJ_p + J_kᵀ Λ J_k; ln Z = −αE_W − βE_p − CE − ½ln|A| + ½P ln α
    # + ½N (ln β − ln 2π)
    j = sigma.output_jacobian(model, x).astype(np.float64)
    f = np.concatenate([np.asarray(o, np.float64) for o in model(x)], axis=1)
    root = sigma.likelihoods.get("classification").hessian_sqrt(f[:, 1:]).numpy()
    lk = np.einsum("nkj,nkp->njp", root, j[:, 1:])
    g_price, g_kind = j[:, 0].T @ j[:, 0], np.einsum("nkp,nkq->pq", lk, lk)
    alpha, (beta, _) = la.alpha, la.beta
    a = alpha * np.eye(la.n_params) + beta * g_price + g_kind
    w = sigma.flat_weights(model).astype(np.float64)
    e_p = 0.5 * np.sum((f[:, 0] - price_y[:, 0]) ** 2)
    logp = f[:, 1:] - np.log(np.exp(f[:, 1:]).sum(1, keepdims=True))
    ce = -logp[np.arange(len(x)), kind_y].sum()
    n, p = len(x), la.n_params
    ref = (
        -alpha * 0.5 * w @ w - beta * e_p - ce - 0.5 * np.linalg.slogdet(a)[1]
        + 0.5 * p * np.log(alpha) + 0.5 * n * (np.log(beta) - np.log(2 * np.pi))
    )  # fmt: skip
    assert la.log_evidence() == pytest.approx(ref, rel=1e-6)
    for h in (1e-4, -1e-4):  # a maximum in β of the price head
        assert la.log_evidence(beta=[beta * np.exp(h), 1.0]) < la.log_evidence()
    # β = (N − γ_price)/(2 E_price), γ_price = β Tr(A⁻¹ J_pᵀ J_p)
    gamma_price = beta * np.trace(np.linalg.solve(a, g_price))
    assert la.beta_gammas[0] == pytest.approx(gamma_price, rel=1e-5)
    assert beta == pytest.approx((n - gamma_price) / (2 * e_p), rel=1e-5)


def test_heads_by_list_and_their_errors(two_heads):
    model, x, price_y, kind_y = two_heads
    la = sigma.Laplace(model, x, [price_y, kind_y], likelihood=["regression", "classification"],
                       structure="diag")  # fmt: skip
    assert la.beta_groups == ("price", "kind")
    with pytest.raises(
        ValueError, match=r"must name every output of the model \['price', 'kind'\]"
    ):
        sigma.Laplace(model, x, [price_y, kind_y], likelihood={"price": "regression"})
    with pytest.raises(ValueError, match="one likelihood per model output, 2"):
        sigma.Laplace(model, x, [price_y, kind_y], likelihood=["regression"])
    with pytest.raises(ValueError, match="likelihood for head 'kind': likelihood must be one of"):
        sigma.Laplace(model, x, [price_y, kind_y], likelihood={"price": "regression", "kind": "x"})
    with pytest.raises(ValueError, match="must give each output its targets"):
        sigma.Laplace(model, x, price_y, likelihood=LIK)
