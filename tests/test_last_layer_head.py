"""A posterior over the model's output layer alone: the predictive with J = ã ⊗ I, no
backward pass and K numbers per input (thousands of classes)."""

import keras
import numpy as np
import pytest

import sigma
from sigma.curvature.capture import output_block
from sigma.weights import select

RNG = np.random.default_rng(0)


def _head_model(classes, seed=0, dtype="float64"):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((6,), dtype=dtype),
            keras.layers.Dense(8, activation="tanh", dtype=dtype),
            keras.layers.Dense(classes, dtype=dtype),
        ]
    )


@pytest.mark.parametrize("structure", ["kfac", "diag", "ekfac"])
def test_the_heads_predictive_is_the_explicit_one(structure):
    model = _head_model(7)
    x, y = RNG.normal(size=(30, 6)), RNG.integers(0, 7, 30)
    la = sigma.Laplace(model, x, y, likelihood="classification", weights="last_layer",
                       structure=structure, alpha=0.7)  # fmt: skip
    assert output_block(model, la.structure.plan) is not None
    idx = select(model, "last_layer").index
    j = sigma.output_jacobian(model, x[:5])[:, :, idx]
    a = 0.7 * np.eye(idx.size) + la.structure.matrix()
    ref = np.einsum("nkp,pq,nlq->nkl", j, np.linalg.inv(a), j)
    np.testing.assert_allclose(la.predictive_covariance(x[:5]), ref, rtol=1e-9, atol=1e-12)
    var = la.structure.predictive_variance(model, x[:5], 0.7, 1.0)
    np.testing.assert_allclose(var, np.einsum("nkk->nk", ref), rtol=1e-9, atol=1e-12)


def test_thousands_of_classes():
    model = _head_model(2000, dtype="float32")
    x, y = RNG.normal(size=(200, 6)).astype("f4"), RNG.integers(0, 2000, 200)
    la = sigma.Laplace(model, x, y, likelihood="classification", weights="last_layer",
                       structure="kfac", curvature="ggn_mc")  # fmt: skip
    p = la.predict_proba(x[:50])
    assert p.shape == (50, 2000)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-9)


@pytest.mark.parametrize("alpha", [0.7, 1e-300])
def test_a_float32_heads_variances_are_the_diagonal_of_its_covariance(alpha):
    """The variances of a float32 head are summed in float32 (K² per input, the cost for many
    classes), each row scaled first: at α = 1e-300 the inverse eigenvalues exceed float32's range
    and the variances must still be the float64 covariance's diagonal."""
    model = _head_model(40, dtype="float32")
    x, y = RNG.normal(size=(60, 6)).astype("f4"), RNG.integers(0, 40, 60)
    la = sigma.Laplace(model, x, y, likelihood="classification", weights="last_layer",
                       structure="kfac")  # fmt: skip
    var = la.structure.predictive_variance(model, x[:5], alpha, 1.0)
    cov = la.structure.predictive_covariance(model, x[:5], alpha, 1.0)
    assert np.all(np.isfinite(var)) and var.dtype == np.float64
    np.testing.assert_allclose(var, np.einsum("nkk->nk", cov), rtol=2e-5)


@pytest.mark.parametrize(
    "dtype,structure,prior",
    [("float64", "kfac", "scalar"), ("float32", "kfac", "scalar"),
     ("float64", "ekfac", "scalar"), ("float64", "kfac", "variable")],
)  # fmt: skip
def test_classes_without_curvature_cost_nothing_and_change_no_variance(dtype, structure, prior):
    """300 classes and 40 labels under the MC GGN: most eigen-directions of the output factor
    carry no curvature, so the variances keep only the others' columns (plus one number per
    class for the prior's share) and must still be the covariance's diagonal, to K·ε."""
    from sigma.structures.layerwise import _head_columns

    model = _head_model(300, dtype=dtype)
    x, y = RNG.normal(size=(40, 6)).astype(dtype), RNG.integers(0, 300, 40)
    la = sigma.Laplace(model, x, y, likelihood="classification", weights="last_layer",
                       structure=structure, curvature="ggn_mc", alpha=0.3,
                       prior=prior)  # fmt: skip
    s = la.structure
    # "variable": the bias rows' α apart from the kernel's (the head's input basis is then
    # scaled, not orthogonal)
    alpha = 0.3 if prior == "scalar" else np.r_[np.full(8 * 300, 0.3), np.full(300, 3.0)]
    kept = _head_columns(s._block_params(alpha, 1.0)[0], dtype)
    if structure == "kfac":  # rank ≤ N + 1 of 300 columns kept (ekfac's eigenvalues of the
        # null directions are round-off of per-sample projections, above K·ε: all kept)
        assert len(kept) == 5 and kept[1].shape[1] <= 41
    var = s.predictive_variance(model, x[:7], alpha, 1.0)
    cov = s.predictive_covariance(model, x[:7], alpha, 1.0)
    rtol = 1e-10 if dtype == "float64" else 300 * np.finfo("f4").eps
    np.testing.assert_allclose(var, np.einsum("nkk->nk", cov), rtol=rtol)
