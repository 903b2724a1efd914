"""The Monte-Carlo GGN (``curvature="ggn_mc"``): one sampled label per input instead of K
backward passes.

For a likelihood whose data term is a negative log-likelihood E(f, t) = −ln p(t | f), the
output Hessian of the GGN is the Fisher of p: Λ_n = E_{ŷ ~ p(· | f_n)}[g g ᵀ] with
g = ∇_f E(f_n, ŷ) (an exponential family in its natural parameters, pulled back through the
link: regression, a softmax or sigmoid classifier, the heteroscedastic Gaussian). Drawing one
ŷ per input and using the column g as L_n (B, K, 1),

    Ĝ = Σ_n J_nᵀ g_n g_nᵀ J_n,      E[Ĝ] = Σ_n J_nᵀ Λ_n J_n = G,

an unbiased estimate of the GGN from one pseudo-output per input: a layer-wise fit costs one
backward pass per batch whatever K (what laplace-torch and curvlinops call the MC Fisher). With
several precision groups each gets its own column (its outputs' part of g, zero elsewhere:
E[g_h g_h'ᵀ] = 0 between groups), so C_h stays that group's. The draws come from one
``tf.random.Generator`` per model (:meth:`sigma.curvature.Engine.generator`), reset from the
seed at each fit: the same seed gives the same curvature, and nothing is traced again.

When to prefer it: many outputs (K in the hundreds or thousands: language-model heads, many
classes, outputs per position), where the exact GGN's K backward passes dominate. Its noise
shrinks as 1/√N; with few data the exact GGN is better.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sigma.likelihoods.base import Groups, Likelihood


class MonteCarlo(Likelihood):
    """``base`` with its output Hessian replaced by one sampled gradient column per precision
    group (see the module docstring); ``generator``: the ``tf.random.Generator`` to draw from."""

    def __init__(self, base: Likelihood, generator):
        self.base, self.generator = base, generator
        self.name, self.noise, self.heads = base.name, base.noise, base.heads
        self.tempered = base.tempered

    @property
    def key(self) -> tuple:
        return ("ggn_mc", *self.base.key)

    def describe(self) -> dict:
        return self.base.describe()

    def groups(self, k: int) -> Groups:
        return self.base.groups(k)

    def pseudo_groups(self, k: int) -> np.ndarray:
        return np.arange(self.base.groups(k).n_groups)

    def data_error(self, f, t):
        return self.base.data_error(f, t)

    def group_errors(self, f, t, groups):
        return self.base.group_errors(f, t, groups)

    def targets(self, *args, **kwargs):
        return self.base.targets(*args, **kwargs)

    def draw(self, f):
        """(B, K, G): a sampled gradient g_n per input, split into one column per precision
        group (one draw per call: a batch's pseudo-outputs and generic Jacobians share it)."""
        k = f.shape[-1]
        g = tf.stop_gradient(sampled_gradient(self.base, tf.stop_gradient(f), self.generator))
        groups = self.base.groups(k)
        mask = tf.constant(np.eye(groups.n_groups)[groups.outputs], g.dtype)  # (K, G)
        return g[:, :, None] * mask[None]

    def pseudo(self, f, j, columns=None):
        cols = tf.cast(self.draw(f) if columns is None else columns, j.dtype)
        return tf.einsum("bkg,bk->bg" if j.shape.rank == 2 else "bkg,bkp->bgp", cols, j)

    def root(self, f, u, columns=None):
        cols = tf.cast(self.draw(f) if columns is None else columns, u.dtype)
        return tf.einsum("bkg,bg->bk" if u.shape.rank == 2 else "bkg,bgp->bkp", cols, u)

    def hessian_sqrt(self, f):
        return self.draw(f)


def sampled_gradient(lik: Likelihood, f, generator):
    """g = ∇_f E(f, ŷ) at a label ŷ drawn from the model's predictive p(· | f), (B, K) in f's
    dtype. Regression: −ε (ŷ = f + ε, unit noise: the curvature without β); a classifier:
    p − e_ŷ per head; a heteroscedastic Gaussian: the gradient of its NLL at ŷ ~ N(μ, σ²); a
    likelihood per head: each head's."""
    name = lik.name
    if name == "per_head":
        return tf.concat(
            [sampled_gradient(part, f[:, s:e], generator) for _, part, s, e in lik.bound()],
            axis=1,
        )
    if name == "regression":
        return -generator.normal(tf.shape(f), dtype=f.dtype)
    if name == "classification":
        return _classification_gradient(lik, f, generator)
    if name == "heteroscedastic":
        mean, logvar = lik.moments(f)
        draw = mean + tf.exp(0.5 * logvar) * generator.normal(tf.shape(mean), dtype=f.dtype)
        target = tf.concat([draw, draw], axis=1)
        with tf.GradientTape() as tape:
            tape.watch(f)
            e = lik.data_error(f, tf.stop_gradient(target))
        return tape.gradient(e, f)
    raise ValueError(f"curvature='ggn_mc' has no sampler for likelihood {name!r}")


def _classification_gradient(lik, f, generator):
    k = f.shape[-1]
    out = []
    for start, count, size in lik.runs(k):
        logits = tf.reshape(f[:, start : start + count * size], (-1, size))  # (B·H, C)
        if size == 1:  # Bernoulli: p − ŷ
            p = tf.sigmoid(logits)
            draw = tf.cast(generator.uniform(tf.shape(p), dtype=p.dtype) < p, p.dtype)
            g = p - draw
        else:
            p = tf.nn.softmax(logits, axis=-1)
            # ŷ ~ Cat(p) by the Gumbel-max trick (the generator's own uniform draws)
            u = generator.uniform(tf.shape(logits), minval=1e-12, maxval=1.0, dtype=logits.dtype)
            draw = tf.one_hot(tf.argmax(logits - tf.math.log(-tf.math.log(u)), axis=-1), size,
                              dtype=p.dtype)  # fmt: skip
            g = p - draw
        out.append(tf.reshape(g, (-1, count * size)))
    return out[0] if len(out) == 1 else tf.concat(out, axis=1)
