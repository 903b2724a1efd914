"""Which weights × how stored: every structure on every kind of selection of the weights equals
the full curvature restricted to that selection (where the structure is exact), Keras' LoRA
adapters alone, the old structure="last_layer" spelling, and the refusals."""

import keras
import numpy as np
import pytest
from conftest import make_mlp

import sigma
from sigma import structures
from sigma.priors import owners_of
from sigma.weights import select

ALPHA, BETA = 0.7, 2.5

# How each structure is made exact, so that "the full curvature restricted to the selection"
# is its reference: (structure_options, number of training samples, which reference).
# kfac's Q ⊗ H is the exact GGN block of a Dense layer for one sample, block-diagonal over
# layers; lowrank of rank 2 holds the whole GGN of one sample with two outputs.
EXACT = {
    "full": ({}, 20, "full"),
    "diag": ({}, 20, "diagonal"),
    "kfac": ({}, 1, "layer blocks"),
    "ekfac": ({}, 1, "layer blocks"),  # for one sample c_ij = q_i h_j: KFAC's exact block
    "lowrank": ({"rank": 2}, 1, "full"),
}


def _selections(model):
    d0, d1, d2 = (la for la in model.layers if la.trainable_variables)
    rng = np.random.default_rng(3)
    masks = [rng.random(tuple(v.shape)) < 0.5 for v in model.trainable_variables]
    masks[1] = True  # the first layer's bias whole, the others in part
    return {
        "last_layer": "last_layer",
        "variables": [d0.kernel, d1.bias, d2.kernel],  # a kernel without its bias, a bias alone
        "mask": masks,
    }


@pytest.fixture(scope="module")
def model():
    """One model for the grid: each selection's graphs are traced once and reused."""
    return make_mlp()


def _built_in() -> set:
    """The structures sigma registers (tests may register their own)."""
    registry = structures.Structure.registry
    return {n for n, c in registry.items() if c.__module__.startswith("sigma.structures")}


def test_every_registered_structure_has_an_exact_reference():
    assert set(EXACT) == _built_in()


def _reference(model, x, y, idx, kind, x_test):
    """(C_ref (P_s, P_s), J_s(x_test)) from the full GGN and Jacobian restricted to idx."""
    g = sigma.gauss_newton(model, x)[np.ix_(idx, idx)]
    if kind == "diagonal":
        g = np.diag(np.diag(g))
    elif kind == "layer blocks":
        owners = owners_of(model)
        layer_of = np.concatenate(
            [np.full(int(np.prod(v.shape)), hash(owners[id(v)])) for v in model.trainable_variables]
        )[idx]
        g = g * (layer_of[:, None] == layer_of[None, :])
    j = sigma.output_jacobian(model, x_test)[:, :, idx]
    return g, j


@pytest.mark.parametrize("which", ["last_layer", "variables", "mask"])
@pytest.mark.parametrize("structure", sorted(EXACT))
def test_every_structure_on_every_selection_equals_full_restricted(model, structure, which):
    rng = np.random.default_rng(1)
    options, n, kind = EXACT[structure]
    x, y = rng.normal(size=(n, 3)), rng.normal(size=(n, 2))
    x_test = rng.normal(size=(4, 3))
    weights = _selections(model)[which]
    idx = select(model, weights).index
    la = sigma.Laplace(
        model, x, y, structure=structure, structure_options=options or None, weights=weights,
        alpha=ALPHA, beta=BETA,
    )  # fmt: skip
    assert la.n_params == idx.size
    c, j = _reference(model, x, y, idx, kind, x_test)
    a = ALPHA * np.eye(idx.size) + BETA * c
    cov = np.einsum("nkp,pq,nlq->nkl", j, np.linalg.inv(a), j) + np.eye(2) / BETA
    np.testing.assert_allclose(la.predictive_covariance(x_test), cov, rtol=1e-7, atol=1e-10)
    # the evidence over the selected weights: E_W of those alone, ln|A| of the restricted C
    w = sigma.flat_weights(model)[idx]
    f = model(x).numpy()
    e_d, e_w = 0.5 * np.sum((f - y) ** 2), 0.5 * w @ w
    nk, p = y.size, idx.size
    ref = (
        -ALPHA * e_w - BETA * e_d - 0.5 * np.linalg.slogdet(a)[1] + 0.5 * p * np.log(ALPHA)
        + 0.5 * nk * np.log(BETA) - 0.5 * nk * np.log(2 * np.pi)
    )  # fmt: skip
    assert la.log_evidence() == pytest.approx(ref, rel=1e-8)
    lam = np.linalg.eigvalsh(BETA * c)
    assert la.gamma == pytest.approx(np.sum(lam / (lam + ALPHA)), rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("structure", ["full", "diag", "kfac", "lowrank"])  # ekfac: one α/layer
def test_a_layer_prior_on_a_selection_groups_the_selected_weights(model, rng, structure):
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 2))
    weights = _selections(model)["mask"]
    sel = select(model, weights)
    la = sigma.Laplace(model, x, y, structure=structure, weights=weights, prior="variable")
    assert la.prior.groups.size == sel.n_params
    assert list(la.prior.sizes) == list(sel.sizes)
    la.alpha = np.arange(1.0, 1.0 + la.prior.n_groups)
    assert np.all(np.isfinite(la.predict(x[:3])[1]))


