"""The fast path of transformer blocks (sigma.curvature.blocks): EinsumDense (every
MultiHeadAttention), Embedding and Keras' LoRA adapters, against slow, obvious references —
per-sample Jacobians from one plain tape per sample and output."""

import warnings

import keras
import numpy as np
import pytest
from layer_models import (
    attention,
    einsum_stack,
    jacobian_from_capture,
    loop_jacobian,
    lora_ids,
    lora_stack,
    token_ids,
    token_model,
)

import sigma

RNG = np.random.default_rng(0)
CASES = {
    "einsum": (einsum_stack, lambda n: RNG.normal(size=(n, 4, 5)), 1e-10),
    "attention": (attention, lambda n: RNG.normal(size=(n, 4, 6)), 1e-10),
    "tokens": (token_model, lambda n: token_ids(n, seed=int(RNG.integers(99))), 1e-10),
    # Keras makes LoRA adapters float32: the LoRA model is float32
    "lora": (lora_stack, lora_ids, 2e-4),
}


def _exact_ggn(model, x, likelihood):
    j = loop_jacobian(model, x)
    if likelihood == "classification":
        root = sigma.likelihoods.get(likelihood).hessian_sqrt(model(x)).numpy()
        j = np.einsum("nkj,nkp->njp", root, j)
    return np.einsum("nkp,nkq->pq", j, j)


@pytest.mark.parametrize("name", CASES)
def test_the_captured_blocks_rebuild_the_exact_jacobian(name):
    build, inputs, rtol = CASES[name]
    model, x = build(), inputs(5)
    j, plan = jacobian_from_capture(model, x)
    ref = loop_jacobian(model, x)
    np.testing.assert_allclose(j, ref, rtol=rtol, atol=rtol * np.abs(ref).max())
    covered = np.sort(np.concatenate([b.index for b in plan.fast + plan.generic]))
    np.testing.assert_array_equal(covered, np.arange(sigma.num_params(model)))
    assert plan.fast and all(b.positions > 0 for b in plan.fast)


def test_which_einsum_forms_and_layers_take_the_fast_path():
    plan = sigma.curvature.engine(m := einsum_stack()).layer_plan(RNG.normal(size=(2, 4, 5)))
    assert [b.kind for b in plan.fast] == ["einsum"] * 4 + ["dense"]
    # positions: the sequence (4), the sequence again, every leading axis, the sequence
    assert [b.positions for b in plan.fast] == [4, 4, 4, 4, 1]
    # (D, C): 5 + bias × 2·3 heads; 2·3 + bias × 4; 4 + bias × 3; 3 (bias over "e" only) × 2·2
    assert [(b.d_in, b.d_out) for b in plan.fast[:4]] == [(6, 6), (7, 4), (5, 3), (3, 4)]
    assert [(g.layer_class, g.size) for g in plan.generic] == [("EinsumDense", 2)]
    plan = sigma.curvature.engine(m := attention()).layer_plan(RNG.normal(size=(2, 4, 6)))
    assert [b.kind for b in plan.fast] == ["einsum"] * 4 + ["dense"]
    assert [g.layer_class for g in plan.generic] == ["LayerNormalization"]
    plan = sigma.curvature.engine(m := lora_stack()).layer_plan(lora_ids(2))
    assert [(b.kind, b.role) for b in plan.fast] == [
        ("embedding", "lora_a"), ("embedding", "lora_b"), ("einsum", "lora_a"),
        ("einsum", "lora_b"), ("dense", "lora_a"), ("dense", "lora_b"), ("dense", "kernel"),
    ]  # fmt: skip
    # the einsum's bias adds over both heads and features: not a row of B (r × 3): generic
    assert [g.size for g in plan.generic] == [6]
    assert len(m.trainable_variables) == 10


@pytest.mark.parametrize("likelihood", ["regression", "classification"])
@pytest.mark.parametrize("name", ["einsum", "attention", "tokens"])
def test_diag_is_the_exact_ggn_diagonal(name, likelihood):
    build, inputs, rtol = CASES[name]
    model, x = build(), inputs(7)
    y = RNG.normal(size=(7, 2)) if likelihood == "regression" else RNG.integers(0, 2, 7)
    la = sigma.Laplace(model, x, y, likelihood=likelihood, structure="diag")
    ref = np.diag(_exact_ggn(model, x, likelihood))
    np.testing.assert_allclose(la.structure.diagonal, ref, rtol=1e-9, atol=1e-12 * ref.max())


