"""Every bad input gets a ValueError that names the argument and what was expected."""

import re

import keras
import numpy as np
import pytest
from conftest import make_mlp

import sigma


@pytest.fixture
def xy(rng):
    return rng.normal(size=(10, 3)), rng.normal(size=(10, 2))


@pytest.mark.parametrize("where", ["x", "y"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf(mlp64, xy, where, bad):
    x, y = (a.copy() for a in xy)
    (x if where == "x" else y)[3, 1] = bad
    for call in (
        lambda: sigma.hessian(mlp64, x, y),
        lambda: sigma.Laplace(mlp64, x, y),
    ):
        with pytest.raises(ValueError, match=rf"^{where} contains 1 NaN or infinite"):
            call()
    if where == "x":
        with pytest.raises(ValueError, match="^x contains"):
            sigma.output_jacobian(mlp64, x)
        with pytest.raises(ValueError, match="^x contains"):
            sigma.Laplace(mlp64, *xy).predict(x)


def test_wrong_rank_or_feature_count(mlp64, xy):
    x, y = xy
    with pytest.raises(ValueError, match=r"^x must have rank 2"):
        sigma.hessian(mlp64, x[:, :, None], y)
    with pytest.raises(ValueError, match=r"^x has shape \(10, 4\).*expects \(N, 3\)"):
        sigma.gauss_newton(mlp64, np.c_[x, x[:, :1]])
    with pytest.raises(ValueError, match=r"^y must have rank 1 or 2"):
        sigma.hessian(mlp64, x, y[:, :, None])


def test_wrong_length(mlp64, xy):
    x, y = xy
    with pytest.raises(ValueError, match=r"^y has 9 rows but x has 10"):
        sigma.Laplace(mlp64, x, y[:9])


def test_wrong_number_of_output_columns(mlp64, xy):
    x, y = xy
    with pytest.raises(ValueError, match=r"^y has 3 columns but the model has 2 outputs"):
        sigma.hessian(mlp64, x, np.c_[y, y[:, :1]])
    with pytest.raises(ValueError, match=r"^y must have shape \(N, K\) = \(10, 2\)"):
        sigma.Laplace(mlp64, x, y[:, 0])


def test_unbuilt_model(xy):
    x, y = xy
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"^model is not built"):
        sigma.Laplace(model, x, y)
    with pytest.raises(ValueError, match=r"^model must be a keras.Model"):
        sigma.hessian("not a model", x, y)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": -1.0}, r"^alpha must be a finite number >= 0, got -1.0"),
        ({"beta": 0.0}, r"^beta must be a finite number > 0, got 0.0"),
        ({"beta": -2.0}, r"^beta must be a finite number > 0"),
        ({"beta": float("nan")}, r"^beta must be a finite number > 0"),
        ({"alpha": "1"}, r"^alpha must be a real number"),
        ({"curvature": "fisher"}, r"^curvature must be one of \('ggn', 'ggn_mc', 'hessian'\)"),
        ({"structure": "banded"}, r"^structure must be one of"),
    ],
)
def test_bad_laplace_arguments(mlp64, xy, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sigma.Laplace(mlp64, *xy, **kwargs)


def test_bad_precision_assignment_is_refused(mlp64, xy):
    la = sigma.Laplace(mlp64, *xy)
    with pytest.raises(ValueError, match="^beta must be"):
        la.beta = 0
    assert la.beta == 1.0


def test_indefinite_hessian_posterior_says_how_to_fix(rng):
    """Far from a minimum the exact Hessian has negative eigenvalues; A must then be refused."""
    model = make_mlp(hidden=(6,), seed=3)
    x = rng.normal(size=(20, 3))
    y = 5.0 + 3.0 * rng.normal(size=(20, 2))  # large residuals at random weights
    lam = np.linalg.eigvalsh(sigma.hessian(model, x, y))
    assert lam.min() < 0
    with pytest.raises(ValueError, match=r"not positive definite.*curvature='ggn'.*alpha >"):
        sigma.Laplace(model, x, y, curvature="hessian", alpha=1e-3, beta=1.0)
    # the advertised fixes work
    sigma.Laplace(model, x, y, curvature="ggn", alpha=1e-3, beta=1.0)
    sigma.Laplace(model, x, y, curvature="hessian", alpha=-lam.min() * 1.01 + 1e-6, beta=1.0)


def test_bad_batch_size(mlp64, xy):
    with pytest.raises(ValueError, match="^batch_size must be a positive integer"):
        sigma.gauss_newton(mlp64, xy[0], batch_size=0)


def test_seed_sigma_refuses_nonpositive_diagonal():
    with pytest.raises(ValueError, match="^hessian_diag has 1 zero or negative"):
        sigma.lab.seed_sigma(np.array([1.0, 0.0]), np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"^output_gradients must have shape \(K, 2\)"):
        sigma.lab.seed_sigma(np.array([1.0, 2.0]), np.ones((3, 4)))


def test_missing_targets_for_arrays(mlp64, xy):
    with pytest.raises(ValueError, match=r"^y is required when x is an array"):
        sigma.Laplace(mlp64, xy[0])


def test_unbuilt_model_with_a_dataset(xy):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(xy).batch(4)
    with pytest.raises(ValueError, match=r"^model is not built"):
        sigma.Laplace(keras.Sequential([keras.layers.Dense(2)]), ds)


def test_fractional_batch_size(mlp64, xy):
    with pytest.raises(ValueError, match=r"^batch_size must be a positive integer, got 2.5"):
        sigma.gauss_newton(mlp64, xy[0], batch_size=2.5)


def test_mixed_precision_is_refused(xy):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, dtype="mixed_float16")])
    with pytest.raises(ValueError, match=r"^model uses a mixed-precision dtype policy"):
        sigma.Laplace(model, *xy)


