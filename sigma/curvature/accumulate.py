"""Sums over the training data: batches of arrays or a ``tf.data.Dataset``, on one device or
on the replicas of a ``tf.distribute.Strategy``.

Every curvature is a sum over samples (E_D, G = Σ_n J_nᵀ Λ_n J_n, the product G V, ...; see
docs/math.md), so it is accumulated batch by batch. An :class:`Accumulator` takes a per-batch
*body* — a Python function of TF tensors, ``body(batch, *args)`` with ``batch = (x_b,)`` or
``(x_b, y_b)`` — and runs its traced graph on every batch. The graph's batch dimension is
``None``, so one trace serves every batch, every call (e.g. every pass of an eigensolver) and,
when the traced step comes from an :class:`~sigma.curvature.engine.Engine`'s cache, every
``Laplace`` built on the same model. Under a strategy each replica runs the body on its share of
the global batch (``strategy.run``) and the partial sums are added across replicas
(``strategy.reduce(SUM)``); the result is the same sum as on one device.

In-memory arrays are sliced directly (:class:`ArrayBatches`, no ``tf.data`` pipeline: at the
scale of a small network the pipeline costs more than the computation); datasets are iterated.
Datasets given to :class:`sigma.Laplace` yield ``(x, y)`` batches and are validated in one pass
by :func:`prepare_dataset`.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from sigma import likelihoods
from sigma._checks import (
    check_batch_size,
    check_finite_outputs,
    check_inputs,
    check_model,
    model_dtype,
    model_inputs,
    n_samples,
)
from sigma.progress import bar as progress_bar
from sigma.summary import moments

# Cap on the elements of one batch's largest intermediate (2²⁵ ≈ 256 MB in float64).
ELEMENT_BUDGET = 2**25


def compiled(fn, input_signature, **kwargs):
    """``tf.function(fn)`` with autograph off, traced once for ``input_signature``.

    ``fn`` is wrapped in a ``functools.partial``: TensorFlow's detector of frequent retracing
    keys its counts on a function's code, so the same graph-building code traced once for each
    of several models (an ensemble, a sweep) would be reported as "retracing"; a partial
    object is its own key. Tracing stays once per model and input signature.
    """
    return tf.function(
        functools.partial(fn), input_signature=input_signature, autograph=False, **kwargs
    )


def is_dataset(x) -> bool:
    return isinstance(x, tf.data.Dataset)


def batch_size_for(
    n: int, per_sample: int, batch_size: int | None, *, budget: int = ELEMENT_BUDGET
) -> int:
    """``batch_size`` if given (validated), else the largest batch (at most n) whose
    intermediates of ``per_sample`` elements per sample stay within ``budget`` elements."""
    if batch_size is not None:
        return check_batch_size(batch_size)
    return int(max(1, min(n, budget // max(int(per_sample), 1))))


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


class ArrayBatches:
    """Consecutive batches of in-memory arrays: tuples ``(x_b,)`` or ``(x_b, y_b)``.

    arrays : a tuple of arrays (or nests of arrays) with the same first dimension N.
    batch_size : samples per batch (the last batch may be shorter).
    """

    def __init__(self, arrays: tuple, batch_size: int):
        self.arrays = tuple(arrays)
        self.batch_size = int(batch_size)
        self.n = int(len(tf.nest.flatten(self.arrays[0])[0]))

    def __iter__(self):
        for start in range(0, self.n, self.batch_size):
            stop = min(self.n, start + self.batch_size)
            yield tf.nest.map_structure(lambda a, s=start, e=stop: a[s:e], self.arrays)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    @property
    def element_spec(self):
        return tf.nest.map_structure(
            lambda a: tf.TensorSpec([None, *a.shape[1:]], tf.as_dtype(a.dtype)), self.arrays
        )

    def as_dataset(self) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(self.arrays).batch(self.batch_size)


def as_batches(x, y=None, *, batch_size: int):
    """``(x_b,)``/``(x_b, y_b)`` batches: :class:`ArrayBatches` for arrays; a dataset of
    ``(x, y)`` batches (as returned by :func:`prepare_dataset`) is passed through."""
    if is_dataset(x):
        return x
    return ArrayBatches((x,) if y is None else (x, y), batch_size)


def as_dataset(x, y=None, *, batch_size: int) -> tf.data.Dataset:
    """Batched dataset of ``(x_b,)`` or ``(x_b, y_b)`` tuples (a dataset passes through)."""
    data = as_batches(x, y, batch_size=batch_size)
    return data if is_dataset(data) else data.as_dataset()


def dataset_size(data) -> int | None:
    """Number of batches when known, else None."""
    if isinstance(data, ArrayBatches):
        return len(data)
    n = int(data.cardinality())
    return n if n >= 0 else None


def first_samples(data, n: int = 2):
    """The inputs of the first (up to n) samples of a batched dataset or an array."""
    if not is_dataset(data):
        return tf.nest.map_structure(lambda a: np.asarray(a[:n]), data)
    for batch in data.take(1):
        return tf.nest.map_structure(lambda t: t[:n].numpy(), batch[0])
    raise ValueError("the dataset is empty")


class Accumulator:
    """Σ over the batches of ``data`` of ``body(batch, *args)``, traced once, reused per call.

    data : :class:`ArrayBatches` or a batched ``tf.data.Dataset`` of tuples.
    body : Python function of TF tensors returning a tensor or a nest of tensors, without
        Python control flow on tensors (traced with ``autograph=False``) (under a strategy a
        replica left without samples by the last, short batch returns zeros of the shape the
        body gives for one sample).
    arg_specs : ``tf.TensorSpec`` of the extra arguments (e.g. the vectors of a product).
    strategy : a ``tf.distribute.Strategy`` or None (one device).
    progress : a tqdm bar over the batches: None (once the work takes a few seconds, or as
        the enclosing :func:`sigma.progress.mode` says), True, False; ``desc`` labels it.
    cache : keep the (per-replica) batches of a dataset after the first call and reuse them,
        for data that are in memory anyway.
    store, key : a dict in which the traced step is kept under ``(key, input signature,
        strategy)`` — an :class:`~sigma.curvature.engine.Engine`'s cache, so that another
        accumulator with the same body reuses the trace. Without it the step is traced here.

    ``accumulator(*args)`` returns the sum as float64 NumPy array(s).
    """

    def __init__(
        self,
        body,
        data,
        *,
        arg_specs=(),
        strategy=None,
        progress=None,
        desc=None,
        cache=False,
        store=None,
        key=None,
    ):
        self.strategy = strategy
        self.progress, self.desc = progress, desc
        if strategy is not None and isinstance(data, ArrayBatches):
            data = data.as_dataset()
        self.data = data
        self._n_batches = dataset_size(data)
        self._cache = bool(cache) and is_dataset(data)
        self._cached = None
        self._batches = data if strategy is None else strategy.experimental_distribute_dataset(data)
        signature = [self._batches.element_spec, *arg_specs]
        full_key = (key, _spec_key(signature), id(strategy))
        if store is not None and key is not None and full_key in store:
            self._step = store[full_key]
            return
        fn = body if strategy is None else _distributed(body, strategy)
        self._step = compiled(fn, signature)
        if store is not None and key is not None:
            store[full_key] = self._step

    def __call__(self, *args):
        total = None
        batches = self._cached if self._cached is not None else self._batches
        keep = [] if self._cache and self._cached is None else None
        bar = progress_bar(
            batches,
            total=self._n_batches if self._cached is None else len(self._cached),
            desc=self.desc,
            progress=self.progress,
        )
        for batch in bar:
            if keep is not None:
                keep.append(batch)
            out = self._step(batch, *args)
            if total is None:
                total = tf.nest.map_structure(_to_numpy, out)
            else:  # in place, in float64: no new total per batch (a 9,217² one is 680 MB)
                tf.nest.map_structure(_add_into, total, out)
        if total is None:
            raise ValueError("the data hold no batches: nothing to accumulate")
        if keep is not None:
            self._cached = keep
        return total

    @property
    def tracing_count(self) -> int:
        """How many times the per-batch graph was traced (1 once it has run)."""
        return self._step.experimental_get_tracing_count()


def _to_numpy(t) -> np.ndarray:
    """A float64 NumPy copy of ``t`` (never a view of TensorFlow's buffer: it is added into)."""
    return np.array(t.numpy(), dtype=np.float64)


def _add_into(total: np.ndarray, t) -> None:
    """total += t in float64, in place; t converted chunk-wise inside the ufunc (the same values
    as converting it first, without a float64 copy of it)."""
    np.add(total, t.numpy(), out=total)


def _spec_key(signature) -> tuple:
    return repr(tf.nest.map_structure(lambda _: None, signature)), tuple(
        (tuple(s.shape.as_list()), s.dtype.name) if isinstance(s, tf.TensorSpec) else repr(s)
        for s in tf.nest.flatten(signature, expand_composites=False)
    )


def _distributed(body, strategy):
    """``body`` run on every replica, the per-replica sums reduced."""

    def guarded(batch, *args):
        # The last, short global batch can leave a replica with no samples, on which pfor
        # Jacobians fail: that replica returns zeros shaped like the body's output on one
        # sample of zeros (shapes may depend on the arguments, e.g. the vectors of a product).
        def run():
            return body(batch, *args)

        def empty():
            one = tf.nest.map_structure(
                lambda t: tf.zeros(tf.concat([[1], tf.shape(t)[1:]], 0), t.dtype), batch
            )
            return tf.nest.map_structure(tf.zeros_like, body(one, *args))

        n = tf.shape(tf.nest.flatten(batch)[0])[0]
        return tf.cond(n > 0, run, empty)

    def step(batch, *args):
        per_replica = strategy.run(guarded, args=(batch, *args))
        # One reduce per output: Strategy.reduce takes a single value, not a nest (with
        # MultiWorkerMirroredStrategy a tuple is packed into one tensor, which fails for
        # outputs of different shapes).
        return tf.nest.map_structure(
            lambda v: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None), per_replica
        )

    return step