@pytest.mark.parametrize("name", ["einsum", "attention", "tokens", "lora"])
def test_ekfac_eigenvalues_are_the_exact_block_in_the_kfac_basis(name):
    build, inputs, rtol = CASES[name]
    model, x = build(), inputs(6)
    la = sigma.Laplace(model, x, RNG.normal(size=(6, 2)), structure="ekfac")
    g = _exact_ggn(model, x, "regression")
    s = la.structure
    for blk, (_, qv, _, hv), corr in zip(s.plan.fast, s.factor_eigen, s.corrected, strict=True):
        u = np.kron(np.eye(blk.d_in) if qv is None else qv, hv)
        ref = np.diag(u.T @ g[np.ix_(blk.index, blk.index)] @ u).reshape(blk.d_in, blk.d_out)
        np.testing.assert_allclose(corr, ref, rtol=1e3 * rtol, atol=rtol * np.abs(ref).max())


def _one_position_models():
    keras.utils.set_random_seed(1)
    inp = keras.Input((5,), dtype="float64")
    h = keras.layers.EinsumDense(
        "ab,bcd->acd", (2, 3), bias_axes="cd", activation="tanh", dtype="float64"
    )
    out = keras.layers.Dense(2, dtype="float64")(keras.layers.Flatten(dtype="float64")(h(inp)))
    return {
        "einsum-heads": (keras.Model(inp, out), RNG.normal(size=(1, 5))),
        "attention-one-token": (attention(length=1), RNG.normal(size=(1, 1, 6))),
        "embedding-one-token": (token_model(length=1), np.array([[3.0]])),
    }


@pytest.mark.parametrize("likelihood", ["regression", "classification"])
@pytest.mark.parametrize("name", ["einsum-heads", "attention-one-token", "embedding-one-token"])
def test_kfac_blocks_at_one_position_of_one_sample_are_the_exact_ggn_blocks(name, likelihood):
    model, x = _one_position_models()[name]
    y = RNG.normal(size=(1, 2)) if likelihood == "regression" else np.array([1])
    la = sigma.Laplace(model, x, y, likelihood=likelihood, structure="kfac")
    g, c = _exact_ggn(model, x, likelihood), la.structure.matrix()
    assert la.structure.plan.fast
    for blk in la.structure.plan.fast:
        assert blk.positions == 1
        idx = np.ix_(blk.index, blk.index)
        np.testing.assert_allclose(c[idx], g[idx], rtol=1e-9, atol=1e-12 * np.abs(g).max())


