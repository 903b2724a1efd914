"""Tiny float64 models covering the layer paths of sigma.curvature.capture (fast: Dense, Conv1D, Conv2D;
generic: Embedding, BatchNormalization; no weights: Dropout, pooling, Flatten), in the three
ways of building a Keras model, plus a reference that rebuilds J from a capture."""

import keras
import numpy as np
import tensorflow as tf

import sigma
from sigma.curvature.capture import capture, plan_layers, probe, with_pfor_fallback

F = "float64"


def cnn(seed=0, n_out=3):
    """Conv2D (same, stride 1) → max-pool → Conv2D (valid, dilation 2) → Flatten → Dense."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((7, 7, 2), dtype=F),
            keras.layers.Conv2D(3, 3, padding="same", activation="tanh", dtype=F),
            keras.layers.MaxPooling2D(2, dtype=F),
            keras.layers.Conv2D(2, 2, dilation_rate=1, activation="tanh", dtype=F),
            keras.layers.Flatten(dtype=F),
            keras.layers.Dense(n_out, dtype=F),
        ]
    )


def strided_cnn(seed=0):
    """Conv2D with stride 2 and 'same' padding, dilation 2, then a Conv1D with causal padding."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 6, 2), dtype=F)
    h = keras.layers.Conv2D(3, (3, 2), strides=2, padding="same", activation="tanh", dtype=F)(inp)
    h = keras.layers.Conv2D(2, 2, dilation_rate=(2, 1), activation="relu", dtype=F)(h)
    h = keras.layers.Reshape((-1, 2), dtype=F)(h)
    h = keras.layers.Conv1D(2, 2, strides=1, padding="causal", activation="tanh", dtype=F)(h)
    h = keras.layers.Conv1D(3, 2, strides=2, use_bias=False, dtype=F)(h)
    out = keras.layers.Dense(2, dtype=F)(keras.layers.GlobalAveragePooling1D(dtype=F)(h))
    return keras.Model(inp, out)


