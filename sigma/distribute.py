"""Sums over the training data: batches of arrays or a ``tf.data.Dataset``, on one device or
on the replicas of a ``tf.distribute.Strategy``.

Every curvature of the package is a sum over samples (MATH.md: E_D, G = Σ_n J_nᵀ Λ_n J_n, the
curvature-vector product G v, ...), so it is accumulated batch by batch. An
:class:`Accumulator` takes a per-batch *body* — a plain Python function of TF tensors,
``body(batch, *args)`` with ``batch = (x_b,)`` or ``(x_b, y_b)`` — traces it once as a
``tf.function`` whose batch dimension is ``None``, and reuses that graph for every batch and
every call (e.g. every Lanczos iteration). Under a strategy each replica runs the body on its
share of the global batch (``strategy.run``) and the partial sums are added across replicas
(``strategy.reduce(SUM)``); the result is the same sum as on one device.

Datasets given to :class:`sigma.Laplace` yield ``(x, y)`` batches; :func:`prepare_dataset`
validates them in one pass (which also gives N, K and the data error) and casts them to the
model's dtype. Structures that cannot consume a dataset receive it as arrays
(:func:`fit_structure`, with ``streaming = False`` on the structure class).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tqdm import tqdm  # plain text bars: tqdm.auto warns in kernels without ipywidgets

from sigma import likelihoods
from sigma._checks import check_inputs, check_model, model_dtype
from sigma.curvature import batch_size_for, per_sample_jacobian  # noqa: F401 (re-exported)
from sigma.params import flat_weights, functional_forward, num_params

# Cap on the elements of one batch's largest intermediate (~256 MB in float64).


def is_dataset(x) -> bool:
    return isinstance(x, tf.data.Dataset)


def current_strategy(strategy=None):
    """The strategy to accumulate under: ``strategy`` if given, else the one whose
    ``scope()`` is active (``tf.distribute.has_strategy()``), else None (one device)."""
    if strategy is not None:
        if not isinstance(strategy, tf.distribute.Strategy):
            raise ValueError(
                f"strategy must be a tf.distribute.Strategy, got {type(strategy).__name__}"
            )
        return strategy
    return tf.distribute.get_strategy() if tf.distribute.has_strategy() else None


def as_dataset(x, y=None, *, batch_size: int) -> tf.data.Dataset:
    """Batched dataset of ``(x_b,)`` or ``(x_b, y_b)`` tuples.

    Arrays are sliced into batches of ``batch_size``; a dataset of ``(x, y)`` batches (as
    returned by :func:`prepare_dataset`) is passed through, its own batching kept.
    """
    if is_dataset(x):
        return x
    arrays = (x,) if y is None else (x, y)
    return tf.data.Dataset.from_tensor_slices(arrays).batch(int(batch_size))


def dataset_size(data) -> int | None:
    """Number of batches of a dataset when TensorFlow knows it, else None."""
    n = int(data.cardinality())
    return n if n >= 0 else None


def first_samples(data, n: int = 2):
    """The inputs of the first (up to n) samples of a batched dataset or an array."""
    if not is_dataset(data):
        return np.asarray(data[:n])
    for batch in data.take(1):
        return batch[0][:n].numpy()
    raise ValueError("the dataset is empty")


class Accumulator:
    """Σ over the batches of ``data`` of ``body(batch, *args)``, traced once, reused per call.

    data : batched ``tf.data.Dataset`` of tuples (see :func:`as_dataset`).
    body : Python function of TF tensors returning a tensor or a tuple of tensors, without
        Python control flow on tensors (it is traced with ``autograph=False``), with outputs of
        static shape (under a strategy a replica left without samples by the last, short
        batch returns zeros of that shape).
    arg_specs : ``tf.TensorSpec`` of the extra arguments (e.g. the vector of a product).
    strategy : a ``tf.distribute.Strategy`` or None (one device).
    progress : show a tqdm bar over the batches; ``desc`` labels it.
    cache : keep the (per-replica) batches after the first call and reuse them, instead of
        iterating the dataset again — for data that are in memory anyway (arrays); iterating a
        distributed dataset costs far more than a small batch's computation.

    ``accumulator(*args)`` returns the sum as float64 NumPy array(s).
    """

    def __init__(
        self, body, data, *, arg_specs=(), strategy=None, progress=False, desc=None, cache=False
    ):
        self.data, self.strategy = data, strategy
        self.progress, self.desc = bool(progress), desc
        self._n_batches = dataset_size(data)
        self._cache, self._cached = bool(cache), None
        if strategy is None:
            self._batches = data
            self._step = tf.function(
                body, input_signature=[data.element_spec, *arg_specs], autograph=False
            )
        else:
            self._batches = strategy.experimental_distribute_dataset(data)

            def guarded(batch, *args):
                # The last, short global batch can leave a replica with no samples, on which
                # pfor Jacobians fail: return zeros of the body's (static) output shapes then.
                traced = {}

                def run():
                    traced["out"] = body(batch, *args)
                    return traced["out"]

                def empty():
                    return tf.nest.map_structure(
                        lambda t: tf.zeros(t.shape, t.dtype), traced["out"]
                    )

                n = tf.shape(tf.nest.flatten(batch)[0])[0]
                return tf.cond(n > 0, run, empty)

            def step(batch, *args):
                per_replica = strategy.run(guarded, args=(batch, *args))
                return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

            self._step = tf.function(
                step, input_signature=[self._batches.element_spec, *arg_specs], autograph=False
            )

    def __call__(self, *args):
        total = None
        batches = self._cached if self._cached is not None else self._batches
        keep = [] if self._cache and self._cached is None else None
        bar = tqdm(
            batches,
            total=self._n_batches if self._cached is None else len(self._cached),
            desc=self.desc,
            disable=not self.progress,
            leave=False,
        )
        for batch in bar:
            if keep is not None:
                keep.append(batch)
            out = tf.nest.map_structure(
                lambda t: np.asarray(t.numpy(), dtype=np.float64), self._step(batch, *args)
            )
            total = out if total is None else tf.nest.map_structure(np.add, total, out)
        if total is None:
            raise ValueError("the data hold no batches: nothing to accumulate")
        if keep is not None:
            self._cached = keep
        return total

    @property
    def tracing_count(self) -> int:
        """How many times the per-batch graph was traced (1 once it has run)."""
        return self._step.experimental_get_tracing_count()


# -- dense curvature, batch by batch --------------------------------------------------------------
def dense_curvature_body(model, likelihood, curvature: str):
    """Per-batch body giving the (P, P) curvature of the batch, float64.

    ``"ggn"``: Σ_b (L_bᵀ J_b)ᵀ (L_bᵀ J_b) with J_b the (K, P) output Jacobian of each sample;
    ``"hessian"``: ∇² E_D of the batch by nested tapes (needs ``batch = (x_b, y_b)``).
    """
    lik = likelihoods.get(likelihood)
    forward = functional_forward(model)
    w = tf.constant(flat_weights(model))
    p = num_params(model)

    def ggn(batch, *_):
        f = forward(w, batch[0])
        j = tf.cast(per_sample_jacobian(forward, w, batch[0]), tf.float64)  # (B, K, P)
        root = lik.hessian_sqrt(tf.cast(f, tf.float64))
        if root is not None:
            j = tf.einsum("bkj,bkp->bjp", root, j)  # L_bᵀ J_b
        j = tf.reshape(j, (-1, p))
        return tf.matmul(j, j, transpose_a=True)

    def hessian(batch, *_):
        xb, yb = batch[0], batch[1]
        with tf.GradientTape() as outer:
            outer.watch(w)
            with tf.GradientTape() as inner:
                inner.watch(w)
                e = lik.data_error(forward(w, xb), yb)
            g = inner.gradient(e, w)
        h = tf.cast(outer.jacobian(g, w, experimental_use_pfor=True), tf.float64)
        return 0.5 * (h + tf.transpose(h))

    if curvature not in ("ggn", "hessian"):
        raise ValueError(f"curvature must be 'ggn' or 'hessian', got {curvature!r}")
    return ggn if curvature == "ggn" else hessian


def dense_curvature(
    model,
    x,
    y=None,
    *,
    likelihood="regression",
    curvature="ggn",
    batch_size=None,
    strategy=None,
    progress=False,
) -> np.ndarray:
    """The full (P, P) curvature (GGN or Hessian) summed over arrays or a dataset of
    ``(x, y)`` batches, on one device or across the replicas of ``strategy``; float64."""
    p = num_params(model)
    k = int(np.prod(model(first_samples(x), training=False).shape[1:]))
    n = len(x) if not is_dataset(x) else 1
    per_sample = k * p if curvature == "ggn" else 64 * p
    data = as_dataset(x, y, batch_size=batch_size_for(n, per_sample, batch_size))
    body = dense_curvature_body(model, likelihood, curvature)
    return Accumulator(body, data, strategy=strategy, progress=progress, desc=f"{curvature} P×P")()


# -- datasets given to Laplace ----------------------------------------------------------------
def prepare_dataset(model, dataset, likelihood, *, batch_size: int | None = None):
    """Validate a ``tf.data.Dataset`` of ``(x, y)`` batches in one pass.

    Returns ``(data, n, k, data_error, data_errors)``: ``data`` yields ``(x_b, y_b)`` cast
    to the model dtype with targets as (B, K) (integer labels one-hot encoded for
    classification); N samples, K outputs, the summed data term E_D and, for regression,
    E_Dk per output (K,). With ``batch_size`` the data are re-batched to that size.
    """
    lik = likelihoods.get(likelihood)
    check_model(model)
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ValueError(
            "x as a tf.data.Dataset must yield (x, y) batches (a tuple of two tensors), got "
            f"elements {spec}"
        )
    if int(dataset.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
        raise ValueError("the dataset is infinite (a .repeat() without count?): it must end")
    if batch_size is not None:
        dataset = dataset.unbatch().batch(batch_size_for(1, 1, batch_size))
    dtype = model_dtype(model)
    n, k, e_d, e_dk = 0, None, 0.0, None
    for i, (xb, yb) in enumerate(dataset):
        xb = check_inputs(model, xb.numpy(), f"x (dataset batch {i})").astype(dtype)
        f = np.asarray(model(xb, training=False), np.float64).reshape(len(xb), -1)
        if k is None:
            k = f.shape[1]
        t = lik.targets(yb.numpy(), len(xb), k, f"y (dataset batch {i})").astype(np.float64)
        e_d += float(lik.data_error(tf.constant(f), tf.constant(t)))
        if lik.has_beta:
            part = 0.5 * np.sum((f - t) ** 2, axis=0)
            e_dk = part if e_dk is None else e_dk + part
        n += len(xb)
    if n == 0:
        raise ValueError("the dataset is empty")

    def cast(xb, yb):
        if yb.shape.rank == 1:
            yb = tf.one_hot(tf.cast(yb, tf.int32), k) if not lik.has_beta else yb[:, None]
        return tf.cast(xb, dtype), tf.cast(tf.reshape(yb, (-1, k)), dtype)

    return dataset.map(cast), n, k, e_d, e_dk


def dataset_arrays(data) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate a dataset of ``(x_b, y_b)`` batches into arrays (x, y)."""
    xs, ys = [], []
    for xb, yb in data:
        xs.append(xb.numpy())
        ys.append(yb.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def fit_structure(
    structure, model, x, y, *, likelihood, curvature, batch_size, strategy=None, progress=False
):
    """``structure.fit`` on arrays or a prepared dataset, under ``strategy`` when given.

    Structures whose class sets ``streaming = True`` take the dataset and the ``strategy``
    and ``progress`` keywords; others get the dataset concatenated into arrays and are
    refused a strategy (ValueError naming the structure).
    """
    if getattr(structure, "streaming", False):
        return structure.fit(
            model,
            x,
            y,
            likelihood=likelihood,
            curvature=curvature,
            batch_size=batch_size,
            strategy=strategy,
            progress=progress,
        )
    if strategy is not None:
        raise ValueError(
            f"structure {structure.name!r} does not accumulate under a tf.distribute.Strategy; "
            "use one of the streaming structures (full, lowrank, last_layer) or no strategy"
        )
    if is_dataset(x):
        x, y = dataset_arrays(x)
    return structure.fit(
        model, x, y, likelihood=likelihood, curvature=curvature, batch_size=batch_size
    )
