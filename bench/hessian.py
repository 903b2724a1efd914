"""Nested-tape Hessian (vectorised, traced once) against the original notebook's approach.

The original built the Hessian one row at a time: one backward pass through the gradient per
weight (``K.gradients(gradients[n], weights)`` for n in range(P)). Here that baseline is the
same loop over a row function traced once; ``sigma.hessian`` differentiates all P gradient
components at once with ``GradientTape.jacobian`` (pfor) inside one ``tf.function``.

    .venv/bin/python bench/hessian.py [--repeats 3] [--sizes 35,500,5000]

Prints a table: P, time of each (median of --repeats runs, all in this process; sigma.hessian
includes its one tracing), speed-ups, and the largest relative difference between the Hessians.
Two baselines: the original's loop run eagerly (one Python-dispatched backward pass per
weight), and the same loop with the row function traced once (the fairest form of it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import sigma  # noqa: E402

# hidden widths giving P ≈ 35, ~500 and ~5,000 on 4 inputs and 3 outputs
HIDDEN = {35: (4,), 500: (20, 16), 5000: (64, 64)}


def rowwise_hessian(model, x, y) -> np.ndarray:
    """The original approach: one backward pass through the gradient per weight.

    Like the original's graph-mode ``K.gradients`` per row, but fairer to it: the row function
    is traced once (the row index is a tensor input) and called P times.
    """
    variables = model.trainable_variables
    x, y = tf.constant(x), tf.constant(y)

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
    def row(n):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                e = 0.5 * tf.reduce_sum(tf.square(model(x, training=False) - y))
            g = tf.concat([tf.reshape(t, [-1]) for t in inner.gradient(e, variables)], 0)
            g_n = g[n]
        return tf.concat([tf.reshape(t, [-1]) for t in outer.gradient(g_n, variables)], 0)

    return np.stack([row(tf.constant(n)).numpy() for n in range(sigma.num_params(model))])


def eager_rowwise_hessian(model, x, y) -> np.ndarray:
    """The original's loop as written: one eager backward pass per weight over a persistent
    tape (no tracing at all; every row pays Python and op-dispatch overhead)."""
    variables = model.trainable_variables
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            e = 0.5 * tf.reduce_sum(tf.square(model(x, training=False) - y))
        g = tf.concat([tf.reshape(t, [-1]) for t in inner.gradient(e, variables)], 0)
        rows = [g[n] for n in range(g.shape[0])]  # the slices must be recorded by the tape
    h = np.stack(
        [np.concatenate([t.numpy().ravel() for t in outer.gradient(r, variables)]) for r in rows]
    )
    del outer
    return h


def median_time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="35,500,5000", help="comma-separated among 35,500,5000")
    parser.add_argument("--n", type=int, default=100, help="training samples (Iris-sized)")
    parser.add_argument("--no-eager", action="store_true", help="skip the eager row-wise baseline")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.n, 4)).astype("float32")
    y = rng.normal(size=(args.n, 3)).astype("float32")
    print(f"N = {args.n}, float32, median of {args.repeats} runs, {os.cpu_count()} cores")
    print(
        f"{'P':>6} {'hidden':>10} {'eager rows (s)':>15} {'traced rows (s)':>16} "
        f"{'sigma.hessian (s)':>18} {'vs eager':>9} {'vs traced':>10} {'max rel diff':>13}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        model = sigma.lab.mlp(4, HIDDEN[size], 3, activation="sigmoid", seed=0)
        t_vec, h_vec = median_time(lambda m=model: sigma.hessian(m, x, y), args.repeats)
        t_row, h_row = median_time(lambda m=model: rowwise_hessian(m, x, y), args.repeats)
        t_eag = float("nan")
        if not args.no_eager:
            t_eag, h_eag = median_time(lambda m=model: eager_rowwise_hessian(m, x, y), args.repeats)
            assert np.allclose(h_eag, h_row, rtol=1e-4, atol=1e-6 * np.abs(h_row).max())
        rel = np.abs(h_vec - h_row).max() / np.abs(h_row).max()
        print(
            f"{sigma.num_params(model):>6} {str(HIDDEN[size]):>10} {t_eag:>15.3f} {t_row:>16.3f} "
            f"{t_vec:>18.3f} {t_eag / t_vec:>8.1f}x {t_row / t_vec:>9.1f}x {rel:>13.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
