"""Per-sample vectorisation: TensorFlow's pfor, made safe for any Keras model.

Every per-sample quantity sigma computes (the Jacobian J_n, the generic layers' per-sample
gradients, the products vectorised over the columns of a block V) runs a function once per
sample (or column) with ``tf.vectorized_map``, whose pfor rewrites each op of the function
for a leading loop axis. Two things go wrong with it on real architectures, and this module is
where they are handled:

* **A broadcasting batch matmul that corrupts memory.** Keras' ``einsum`` (every
  ``EinsumDense``: the projections of ``MultiHeadAttention`` and of every KerasHub
  transformer layer) computes ``abc,cde->abde`` as a batched matmul of the (1, T, D) input of
  one sample with a 2-D kernel; pfor turns it into a (B, 1, T, D) × (D, E) ``BatchMatMulV2``,
  and TensorFlow 2.21's oneDNN kernel for float32 returns wrong values or crashes the process
  (segmentation fault, ``free(): invalid pointer``) for such a broadcast over a unit axis —
  reproduced with a plain ``tf.matmul`` of a (5, 1, 8, 16) and a (16, 16) tensor, no sigma
  involved. While sigma converts a function, :func:`converting` replaces pfor's converter of
  that op by one that multiplies a batch of inputs with a shared 2-D matrix as one 2-D matmul
  (reshape, ``MatMul``, reshape: the same product, and the faster kernel), and broadcasts the
  batch axes explicitly otherwise. The converter is swapped in under a lock and restored on
  exit; another thread converting meanwhile gets the same products.
* **Ops pfor cannot convert** (the ``while`` loops of recurrent layers and their gradients,
  some convolution gradients): :func:`per_sample` falls back to ``tf.map_fn`` (one sample at a
  time, same values) when the conversion fails, and pfor's error reports and "uses a
  while_loop" warnings are kept off the terminal for the duration of sigma's own conversion
  (a filter on TensorFlow's logger, removed afterwards; the user's logging is not touched).

Conversion happens when a graph is traced, so the cost of all this is paid once per model.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import tensorflow as tf
from tensorflow.python.ops.parallel_for import pfor as _pfor

_LOCK = threading.RLock()
_DEPTH = [0]
_SAVED: dict = {}
_OP = "BatchMatMulV2"


def _batch_matmul(pfor_input):
    """pfor converter of ``BatchMatMulV2`` without a broadcast of unit batch axes in the
    kernel (see the module docstring). Values are those of ``tf.matmul``."""
    x, x_stacked, _ = pfor_input.input(0)
    y, y_stacked, _ = pfor_input.input(1)
    adj_x, adj_y = pfor_input.get_attr("adj_x"), pfor_input.get_attr("adj_y")
    if x_stacked and not y_stacked and y.shape.rank == 2:
        # (L, ..., M, K) @ (K, N): every row of every sample times one matrix
        if adj_x:
            x = tf.linalg.matrix_transpose(x, conjugate=True)
        out = tf.matmul(tf.reshape(x, [-1, tf.shape(x)[-1]]), y, adjoint_b=adj_y)
        shape = tf.concat([tf.shape(x)[:-1], tf.shape(out)[-1:]], axis=0)
        return _pfor.wrap(tf.reshape(out, shape), True)
    if y_stacked and not x_stacked and x.shape.rank == 2:
        # x @ y = (yᵀ xᵀ)ᵀ: the same 2-D product on the transposed side
        yt = y if adj_y else tf.linalg.matrix_transpose(y, conjugate=True)  # (L, ..., N, K)
        out = tf.matmul(tf.reshape(yt, [-1, tf.shape(yt)[-1]]), x, transpose_b=not adj_x)
        if adj_x:  # conj(x) was wanted: xᴴ = conj(x)ᵀ
            out = tf.math.conj(out) if out.dtype.is_complex else out
        shape = tf.concat([tf.shape(yt)[:-1], tf.shape(out)[-1:]], axis=0)
        out = tf.linalg.matrix_transpose(tf.reshape(out, shape))
        return _pfor.wrap(out, True)
    pfor_input.expanddim_inputs_for_broadcast()
    x, y = pfor_input.input(0)[0], pfor_input.input(1)[0]
    xs, ys = x.shape, y.shape
    if not (xs.rank is not None and xs.rank == ys.rank and xs[:-2] == ys[:-2]):
        # broadcast the batch axes before the kernel sees them
        batch = tf.broadcast_dynamic_shape(tf.shape(x)[:-2], tf.shape(y)[:-2])
        x = tf.broadcast_to(x, tf.concat([batch, tf.shape(x)[-2:]], axis=0))
        y = tf.broadcast_to(y, tf.concat([batch, tf.shape(y)[-2:]], axis=0))
    return _pfor.wrap(tf.matmul(x, y, adjoint_a=adj_x, adjoint_b=adj_y), True)


class _QuietPfor(logging.Filter):
    """Drops pfor's reports of ops it converts with a while loop or fails to convert: sigma
    falls back (or lives with the loop) on its own, the user cannot act on them."""

    MARKS = ("pfor", "while_loop", "Fix that", "vectorized_map", "converting op")

    def filter(self, record) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to judge
            return True
        return not any(mark in text for mark in self.MARKS)


_FILTER = _QuietPfor()


@contextlib.contextmanager
def converting():
    """While active: pfor uses :func:`_batch_matmul` for ``BatchMatMulV2`` and its reports
    stay off the terminal. Re-entrant; restores pfor's converter and TensorFlow's logger."""
    registry = _pfor._pfor_converter_registry
    logger = tf.get_logger()
    with _LOCK:
        if _DEPTH[0] == 0:
            _SAVED["converter"] = registry.get(_OP)
            registry[_OP] = _batch_matmul
            logger.addFilter(_FILTER)
        _DEPTH[0] += 1
        try:
            yield
        finally:
            _DEPTH[0] -= 1
            if _DEPTH[0] == 0:
                saved = _SAVED.pop("converter")
                if saved is None:
                    registry.pop(_OP, None)
                else:
                    registry[_OP] = saved
                logger.removeFilter(_FILTER)


# Errors pfor raises when it cannot convert an op (or a while loop's gradient) at trace time.
CONVERSION_ERRORS = (ValueError, TypeError, NotImplementedError, tf.errors.OpError)


def per_sample(fn, elems, fn_output_signature, *, memo: dict | None = None):
    """``fn`` on every sample of ``elems`` (a nest of tensors with a leading batch axis):
    ``tf.vectorized_map`` where pfor converts ``fn``, else ``tf.map_fn`` (a loop over the
    samples, the same values). Traceable; the choice is made once, when traced.

    ``fn_output_signature``: ``tf.TensorSpec`` nest of one sample's result (for the loop), or
    a function returning it (called only when the loop is needed).

    ``memo``: a dict kept with the model (its engine's ``vectorizing``). Its ``"pfor"`` entry, False,
    skips pfor; a failed conversion sets it, so a model pfor cannot convert pays for the
    attempt once, not in every graph traced for it (on a recurrent model the failed attempt
    costs 3–4× the loop's tracing)."""
    with converting():
        failed = False
        if memo is None or memo.get("pfor", True):
            try:
                return tf.vectorized_map(fn, elems)
            except CONVERSION_ERRORS:
                failed = True
        if callable(fn_output_signature):
            fn_output_signature = fn_output_signature()
        out = tf.map_fn(fn, elems, fn_output_signature=fn_output_signature)
        if failed and memo is not None:  # remembered once the loop works: pfor's failure
            memo["pfor"] = False
        return out


def jacobian(tape, target, sources, **kwargs):
    """``tape.jacobian(target, sources, experimental_use_pfor=True, ...)`` with the safe
    converters of :func:`converting` (no fallback: callers pass functions pfor converts)."""
    with converting():
        return tape.jacobian(target, sources, experimental_use_pfor=True, **kwargs)
