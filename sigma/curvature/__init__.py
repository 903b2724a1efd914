"""Curvature of the summed data error by automatic differentiation (docs/math.md).

The public functions take a built Keras model and arrays, differentiate with respect to the
flat weight vector w (order: ``model.trainable_variables`` flattened row-major, concatenated;
length P) and return float64 NumPy arrays. They run on the model's :class:`Engine`
(:mod:`sigma.curvature.engine`), whose graphs are traced once per model and reused by every
call, structure and ``Laplace``:

    E_D(w) = ½ Σ_n Σ_k (f_k(x_n; w) − t_nk)²          (summed, not averaged)
    H      = ∇² E_D(w)                                  (exact Hessian, nested tapes)
    G      = Σ_n J_nᵀ J_n,   J_n = ∂f(x_n)/∂w  (K×P)    (Gauss–Newton)

With ``likelihood="classification"`` the data term is the cross-entropy on logits and the
Gauss–Newton matrix is the generalised one, Σ_n J_nᵀ Λ_n J_n (see :mod:`sigma.likelihoods`).
"""

from __future__ import annotations

import numpy as np

from sigma import likelihoods
from sigma._checks import check_inputs, check_model, check_positive_int, model_dtype, n_samples
from sigma.curvature.accumulate import ArrayBatches, as_batches, batch_size_for, is_dataset
from sigma.curvature.engine import ROW_CHUNK, Engine, engine

__all__ = [
    "Engine",
    "curvature_product",
    "data_error",
    "engine",
    "gauss_newton",
    "hessian",
    "num_outputs",
    "output_jacobian",
    "outputs",
    "prepare",
]


def prepare(model, x, y=None, likelihood="regression"):
    """Validate (model, x[, y]) and return (x, y, K) with x, y cast to the model dtype.

    Targets are checked (and integer labels one-hot encoded) by the likelihood.
    """
    check_model(model)
    x = check_inputs(model, x)
    eng = engine(model)
    k = eng.n_outputs(x)
    if y is not None:
        layout = eng.output_layout(x)
        lik = likelihoods.get(likelihood, layout)
        y = lik.targets(y, n_samples(x), k, layout=layout)
        with np.errstate(over="ignore"):
            cast = y.astype(model_dtype(model))
        if not np.all(np.isfinite(cast)):
            raise ValueError(
                f"y has values beyond the range of the model's dtype {model_dtype(model)} "
                f"(largest |value| {np.abs(y).max():.3g}): they overflow to inf; rescale the targets"
            )
        y = cast
    return x, y, k


def num_outputs(model, x) -> int:
    """K, the number of outputs per sample (the model's outputs flattened per sample)."""
    return prepare(model, x)[2]


def outputs(model, x, *, batch_size: int = 4096) -> np.ndarray:
    """f(x) at the current weights in inference mode, (N, K) float64, computed in the model's
    own dtype (``model.predict`` would cast float64 inputs to Keras' floatx)."""
    x, _, _ = prepare(model, x)
    return engine(model).outputs(x, batch_size=batch_size)


def data_error(model, x, y, *, likelihood="regression") -> float:
    """The summed data term at the current weights (float64): E_D = ½ Σ_n Σ_k (f_k(x_n) − t_nk)²
    for regression, the cross-entropy −Σ t log softmax(f) for classification."""
    x, y, _ = prepare(model, x, y, likelihood)
    lik = likelihoods.get(likelihood, engine(model).output_layout(x))
    return engine(model).summary(ArrayBatches((x, y), 4096), lik)[1]


def output_jacobian(model, x, *, batch_size: int | None = None) -> np.ndarray:
    """J with J[n, k, p] = ∂f_k(x_n)/∂w_p at the current weights; shape (N, K, P), float64.

    Vectorised over the batch and outputs (``GradientTape.jacobian`` with pfor), no Python
    loop over samples or weights.
    """
    x, _, _ = prepare(model, x)
    return np.concatenate(
        [j.astype(np.float64) for _, j in engine(model).jacobians(x, batch_size=batch_size)]
    )


def gauss_newton(model, x, *, likelihood="regression", batch_size: int | None = None) -> np.ndarray:
    """G = Σ_n J_nᵀ Λ_n J_n, shape (P, P), float64; positive semi-definite by construction.

    Λ_n = I for regression (G = Σ J_nᵀ J_n); the softmax Hessian diag(p) − p pᵀ for
    classification, applied through its square root L_n as Σ (L_nᵀ J_n)ᵀ (L_nᵀ J_n).
    """
    x, _, k = prepare(model, x)
    eng = engine(model)
    data = ArrayBatches((x,), batch_size_for(n_samples(x), 2 * k * eng.n_params, batch_size))
    return eng.dense(data, likelihoods.get(likelihood, eng.output_layout(x)), "ggn")


def hessian(
    model,
    x,
    y,
    *,
    likelihood="regression",
    batch_size: int | None = None,
    row_chunk: int = ROW_CHUNK,
) -> np.ndarray:
    """H = ∇²E_D at the current weights by nested GradientTapes; shape (P, P), float64.

    (With ``likelihood="classification"``, the Hessian of the summed cross-entropy.)

    The inner tape gives the gradient g(w) of E_D; the outer tape's vectorised ``jacobian``
    (pfor) differentiates ``row_chunk`` projections of g at once — H times a block of unit
    vectors, no Python loop over single weights. One graph, traced once per model, serves
    every chunk and batch of ``batch_size`` samples.
    """
    x, y, _ = prepare(model, x, y, likelihood)
    row_chunk = check_positive_int(row_chunk, "row_chunk")
    eng = engine(model)
    lik = likelihoods.get(likelihood, eng.output_layout(x))
    data = ArrayBatches((x, y), batch_size_for(n_samples(x), 64 * row_chunk, batch_size))
    return eng.dense(data, lik, "hessian", row_chunk=row_chunk)


def curvature_product(
    model,
    x,
    y=None,
    *,
    likelihood="regression",
    curvature="ggn",
    batch_size=None,
    strategy=None,
    route="auto",
):
    """The matrix-free product V ↦ C V over all the data, as a reusable function.

    x : array (N, ...) or a dataset of ``(x, y)`` batches; y : (N, K) targets (arrays; needed
    for ``curvature="hessian"``). The returned ``product(V)`` takes a vector (P,) or a block
    (P, m) and returns C V of the same shape, float64; its per-batch graph is traced once per
    model (``product.accumulator`` is the :class:`~sigma.curvature.accumulate.Accumulator`).
    ``route``: see :meth:`Engine.products`.
    """
    if curvature not in ("ggn", "hessian"):
        raise ValueError(f"curvature must be one of ('ggn', 'hessian'), got {curvature!r}")
    if curvature == "hessian" and y is None and not is_dataset(x):
        raise ValueError("curvature='hessian' needs the targets y")
    if is_dataset(x):
        data, lik = x, likelihoods.get(likelihood)
    else:
        x, y, k = prepare(model, x, y, likelihood)
        lik = likelihoods.get(likelihood, engine(model).output_layout(x))
        bs = batch_size_for(n_samples(x), 2 * k * engine(model).n_params, batch_size)
        data = as_batches(x, y if curvature == "hessian" else None, batch_size=bs)
    return engine(model).products(data, lik, curvature, route=route, strategy=strategy)