def embedding_bn_dropout(seed=0, n_out=2):
    """Embedding → Flatten → BatchNormalization (with non-trivial statistics) → Dense → Dropout
    → Dense: the generic path for Embedding and BatchNorm, Dropout off at inference."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((4,), dtype=F),
            keras.layers.Embedding(6, 3, dtype=F),
            keras.layers.Flatten(dtype=F),
            keras.layers.BatchNormalization(dtype=F),
            keras.layers.Dense(5, activation="tanh", dtype=F),
            keras.layers.Dropout(0.5, dtype=F),
            keras.layers.Dense(n_out, dtype=F),
        ]
    )
    bn = model.layers[2]
    rng = np.random.default_rng(seed)
    bn.moving_mean.assign(rng.normal(size=12) * 0.3)
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=12))
    bn.gamma.assign(rng.uniform(0.5, 1.5, size=12))
    bn.beta.assign(rng.normal(size=12) * 0.2)
    return model


def tokens(n, seed=0):
    return np.random.default_rng(seed).integers(0, 6, size=(n, 4)).astype(F)


def functional_mlp(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((3,), dtype=F)
    h = keras.layers.Dense(4, activation="tanh", dtype=F)(inp)
    out = keras.layers.Dense(2, dtype=F)(keras.layers.Dense(3, activation="sigmoid", dtype=F)(h))
    return keras.Model(inp, out)


class SharedDense(keras.Model):
    """Subclassed: one Dense applied twice (weight sharing → two positions), a Dense on a
    sequence (positions), a nested Sequential."""

    def __init__(self):
        super().__init__(dtype=F)
        self.shared = keras.layers.Dense(3, activation="tanh", dtype=F)
        self.seq = keras.layers.Dense(2, activation="tanh", dtype=F)
        self.head = keras.Sequential(
            [keras.layers.Dense(4, activation="tanh", dtype=F), keras.layers.Dense(2, dtype=F)]
        )

    def call(self, x):
        h = self.shared(self.shared(x))  # (B, 3) → (B, 3)
        s = self.seq(tf.reshape(x, (-1, 1, 3)) * tf.constant([[[1.0], [2.0]]], F))  # (B, 2, 2)
        return self.head(tf.concat([h, tf.reshape(s, (-1, 4))], axis=-1))


def shared_dense(seed=0):
    keras.utils.set_random_seed(seed)
    model = SharedDense()
    model(np.zeros((1, 3)))
    return model


class Tied(keras.Model):
    """A Dense whose kernel is used again outside its call (tied weights)."""

    def __init__(self):
        super().__init__(dtype=F)
        self.inp = keras.layers.Dense(3, activation="tanh", dtype=F)
        self.out = keras.layers.Dense(2, dtype=F)

    def call(self, x):
        h = self.inp(x)
        return self.out(h + tf.matmul(h, tf.transpose(self.inp.kernel)) @ self.inp.kernel)


def tied(seed=0):
    keras.utils.set_random_seed(seed)
    model = Tied()
    model(np.zeros((1, 3)))
    return model


def jacobian_from_capture(model, x, *, fast=True, likelihood=None):
    """J (N, K, P) (or Lᵀ J) rebuilt from the fast path's outer products and the generic
    Jacobians: the reference check of sigma.curvature.capture against sigma.output_jacobian."""
    plan = probe(model, plan_layers(model, fast=fast), x[:8])
    lik = None if likelihood is None else sigma.likelihoods.get(likelihood)
    cap = with_pfor_fallback(plan, lambda: capture(model, plan, tf.constant(x), likelihood=lik))
    n = cap.outputs.shape[0]  # k: the pseudo-outputs' count (C − 1 per softmax head of C)
    k = next(t.shape[0] for t in cap.sens if t is not None) if plan.fast else cap.jacs[0].shape[1]
    j = np.zeros((n, k, plan.n_params))
    for blk, a, s in zip(plan.fast, cap.acts, cap.sens, strict=True):
        a = np.eye(blk.d_in)[a.numpy()] if blk.sparse else a.numpy()  # token ids: one-hot rows
        g = np.einsum("btd,kbtc->bkdc", a, s.numpy())
        j[:, :, blk.index] = g.reshape(n, k, -1)
    for blk, jac in zip(plan.generic, cap.jacs, strict=True):
        j[:, :, blk.index] = jac.numpy()
    return j, plan


def loop_jacobian(model, x):
    """J (N, K, P) by one plain tape per sample and output: the slow, obvious reference (for
    layers on which pfor, and so sigma.output_jacobian, fails, e.g. grouped convolutions)."""
    rows = []
    for n in range(len(x)):
        with tf.GradientTape(persistent=True) as tape:
            f = tf.reshape(model(x[n : n + 1], training=False), [-1])
            outs = [f[k] for k in range(f.shape[0])]
        rows.append(
            [
                np.concatenate(
                    [
                        tf.convert_to_tensor(g).numpy().ravel()
                        for g in tape.gradient(o, model.trainable_variables)
                    ]
                )
                for o in outs
            ]
        )
        del tape
    return np.array(rows)


class Folded(keras.Model):
    """A Dense applied to the samples' halves folded into the batch axis (B·2, 3)."""

    def __init__(self):
        super().__init__(dtype=F)
        self.inner = keras.layers.Dense(2, activation="tanh", dtype=F)
        self.out = keras.layers.Dense(2, dtype=F)

    def call(self, x):
        h = self.inner(tf.reshape(x, (-1, 3)))
        return self.out(tf.reshape(h, (-1, 4)))


def folded(seed=0):
    keras.utils.set_random_seed(seed)
    model = Folded()
    model(np.zeros((1, 6)))
    return model


def model_cases(rng):
    """Parametrize (build, inputs, likelihood) over an MLP, a CNN and an Embedding/BN/Dropout
    model, each for regression and classification; inputs drawn from ``rng``."""
    import pytest
    from conftest import make_mlp

    def dense(n):
        return rng.normal(size=(n, 3))

    def images(n):
        return rng.normal(size=(n, 7, 7, 2))

    slow = pytest.mark.slow  # the edit loop (make test-fast) keeps the MLP and the CNN
    return pytest.mark.parametrize(
        ("build", "inputs", "likelihood"),
        [
            pytest.param(make_mlp, dense, "regression", id="mlp-reg"),
            pytest.param(make_mlp, dense, "classification", id="mlp-clf"),
            pytest.param(cnn, images, "regression", id="cnn-reg"),
            pytest.param(cnn, images, "classification", id="cnn-clf", marks=slow),
            pytest.param(
                embedding_bn_dropout, tokens, "regression", id="emb_bn_dropout-reg", marks=slow
            ),
            pytest.param(
                embedding_bn_dropout, tokens, "classification", id="emb_bn_dropout-clf", marks=slow
            ),
        ],
    )