# -- datasets given to Laplace ----------------------------------------------------------------
def check_dataset(dataset, model=None) -> None:
    """A dataset of (x, y) batches that ends; a ValueError says what is wrong otherwise (with
    ``model``: elements that are single samples, a dataset not yet batched)."""
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ValueError(
            "x as a tf.data.Dataset must yield (x, y) batches (a tuple of two tensors), got "
            f"elements {spec}"
        )
    declared = None if model is None else model_inputs(model)
    parts = tf.nest.flatten(spec[0])
    if declared and len(parts) == len(declared):
        if all(
            p.shape.rank is not None and p.shape.rank == len(shape) - 1
            for p, (_, shape) in zip(parts, declared, strict=True)
        ):
            raise ValueError(
                f"x is a tf.data.Dataset of single samples (elements of shape "
                f"{tuple(parts[0].shape)}), but the model takes batches of shape "
                f"{tuple(declared[0][1])}: batch it first, e.g. dataset.batch(32)"
            )
    if int(dataset.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
        raise ValueError("the dataset is infinite (a .repeat() without count?): it must end")


def prepare_dataset(model, dataset, likelihood, *, batch_size: int | None = None, layout=None):
    """Validate a ``tf.data.Dataset`` of ``(x, y)`` batches in one pass.

    Returns ``(data, n, k, data_error, data_errors, square, group_errors, target_sums)``:
    ``data`` yields ``(x_b, y_b)`` cast to the model dtype with targets as (B, K) (integer
    labels one-hot encoded for classification); N samples, K outputs, the summed data term E_D, for
    regression E_Dk per output (K,), Σ f² over the outputs, and the data term of each
    precision group (G,), and the sums of the targets (:func:`sigma.summary.moments`). With
    ``batch_size`` the data are re-batched.
    """
    lik = likelihoods.get(likelihood)
    check_model(model)
    check_dataset(dataset, model)
    if batch_size is not None:
        dataset = dataset.unbatch().batch(check_batch_size(batch_size))
    dtype = model_dtype(model)
    n, k, e_d, e_dk, square, e_g, sums = 0, None, 0.0, None, 0.0, None, 0.0
    for i, (xb, yb) in enumerate(dataset):
        xb = tf.nest.map_structure(lambda t: t.numpy(), xb)
        xb = check_inputs(model, xb, f"x (dataset batch {i})")
        f = np.asarray(_flat(model(xb, training=False)), np.float64)
        check_finite_outputs(model, xb, f, f"x (dataset batch {i})")
        if k is None:
            k = f.shape[1]
        yb = tf.nest.map_structure(lambda t: t.numpy(), yb)
        t = lik.targets(yb, n_samples(xb), k, f"y (dataset batch {i})", layout=layout)
        t = t.astype(np.float64)
        sums = sums + moments(lik.distinct_targets(t))
        e_d += float(lik.data_error(tf.constant(f), tf.constant(t)))
        part = lik.group_errors(tf.constant(f), tf.constant(t), lik.groups(k)).numpy()
        e_g = part if e_g is None else e_g + part
        part = 0.5 * np.sum((f - t) ** 2, axis=0)  # per output; kept where β scales them
        e_dk = part if e_dk is None else e_dk + part
        square += float(np.sum(f**2))
        n += n_samples(xb)
    if n == 0:
        raise ValueError("the dataset is empty")

    def encode(yb):  # the likelihood's own targets: (B, K) in the model's dtype
        parts = tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, yb)
        return lik.targets(parts, n_samples(parts), k, "y", layout=layout).astype(dtype)

    def cast(xb, yb):
        xb = tf.nest.map_structure(lambda t: tf.cast(t, dtype), xb)
        flat = tf.nest.flatten(yb)

        def numpy_targets(*arrays):
            return encode(tf.nest.pack_sequence_as(yb, list(arrays)))

        t = tf.numpy_function(numpy_targets, flat, tf.as_dtype(dtype), stateful=False)
        t.set_shape([None, k])
        return xb, t

    return dataset.map(cast), n, k, e_d, e_dk, square, e_g, sums


def _flat(out) -> np.ndarray:
    """A model's output (a tensor or a list/dict of them) as (B, K), in ``tf.nest`` order."""
    parts = [np.reshape(np.asarray(o), (np.shape(o)[0], -1)) for o in tf.nest.flatten(out)]
    return np.concatenate(parts, axis=1)