def test_structure_last_layer_is_weights_last_layer_with_full(model, rng):
    x, y = rng.normal(size=(15, 3)), rng.normal(size=(15, 2))
    old = sigma.Laplace(model, x, y, structure="last_layer", alpha=ALPHA, beta=BETA)
    new = sigma.Laplace(model, x, y, weights="last_layer", alpha=ALPHA, beta=BETA)
    assert old.structure.name == "full" and old.selection.kind == "last_layer"
    assert old.n_params == 10
    np.testing.assert_allclose(old.structure.matrix, new.structure.matrix, rtol=1e-12)
    with pytest.raises(ValueError, match=r"structure='last_layer' means weights='last_layer'"):
        sigma.Laplace(model, x, y, structure="last_layer", weights=[model.layers[0].kernel])


def _lora_model(rank=2, seed=0):
    # float32: Keras 3.15 creates the adapters in float32 whatever the layer's dtype
    model = make_mlp(hidden=(6, 5), seed=seed, dtype="float32")
    rng = np.random.default_rng(seed)
    for layer in model.layers[:2]:
        layer.enable_lora(rank)
        # B starts at zero (the adapter adds nothing yet, and nothing reaches A): trained values
        layer.lora_kernel_b.assign(rng.normal(size=tuple(layer.lora_kernel_b.shape)))
    return model


@pytest.fixture(scope="module")
def lora_model():
    return _lora_model()


@pytest.mark.parametrize("structure", ["full", "diag"])
def test_lora_adapters_alone_equal_full_restricted_to_them(lora_model, rng, structure):
    model = lora_model
    adapters = [v for la in model.layers[:2] for v in (la.lora_kernel_a, la.lora_kernel_b)]
    # the base kernels frozen: each LoRA layer trains its adapters and its bias
    assert all(len(la.trainable_variables) == 3 for la in model.layers[:2])
    x = rng.normal(size=(12, 3)).astype("float32")
    y = rng.normal(size=(12, 2)).astype("float32")
    x_test = rng.normal(size=(4, 3)).astype("float32")
    idx = select(model, adapters).index
    assert idx.size == sum(int(np.prod(v.shape)) for v in adapters)
    la = sigma.Laplace(model, x, y, structure=structure, weights=adapters, alpha=ALPHA, beta=BETA)
    kind = {"full": "full", "diag": "diagonal"}[structure]
    c, j = _reference(model, x, y, idx, kind, x_test)
    a = ALPHA * np.eye(idx.size) + BETA * c
    var = np.einsum("nkp,pq,nkq->nk", j, np.linalg.inv(a), j) + 1.0 / BETA
    np.testing.assert_allclose(la.predict(x_test)[1] ** 2, var, rtol=1e-5)
    w = sigma.flat_weights(model)[idx].astype(np.float64)
    assert la.weight_error == pytest.approx(0.5 * w @ w, rel=1e-6)


@pytest.mark.parametrize("structure", sorted(EXACT))
def test_save_load_and_serve_a_selection(model, rng, tmp_path, structure):
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 2))
    weights = _selections(model)["variables" if "kfac" in structure else "mask"]
    options = {"rank": 3} if structure == "lowrank" else None
    la = sigma.Laplace(
        model, x, y, structure=structure, structure_options=options, weights=weights,
        alpha=ALPHA, beta=BETA,
    )  # fmt: skip
    mean, std = la.predict(x[:5])
    back = sigma.Laplace.load(la.save(tmp_path / "fit.npz"), model)
    assert back.n_params == la.n_params and back.selection.kind == la.selection.kind
    np.testing.assert_array_equal(back.selection.index, la.selection.index)
    np.testing.assert_allclose(back.predict(x[:5])[1], std, rtol=1e-10)
    assert back.log_evidence() == pytest.approx(la.log_evidence(), rel=1e-12)
    served = la.to_keras()(x[:5])
    np.testing.assert_allclose(np.asarray(served["std"]), std, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(served["mean"]), mean, rtol=1e-10)


def test_bad_weights_are_refused_naming_the_argument(rng, mlp64):
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    frozen = keras.Variable(np.zeros(3))
    cases = [
        ("first", r"weights must be one of"),
        ([frozen], r"weights: .* is not one of the model's trainable variables"),
        ([mlp64.layers[0].kernel] * 2, r"weights lists a variable more than once"),
        ([True, False], r"weights as masks must hold one boolean mask per trainable variable"),
        ([np.zeros((2, 2), bool)] + [True] * 5, r"weights: the mask of .* must have the"),
        ([np.zeros((3, 5))] + [True] * 5, r"weights: the mask of .* must be boolean"),
        ([False] * 6, r"weights selects no weight"),
        ({}, r"weights selects no weight"),
        (3, r"weights must be one of"),
    ]
    for weights, message in cases:
        with pytest.raises(ValueError, match=message):
            sigma.Laplace(mlp64, x, y, weights=weights)


def test_an_empty_selection_says_so_and_what_to_pass(rng, mlp64):
    """issue 28: weights=[] was "weights as masks must hold one boolean mask per trainable
    variable (6), got 0 entries"; masks that select nothing say that too."""
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    cases = [
        ([], r"^weights is an empty list: it selects no weight. Pass weights='all' \(the "
             r"default\).* one boolean mask per trainable variable \(6\) with at least one True"),
        ((), r"^weights is an empty tuple: it selects no weight"),
        ([False] * 6, r"^weights selects no weight \(every mask is False\).*weights='all'"),
        ([np.zeros(v.shape, bool) for v in mlp64.trainable_variables],
         r"^weights selects no weight \(every mask is False\)"),
    ]  # fmt: skip
    for weights, message in cases:
        with pytest.raises(ValueError, match=message):
            sigma.Laplace(mlp64, x, y, weights=weights)