# -- transformer blocks, embeddings and LoRA (sigma.curvature.blocks) -----------------------------
def einsum_stack(seed=0, n_out=2):
    """EinsumDense in four forms: a projection to heads (positions: the sequence), back from
    heads (contracting two axes), a left-elided equation, and a bias over only some of the
    kernel's output axes (that bias takes the generic path)."""
    keras.utils.set_random_seed(seed)
    E = keras.layers.EinsumDense
    inp = keras.Input((4, 5), dtype=F)
    h = E("abc,cde->abde", (4, 2, 3), bias_axes="de", activation="tanh", dtype=F)(inp)
    h = E("abcd,cde->abe", (4, 4), bias_axes="e", dtype=F)(h)
    h = E("...b,bc->...c", 3, bias_axes="c", activation="tanh", dtype=F)(h)
    h = E("abc,cde->abde", (4, 2, 2), bias_axes="e", dtype=F)(h)
    h = keras.layers.Flatten(dtype=F)(h)
    return keras.Model(inp, keras.layers.Dense(n_out, dtype=F)(h))


def attention(seed=0, n_out=2, length=4):
    """Self-attention (MultiHeadAttention: four EinsumDense), a residual, LayerNormalization,
    mean pooling and a Dense head."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((length, 6), dtype=F)
    h = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3, dtype=F)(inp, inp)
    h = keras.layers.LayerNormalization(dtype=F)(h + inp)
    h = keras.layers.GlobalAveragePooling1D(dtype=F)(h)
    return keras.Model(inp, keras.layers.Dense(n_out, dtype=F)(h))


def token_model(seed=0, n_out=2, vocab=5, length=6):
    """Embedding → Dense on every token → mean pooling → Dense: repeated tokens in a
    sequence add up in the embedding's per-sample gradient."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((length,), dtype=F)
    h = keras.layers.Embedding(vocab, 3, dtype=F)(inp)
    h = keras.layers.Dense(4, activation="tanh", dtype=F)(h)
    h = keras.layers.GlobalAveragePooling1D(dtype=F)(h)
    return keras.Model(inp, keras.layers.Dense(n_out, dtype=F)(h))


def token_ids(n, seed=0, vocab=5, length=6):
    return np.random.default_rng(seed).integers(0, vocab, size=(n, length)).astype(F)


def lora_stack(seed=0, n_out=2, base_trainable=False, dtype="float32"):
    """Keras' LoRA on an Embedding, an EinsumDense (heads: the adapter B sees the heads as
    positions) and a Dense, with B moved off its zero start; the base weights frozen (Keras'
    default) or trainable too. float32: Keras makes LoRA adapters float32 whatever the
    layer's dtype."""
    F = dtype
    keras.utils.set_random_seed(seed)
    emb = keras.layers.Embedding(5, 4, dtype=F)
    proj = keras.layers.EinsumDense("abc,cde->abde", (3, 2, 3), bias_axes="de", dtype=F)
    dense = keras.layers.Dense(3, activation="tanh", dtype=F)
    inp = keras.Input((3,), dtype=F)
    h = proj(emb(inp))
    h = dense(keras.layers.Reshape((3, 6), dtype=F)(h))
    out = keras.layers.Dense(n_out, dtype=F)(keras.layers.Flatten(dtype=F)(h))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(seed)
    for layer in (emb, proj, dense):
        layer.enable_lora(2)
        b = layer.lora_embeddings_b if layer is emb else layer.lora_kernel_b
        b.assign(rng.normal(size=tuple(b.shape)) * 0.5)
        if base_trainable:
            (layer._embeddings if layer is emb else layer._kernel).trainable = True
    return model


def lora_ids(n, seed=0):
    return np.random.default_rng(seed).integers(0, 5, size=(n, 3)).astype("float32")
