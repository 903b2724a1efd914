"""Curvature of the summed data error by automatic differentiation (shared/design/MATH.md).

All functions take a built Keras model and arrays, differentiate the pure function
f(w, x) of :func:`sigma.params.functional_forward` with respect to the flat weight vector w
(order: ``model.trainable_variables`` flattened row-major, concatenated; length P), and return
float64 NumPy arrays. Each builds one ``tf.function`` per call, traced once with a batch
dimension of ``None``, and reuses it over batches of the data.

    E_D(w) = ½ Σ_n Σ_k (f_k(x_n; w) − t_nk)²          (summed, not averaged)
    H      = ∇² E_D(w)                                  (exact Hessian, nested tapes)
    G      = Σ_n J_nᵀ J_n,   J_n = ∂f(x_n)/∂w  (K×P)    (Gauss–Newton)

With ``likelihood="classification"`` the data term is the cross-entropy on logits and the
Gauss–Newton matrix is the generalised one, Σ_n J_nᵀ Λ_n J_n (see :mod:`sigma.likelihoods`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sigma import likelihoods
from sigma._checks import check_inputs, check_model, model_dtype
from sigma.params import flat_weights, functional_forward, num_params

# Default cap on the elements of one batch's Jacobian or Hessian intermediate (~256 MB float64).
ELEMENT_BUDGET = 2**25


def num_outputs(model, x) -> int:
    """K, the number of outputs per sample (the model's output flattened per sample)."""
    out = model(np.asarray(x[:1]).astype(model_dtype(model)), training=False)
    return int(np.prod(out.shape[1:]))


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def batch_size_for(
    n: int, per_sample: int, batch_size: int | None, *, budget: int = ELEMENT_BUDGET
) -> int:
    """``batch_size`` if given (validated), else the largest batch (at most n) whose
    intermediates of ``per_sample`` elements per sample stay within ``budget`` elements."""
    if batch_size is not None:
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        return int(batch_size)
    return int(max(1, min(n, budget // max(int(per_sample), 1))))


def _spec(model, arr) -> tf.TensorSpec:
    return tf.TensorSpec([None, *arr.shape[1:]], model_dtype(model))


def prepare(model, x, y=None, likelihood="regression"):
    """Validate (model, x[, y]) and return (x, y, K) with x, y cast to the model dtype.

    Targets are checked (and integer labels one-hot encoded) by the likelihood.
    """
    lik = likelihoods.get(likelihood)
    check_model(model)
    x = check_inputs(model, x).astype(model_dtype(model))
    k = num_outputs(model, x)
    if y is not None:
        y = lik.targets(y, x.shape[0], k).astype(model_dtype(model))
    return x, y, k


def outputs(model, x, *, batch_size: int = 4096) -> np.ndarray:
    """f(x) at the current weights in inference mode, (N, K) float64, computed in the model's
    own dtype (``model.predict`` would cast float64 inputs to Keras' floatx)."""
    f = [model(x[s], training=False) for s in _batches(len(x), batch_size)]
    return np.concatenate([np.asarray(b, dtype=np.float64).reshape(len(b), -1) for b in f])


def data_error(model, x, y, *, likelihood="regression") -> float:
    """The summed data term at the current weights (float64): E_D = ½ Σ_n Σ_k (f_k(x_n) − t_nk)²
    for regression, the cross-entropy −Σ t log softmax(f) for classification."""
    lik = likelihoods.get(likelihood)
    x, y, _ = prepare(model, x, y, lik)
    return float(lik.data_error(tf.constant(outputs(model, x)), tf.constant(y, tf.float64)))


def per_sample_jacobian(forward, w, xb) -> tf.Tensor:
    """Traceable: J (B, K, P) of ``forward(w, xb)`` (B, K) with respect to w, one sample at a
    time (``tf.vectorized_map`` over the batch of a (K, P) jacobian).

    Samples are independent in inference mode, so this costs O(B·K·P); a jacobian of the whole
    batch output would back-propagate each of the B·K outputs through all B samples, O(B²·K·P)
    time and memory (14 s against 0.3 s for 1347 samples of a 2,410-weight MLP).
    """

    def one(xn):
        with tf.GradientTape() as tape:
            tape.watch(w)
            f = forward(w, xn[None])[0]
        return tape.jacobian(f, w, experimental_use_pfor=True)

    return tf.vectorized_map(one, xb)


def jacobian_function(model, example):
    """Trace once: ``xb -> (f, J)`` with f (B, K) and J (B, K, P) at the current weights.

    ``example`` fixes the per-sample input shape; the batch dimension is ``None`` so batches of
    any size (including the last, shorter one) reuse the same graph.
    """
    forward = functional_forward(model)
    w = tf.constant(flat_weights(model))

    @tf.function(input_signature=[_spec(model, example)])
    def jac(xb):
        return forward(w, xb), per_sample_jacobian(forward, w, xb)

    return jac


def output_jacobian(model, x, *, batch_size: int | None = None) -> np.ndarray:
    """J with J[n, k, p] = ∂f_k(x_n)/∂w_p at the current weights; shape (N, K, P), float64.

    Vectorised over the batch and outputs (``GradientTape.jacobian`` with pfor), no Python
    loop over samples or weights.
    """
    x, _, k = prepare(model, x)
    jac = jacobian_function(model, x)
    bs = batch_size_for(len(x), k * num_params(model), batch_size)
    return np.concatenate([jac(x[s])[1].numpy().astype(np.float64) for s in _batches(len(x), bs)])


def gauss_newton(model, x, *, likelihood="regression", batch_size: int | None = None) -> np.ndarray:
    """G = Σ_n J_nᵀ Λ_n J_n, shape (P, P), float64; positive semi-definite by construction.

    Λ_n = I for regression (G = Σ J_nᵀ J_n); the softmax Hessian diag(p) − p pᵀ for
    classification, applied through its square root L_n as Σ (L_nᵀ J_n)ᵀ (L_nᵀ J_n).
    """
    lik = likelihoods.get(likelihood)
    x, _, k = prepare(model, x)
    p = num_params(model)
    jac = jacobian_function(model, x)
    g = np.zeros((p, p))
    for s in _batches(len(x), batch_size_for(len(x), k * p, batch_size)):
        f, j = (t.numpy().astype(np.float64) for t in jac(x[s]))
        root = lik.hessian_sqrt(tf.constant(f))
        if root is not None:
            j = np.einsum("bkj,bkp->bjp", root.numpy(), j)  # L_nᵀ J_n
        j = j.reshape(-1, p)
        g += j.T @ j
    return g


def hessian(
    model,
    x,
    y,
    *,
    likelihood="regression",
    batch_size: int | None = None,
    row_chunk: int = 128,
) -> np.ndarray:
    """H = ∇²E_D at the current weights by nested GradientTapes; shape (P, P), float64.

    (With ``likelihood="classification"``, the Hessian of the summed cross-entropy.)

    The inner tape gives the gradient g(w) of E_D; the outer tape's vectorised ``jacobian``
    (pfor) differentiates ``row_chunk`` components of g at once — no Python loop over single
    weights, and chunks keep the vectorised intermediates (rows × batch × width) cache-sized,
    which is faster than all P rows at once. One ``tf.function`` is traced and reused over row
    chunks and batches of ``batch_size`` samples.
    """
    lik = likelihoods.get(likelihood)
    x, y, _ = prepare(model, x, y, lik)
    p = num_params(model)
    if int(row_chunk) < 1:
        raise ValueError(f"row_chunk must be a positive integer, got {row_chunk}")
    forward = functional_forward(model)
    w = tf.constant(flat_weights(model))

    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.int32), _spec(model, x), _spec(model, y)]
    )
    def hess_rows(rows, xb, yb):
        with tf.GradientTape() as outer:
            outer.watch(w)
            with tf.GradientTape() as inner:
                inner.watch(w)
                e = lik.data_error(forward(w, xb), yb)
            g_rows = tf.gather(inner.gradient(e, w), rows)
        return outer.jacobian(g_rows, w, experimental_use_pfor=True)

    bs = batch_size_for(len(x), 64 * int(row_chunk), batch_size)
    h = np.zeros((p, p))
    for s in _batches(len(x), bs):
        for r in _batches(p, int(row_chunk)):
            rows = tf.range(r.start, r.stop, dtype=tf.int32)
            h[r] += hess_rows(rows, x[s], y[s]).numpy().astype(np.float64)
    return 0.5 * (h + h.T)