def test_singular_curvature_with_zero_alpha_says_use_alpha(mlp64, rng):
    x, y = rng.normal(size=(3, 3)), rng.normal(size=(3, 2))  # rank(G) <= N K = 6 < P = 54
    with pytest.raises(ValueError, match=r"not positive definite.*C is singular.*alpha > 0"):
        sigma.Laplace(mlp64, x, y, alpha=0.0)


def test_changed_normalisation_statistics_are_refused(xy):
    model = keras.Sequential(
        [
            keras.Input((3,), dtype="float64"),
            keras.layers.Dense(4, dtype="float64"),
            keras.layers.BatchNormalization(dtype="float64"),
            keras.layers.Dropout(0.5, dtype="float64"),
            keras.layers.Dense(2, dtype="float64"),
        ]
    )
    la = sigma.Laplace(model, *xy)
    la.predict(xy[0])  # inference leaves the state (and the dropout seed) alone
    model.layers[1].moving_mean.assign(np.ones(4))
    with pytest.raises(
        ValueError, match=r"non-trainable state, e.g. BatchNorm statistics\) changed"
    ):
        la.predict(xy[0])


@pytest.mark.parametrize("structure", ["full", "diag"])
def test_a_curvature_beyond_round_off_of_alpha_names_the_inputs_scale(rng, structure):
    """issue 19: inputs of 1e18 make βC ~ 1e37, so α = 1 is lost in its round-off. The message
    says so (not "use alpha > 0"), names the inputs' magnitude, and its alpha works."""
    model = make_mlp(n_out=1, hidden=(8,), dtype="float32", activation="relu")
    x, y = np.full((8, 3), 1e18, "float32"), rng.normal(size=(8, 1))
    with pytest.raises(ValueError, match=r"largest eigenvalue is .*e\+3\d") as e:
        sigma.Laplace(model, x, y, structure=structure)
    message = str(e.value)
    assert "|x| = 1e+18" in message and "standardise the inputs" in message
    assert "use alpha > 0" not in message
    alpha = float(re.search(r"alpha >= ([0-9.e+]+)", message).group(1))
    la = sigma.Laplace(model, x, y, structure=structure, alpha=alpha)  # the advice holds
    assert np.all(np.isfinite(la.predict(x[:2])[1]))
    with pytest.raises(ValueError, match=r"largest eigenvalue") as e:  # no input scale to blame
        sigma.Laplace(make_mlp(n_out=1), rng.normal(size=(8, 3)), y, alpha=1e-12)
    assert "|x|" not in str(e.value)