def _pooled_linear(seed=0):
    """A linear layer on a sequence whose outputs are mean-pooled at once: its sensitivity is
    the same at every position."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((5, 3), dtype="float64")
    h = keras.layers.Dense(4, dtype="float64")(inp)
    h = keras.layers.GlobalAveragePooling1D(dtype="float64")(h)
    out = keras.layers.Dense(2, dtype="float64")(keras.layers.Activation("tanh")(h))
    return keras.Model(inp, out)


def test_reduce_is_exact_for_a_pooled_layer_and_expand_is_not():
    model, x = _pooled_linear(), RNG.normal(size=(1, 5, 3))
    g = _exact_ggn(model, x, "regression")
    blk_of = {}
    for positions in ("reduce", "expand"):
        la = sigma.Laplace(
            model, x, RNG.normal(size=(1, 2)), structure="kfac",
            structure_options={"positions": positions},
        )  # fmt: skip
        blk = la.structure.plan.fast[0]
        assert blk.positions == 5
        idx = np.ix_(blk.index, blk.index)
        blk_of[positions] = la.structure.matrix()[idx]
    np.testing.assert_allclose(blk_of["reduce"], g[idx], rtol=1e-9, atol=1e-12 * np.abs(g).max())
    assert np.abs(blk_of["expand"] - g[idx]).max() > 1e-3 * np.abs(g[idx]).max()
    with pytest.raises(ValueError, match="positions must be one of"):
        sigma.Laplace(model, x, RNG.normal(size=(1, 2)), structure="kfac",
                      structure_options={"positions": "mean"})  # fmt: skip


@pytest.mark.parametrize("structure", ["kfac", "diag"])
def test_a_large_vocabulary_costs_memory_in_vocabulary_times_width(structure):
    vocab, width = 50_000, 8
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((12,)),
            keras.layers.Embedding(vocab, width),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3),
        ]
    )
    x = RNG.integers(0, vocab, size=(64, 12)).astype("f4")
    la = sigma.Laplace(model, x, RNG.integers(0, 3, 64), likelihood="classification",
                       structure=structure)  # fmt: skip
    held = sum(np.asarray(v).size for v in vars(la.structure).values() if hasattr(v, "size"))
    if structure == "kfac":
        q, h = la.structure.factors[0]
        assert q.shape == (vocab,) and h.shape == (width, width)
        held += sum(np.asarray(a).size for pair in la.structure.factors for a in pair)
    assert held < 10 * vocab * width  # never (V·d)²
    assert la.memory_estimate is None or la.memory_estimate < 2e9
    p = la.predict_proba(x[:5])
    assert np.all(np.isfinite(p)) and np.allclose(p.sum(1), 1)
    # tokens never seen keep the prior: the posterior variance of their rows is 1/α
    seen = np.unique(x.astype(int))
    unseen = np.setdiff1d(np.arange(vocab), seen)[:3]
    inv = la.structure.inverse_diagonal(la.alpha, la.beta)[: vocab * width].reshape(vocab, width)
    np.testing.assert_allclose(inv[unseen], 1.0 / la.alpha, rtol=1e-12)
    assert np.all(inv[seen] < 1.0 / la.alpha)


def test_laplace_over_lora_adapters_alone_with_kfac():
    model = lora_stack()
    adapters = [v for v in model.trainable_variables if "lora" in v.path]
    x, y = lora_ids(16), RNG.normal(size=(16, 2)).astype("f4")
    la = sigma.Laplace(model, x, y, structure="kfac", weights=adapters).optimize_evidence()
    assert la.n_params == sum(int(np.prod(v.shape)) for v in adapters)
    assert [b.role for b in la.structure.plan.fast] == ["lora_a", "lora_b"] * 3
    mean, std = la.predict(x[:4])
    assert np.all(np.isfinite(std)) and np.all(std > 0)


def _norms(seed=0):
    """BatchNormalization on axis 1 (not the last), LayerNormalization with rms_scaling and
    a shared LayerNormalization called twice, with non-trivial statistics."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((3, 4), dtype="float64")
    bn = keras.layers.BatchNormalization(axis=1, dtype="float64")
    h = bn(inp)
    h = keras.layers.Dense(4, activation="tanh", dtype="float64")(h)
    h = keras.layers.LayerNormalization(rms_scaling=True, dtype="float64")(h)
    shared = keras.layers.LayerNormalization(dtype="float64")
    h = shared(keras.layers.Dense(4, dtype="float64")(shared(h)))
    out = keras.layers.Dense(2, dtype="float64")(keras.layers.Flatten(dtype="float64")(h))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(seed)
    bn.moving_mean.assign(rng.normal(size=3))
    bn.moving_variance.assign(rng.uniform(0.5, 2, size=3))
    for v in model.trainable_variables:
        if "gamma" in v.path or "beta" in v.path:
            v.assign(v.numpy() + 0.3 * rng.normal(size=v.shape))
    return model


def test_normalisation_layers_take_their_jacobian_from_the_capture():
    model, x = _norms(), RNG.normal(size=(5, 3, 4))
    j, plan = jacobian_from_capture(model, x)
    assert [g.norm for g in plan.generic] == ["batchnorm", "layernorm", "layernorm"]
    ref = loop_jacobian(model, x)
    # x̂ recomputed from the layer's input agrees with its forward pass to ~1e-10 (float64)
    np.testing.assert_allclose(j, ref, rtol=1e-8, atol=1e-9 * np.abs(ref).max())


def test_lora_adapters_at_keras_zero_start_take_the_fast_path():
    """Keras starts a LoRA B at zero, so A's reference gradient on the probe is all zero: the
    probe's comparison must not divide 0 by an underflowed float32 scale (NaN: generic)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    dense = keras.layers.Dense(3)
    model = keras.Model(inp, keras.layers.Dense(2)(dense(inp)))
    dense.enable_lora(2)
    x = RNG.normal(size=(16, 4)).astype("float32")
    y = RNG.normal(size=(16, 2)).astype("float32")
    adapters = [dense.lora_kernel_a, dense.lora_kernel_b]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "invalid value", no "tied weights?"
        plan = sigma.Laplace(model, x, y, structure="kfac", weights=adapters).structure.plan
    assert [b.role for b in plan.fast] == ["lora_a", "lora_b"] and not plan.generic


def _two_attention_blocks():
    keras.utils.set_random_seed(0)
    inp = keras.Input((4, 6), dtype="float64")
    h = keras.layers.MultiHeadAttention(2, 3, name="block_0", dtype="float64")(inp, inp)
    h = keras.layers.MultiHeadAttention(2, 3, name="block_1", dtype="float64")(h, h)
    h = keras.layers.GlobalAveragePooling1D(dtype="float64")(h)
    return keras.Model(inp, keras.layers.Dense(2, name="head", dtype="float64")(h))


def test_layers_of_the_same_name_in_two_blocks_are_told_apart():
    """Every MultiHeadAttention names its projections query/key/value/attention_output: the
    layer prior and the plan's table name them by their Keras path."""
    model, x = _two_attention_blocks(), RNG.normal(size=(16, 4, 6))
    la = sigma.Laplace(model, x, RNG.normal(size=(16, 2)), structure="kfac", prior="layer")
    names = list(la.prior_groups)
    assert len(names) == 9 == len(set(names))
    assert {"block_0/query", "block_1/query", "block_1/attention_output", "head"} <= set(names)
    table = sigma.curvature.engine(model).layer_plan(x).table()
    assert sorted(r["layer"] for r in table) == sorted(names)


def test_reduce_warns_when_it_leaves_an_attention_key_without_curvature():
    """Σ_t s_t = 0 for a key projection (the softmax over keys ignores a common shift):
    positions='reduce' gives it no curvature; the fit says so, and the evidence refuses to
    pick an α for weights the data do not determine, naming the prior group."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((4, 6), dtype="float64")
    h = keras.layers.MultiHeadAttention(2, 3, name="mha", dtype="float64")(inp, inp)
    h = keras.layers.GlobalAveragePooling1D(dtype="float64")(h)
    model = keras.Model(inp, keras.layers.Dense(3, dtype="float64")(h))
    x, y = RNG.normal(size=(64, 4, 6)), RNG.integers(0, 3, 64)
    kw = dict(likelihood="classification", structure="kfac", prior="layer")
    with pytest.warns(RuntimeWarning, match=r"'mha/key' no curvature"):
        la = sigma.Laplace(model, x, y, structure_options={"positions": "reduce"}, **kw)
    with pytest.raises(sigma.evidence.EvidenceBoundaryError, match="determine") as info:
        la.optimize_evidence()
    assert "'mha/key'" in "".join(getattr(info.value, "__notes__", []))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        sigma.Laplace(model, x, y, **kw).optimize_evidence()  # expand: every group determined


@pytest.mark.parametrize(
    "case", ["float32", "float16", "float64", "tiny_precision", "huge_g", "tiny_g"]
)
def test_the_quadratic_over_positions_is_the_slow_sum(case):
    """Σ_dc G_nk,dc G_nl,dc W_dc with G_nk = Σ_t ã_nt s_nktᵀ (the predictive of a block used at
    several positions) against the plain float64 sums: in float32 with W scaled, half-precision
    inputs in float32, W beyond float32 (a tiny α), G² above and below float32's range; eager
    and traced."""
    from types import SimpleNamespace

    import tensorflow as tf

    from sigma.curvature import blocks

    rng = np.random.default_rng(0)
    b, t, d, k, c = 3, 4, 5, 2, 3
    a, s = rng.normal(size=(b, t, d)), rng.normal(size=(k, b, t, c))
    w = rng.uniform(0.1, 1.0, (d, c))
    dtype = {"float16": "float16", "float64": "float64"}.get(case, "float32")
    if case == "tiny_precision":
        w = w * 1e300
    if case == "huge_g":
        a = a * 1e20
    if case == "tiny_g":  # G ~ 1e-22: G² underflows float32, not G
        a, w = a * 1e-22, w * 1e30
    a, s = a.astype(dtype), s.astype(dtype)
    g = np.einsum("btd,kbtc->bkdc", a.astype(np.float64), s.astype(np.float64))
    ref = np.einsum("bkdc,dc,bldc->bkl", g, w, g)
    blk = SimpleNamespace(positions=t, sparse=False)
    for covariance, want in [(False, np.einsum("bkk->bk", ref)), (True, ref)]:

        def run(a, s, w, covariance=covariance):
            return blocks.quadratic(blk, a, s, w, covariance=covariance)

        for fn in (run, tf.function(run)):
            out = fn(tf.constant(a), tf.constant(s), tf.constant(w)).numpy()
            assert out.dtype == np.float64 and out.shape == want.shape
            np.testing.assert_allclose(out, want, rtol=1e-12 if dtype == "float64" else 1e-5)
